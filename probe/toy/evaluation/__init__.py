"""Judging a trained toy on held-out seeds (:mod:`probe.toy.evaluation.evaluate`) and writing its
model card (:mod:`probe.toy.evaluation.model_card`)."""
