"""Vital blocks: bypass a block (:mod:`probe.vital.bypass`) and measure how much the generation
changes (:mod:`probe.vital.vitality`), as Stable Flow finds the blocks it edits in."""
