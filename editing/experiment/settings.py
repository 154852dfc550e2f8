"""The settings of a ``reproduce`` run (:class:`ReproduceConfig`) and which of its stages a
folder has finished (:class:`RunState`, ``stages.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

STATE = "stages.json"


@dataclass(frozen=True)
class ReproduceConfig:
    """How much of the experiment to run (see :meth:`preset`).

    Attributes:
        model: ``"toy"``, ``"tiny"`` or a diffusers folder.
        quick: the short version (tests, a first look).
        num_steps: denoising steps of every generation (``None``: the model's default).
        colour_seeds, animal_seeds: noise seeds per prompt of each probe set (empty: skip it).
        step_stride: record every n-th denoising step for the probes.
        random_control: also record the colour set on a randomly initialised model.
        folds: cross-validation folds of the probes.
        probe_max_iter: iterations of each probe's optimiser.
        sources, targets_per_source: colour edit pairs of the sweep.
        sweep_seeds: seeds of the sweep's edits.
        self_ranges: layer ranges for self-attention replacement (plus the probe selection).
        cross_ranges: layer ranges for cross-attention replacement.
        animal_pairs: animal edit pairs (0: no animal sweep); colour edits cannot show the
            paper's trade-off on a model that always draws the asked colour.
        animal_ranges: self-attention ranges of the animal sweep (plus cross ``all``).
        within: candidate layers of the selection (any layer spec; ``"all"``: no restriction).
        clip, dino: local CLIP (and DINO) folders: the sweep scores its edits with CLIP
            (:func:`editing.scoring.clip_scorer.clip_scorer`) instead of the toy judges, for
            a real checkpoint.
        dtype: the weights' dtype (``"float16"``, ``"bfloat16"``; ``None``: float32); part of
            the run's settings, as it moves every number a little.

    A range preset the model's family gives no meaning (``paper`` on SDXL) is left out of the
    sweeps and named in the report (``skipped_ranges.json``).
    """

    model: str = "toy"
    quick: bool = False
    num_steps: int | None = None
    colour_seeds: tuple[int, ...] = tuple(range(8))
    animal_seeds: tuple[int, ...] = tuple(range(6))
    step_stride: int = 4
    random_control: bool = True
    folds: int = 3
    probe_max_iter: int = 300
    sources: int = 4
    targets_per_source: int = 3
    sweep_seeds: tuple[int, ...] = (0, 1)
    self_ranges: tuple[str, ...] = ("presets", "windows")
    cross_ranges: tuple[str, ...] = ("fpe", "all")
    animal_pairs: int = 12
    animal_ranges: tuple[str, ...] = ("none", "fpe", "paper", "all")
    within: str = "fpe"  # the official code's layers (probe.families.unet.positions_rule)
    clip: str | None = None
    dino: str | None = None
    dtype: str | None = None  # the weights' dtype (None: float32), as load_pipeline takes it
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dino is not None and self.clip is None:
            raise ValueError("--dino needs --clip too: CLIP decides the edit's success")

    @classmethod
    def preset(cls, model: str = "toy", quick: bool = False) -> ReproduceConfig:
        """The full run (about 5.5 minutes on toy, 2 CPU cores, two workers) or ``quick`` (1-2
        minutes)."""
        full = cls(model=model)
        if not quick:
            return full
        return replace(
            full, quick=True, num_steps=4, colour_seeds=(0, 1), animal_seeds=(),
            step_stride=2, random_control=False, folds=2, probe_max_iter=100, sources=2,
            targets_per_source=1,
            sweep_seeds=(0,), self_ranges=("none", "fpe", "all"), cross_ranges=("all",),
            animal_pairs=0,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


@dataclass
class RunState:
    """Which stages of a folder are finished, and how long each took."""

    path: Path
    done: dict[str, float] = field(default_factory=dict)

    @classmethod
    def load(cls, out: Path) -> RunState:
        path = out / STATE
        done = json.loads(path.read_text()) if path.is_file() else {}
        return cls(path, {k: float(v) for k, v in done.items()})

    def finish(self, stage: str, seconds: float) -> None:
        self.done[stage] = round(seconds, 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.done, indent=2))
        tmp.replace(self.path)
