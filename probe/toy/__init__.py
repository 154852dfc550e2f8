"""The toy: a Stable Diffusion trained here on a world we draw, so every label is known.

- :mod:`probe.toy.world`: the toy world (versions, palettes, shapes, rendered scenes);
- :mod:`probe.toy.judges`: read an image back into labels (mask, colour, category);
- :mod:`probe.toy.training`: train the toy from scratch;
- :mod:`probe.toy.evaluation`: judge a trained toy, write its model card;
- :mod:`probe.toy.weight_folders`: where the shipped pipelines (``models/toy_v1``,
  ``models/toy_v2``) and category judges (``judges/weights_v1``, ``judges/weights_v2``) live.
"""
