"""Judges of toy-world images: the object's mask (:mod:`probe.toy.judges.masks`), its colour and
category (:mod:`probe.toy.judges.judge`, :mod:`probe.toy.judges.category`). The shipped category
judges' weights are in ``weights_v1/`` and ``weights_v2/`` next to these modules."""
