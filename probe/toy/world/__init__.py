"""The toy world: its versions, palettes and backgrounds, the shapes of its categories, and the
rendered scenes (:mod:`probe.toy.world.world`, :mod:`probe.toy.world.shapes`,
:mod:`probe.toy.world.renders`)."""
