"""Probe classifiers with controls, over every (layer, step, kind) cell of a :class:`FeatureSet`.

- **linear** (default): scikit-learn ``Pipeline(StandardScaler, LogisticRegression)``.
- **mlp**: the authors' two-layer MLP (hidden ``max(in/8, 2048)`` units, tanh), as scikit-learn's
  ``MLPClassifier`` (L2 ``alpha`` stands in for their dropout of 0.1).

Accuracy is the mean (and standard deviation) over stratified k-fold splits with a fixed seed.
Controls:

- **shuffled labels**: the same probe, same folds, with the labels permuted once (fixed seed);
  ``selectivity = acc_mean − shuffled_acc`` (Hewitt & Liang's control task, in its simplest form).
- **random model**: the same probe on a dataset recorded from a randomly initialised model of the
  same architecture (:mod:`probe.probing.random_control`): what token identity alone gives.

Example:
    >>> results = run_probes(build_features(AttentionDataset("runs/colour_car"), "colour"))
    >>> results.best("cross")
    ProbeRow(layer=13, step=4, ...)
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from probe.probing.features import FeatureSet, Key

PROBES = ("linear", "mlp")


@dataclass(frozen=True)
class ProbeConfig:
    """Which probe, and how it is cross-validated.

    Attributes:
        probe: ``"linear"`` (default) or ``"mlp"``.
        folds: stratified k-fold splits (fewer if a class has fewer samples).
        seed: seed of the folds, the label permutation and the MLP's weights.
        C: inverse L2 strength of the logistic regression.
        max_iter: optimiser iterations.
        hidden: MLP hidden units (default ``max(in/8, 2048)``, as the authors').
        group_by_seed: keep all samples of one seed in the same fold (default). Samples that share
            a seed share their initial noise, so their maps are near-copies; split across train
            and test, a probe matches test samples to their seed's other prompts and scores
            *below* chance. Held-out seeds measure what generalises to new noise.
    """

    probe: str = "linear"
    folds: int = 5
    seed: int = 0
    C: float = 1.0
    max_iter: int = 500
    hidden: int | None = None
    group_by_seed: bool = True

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise ValueError(f"probe {self.probe!r} is not one of {', '.join(PROBES)}")
        if self.folds < 2:
            raise ValueError(f"folds={self.folds}: cross-validation needs at least 2 folds")


def make_probe(config: ProbeConfig, n_features: int) -> Pipeline:
    """A fresh, unfitted probe for inputs of ``n_features``."""
    if config.probe == "linear":
        clf: Any = LogisticRegression(C=config.C, max_iter=config.max_iter)
    else:
        hidden = config.hidden or max(n_features // 8, 2048)
        clf = MLPClassifier(
            (hidden,),
            activation="tanh",
            alpha=1e-3,
            max_iter=config.max_iter,
            early_stopping=False,
            random_state=config.seed,
        )
    return Pipeline([("scale", StandardScaler()), ("probe", clf)])


def _n_splits(y: np.ndarray, folds: int) -> int:
    counts = np.bincount(y)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise ValueError(
            f"class {int(np.argmin(np.where(counts > 0, counts, 10**9)))} has {smallest} sample: "
            "cross-validation needs at least 2 per class; record more --seeds"
        )
    return min(folds, smallest)


def cross_validate(
    X: np.ndarray, y: np.ndarray, config: ProbeConfig, groups: np.ndarray | None = None
) -> np.ndarray:
    """Held-out accuracy of the probe on each stratified fold: ``[folds]``.

    With ``groups`` (the samples' seeds), every group is wholly in train or in test.
    """
    n = _n_splits(y, config.folds)
    splitter: Any = StratifiedKFold(n, shuffle=True, random_state=config.seed)
    if groups is not None:
        n = min(n, len(np.unique(groups)))
        splitter = StratifiedGroupKFold(n, shuffle=True, random_state=config.seed)
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in splitter.split(X, y, groups):
            probe = make_probe(config, X.shape[1]).fit(X[train], y[train])
            scores.append(float(probe.score(X[test], y[test])))
    return np.array(scores)


def shuffled(y: np.ndarray, seed: int) -> np.ndarray:
    """The labels permuted with a fixed seed (the shuffled-label control)."""
    return np.random.default_rng(seed).permutation(y)


@dataclass
class ProbeRow:
    """One (layer, step, kind) cell's probe result (``nan`` where a control was not run)."""

    layer: int
    step: int
    timestep: float
    kind: str
    probe: str
    acc_mean: float
    acc_std: float
    shuffled_acc: float
    random_model_acc: float
    selectivity: float
    chance: float
    n_samples: int
    n_features: int


@dataclass
class ProbeResults:
    """A table of :class:`ProbeRow`, one per cell, with CSV round-trip and grid views.

    Attributes:
        rows: the results.
        label: the label probed.
    """

    rows: list[ProbeRow] = field(default_factory=list)
    label: str = ""

    def __repr__(self) -> str:
        kinds = sorted({r.kind for r in self.rows})
        return f"ProbeResults(label={self.label!r}, {len(self.rows)} rows, kinds={kinds})"

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self, path: str | Path) -> Path:
        """Write the table (plus a ``label`` column)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = ["label", *(f.name for f in fields(ProbeRow))]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({"label": self.label, **asdict(row)})
        return path

    @classmethod
    def from_csv(cls, path: str | Path) -> ProbeResults:
        """Read a table written by :meth:`to_csv`."""
        types = {f.name: f.type for f in fields(ProbeRow)}
        cast = {"int": int, "float": float, "str": str}
        rows, label = [], ""
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                label = raw.pop("label", label)
                rows.append(ProbeRow(**{k: cast[str(types[k])](v) for k, v in raw.items()}))
        return cls(rows, label)

    def select(self, kind: str | None = None, probe: str | None = None) -> list[ProbeRow]:
        return [r for r in self.rows if (kind is None or r.kind == kind)
                and (probe is None or r.probe == probe)]  # fmt: skip

    def grid(self, kind: str, column: str = "acc_mean") -> tuple[list[int], list[int], np.ndarray]:
        """``(layers, steps, values [layers, steps])`` of one kind (``nan`` where missing)."""
        rows = self.select(kind)
        layers = sorted({r.layer for r in rows})
        steps = sorted({r.step for r in rows})
        values = np.full((len(layers), len(steps)), np.nan)
        for r in rows:
            values[layers.index(r.layer), steps.index(r.step)] = getattr(r, column)
        return layers, steps, values

    def best(self, kind: str, column: str = "acc_mean") -> ProbeRow:
        """The row of ``kind`` with the highest ``column``."""
        rows = self.select(kind)
        if not rows:
            raise KeyError(f"no {kind!r} rows; kinds here: {sorted({r.kind for r in self.rows})}")
        return max(rows, key=lambda r: getattr(r, column))


def probe_cell(
    X: np.ndarray,
    y: np.ndarray,
    config: ProbeConfig,
    groups: np.ndarray | None = None,
    control: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
) -> tuple[float, float, float, float]:
    """``(acc_mean, acc_std, shuffled_acc, random_model_acc)`` of one cell.

    ``control`` is the random-model dataset's ``(X, y, groups)`` of the same cell.
    """
    acc = cross_validate(X, y, config, groups)
    shuf = cross_validate(X, shuffled(y, config.seed), config, groups)
    rand = math.nan
    if control is not None:
        rand = float(cross_validate(*control[:2], config, control[2]).mean())
    return float(acc.mean()), float(acc.std()), float(shuf.mean()), rand


def run_probes(
    features: FeatureSet,
    config: ProbeConfig | None = None,
    control: FeatureSet | None = None,
    jobs: int = 1,
    progress: bool = True,
) -> ProbeResults:
    """Probe every cell of ``features`` (and of ``control``, the random-model dataset).

    Args:
        features: from :func:`probe.probing.features.build_features`.
        config: :class:`ProbeConfig` (default: linear, 5 folds, seed 0).
        control: features of the same label from a random-model dataset; cells it lacks get
            ``nan`` as ``random_model_acc``.
        jobs: parallel worker processes (joblib); 1 runs in this process.
        progress: show a tqdm bar over cells.

    Returns:
        :class:`ProbeResults`, one row per cell, sorted by (kind, layer, step).

    Example:
        >>> run_probes(feats, ProbeConfig(probe="mlp"), control=random_feats)
    """
    config = config or ProbeConfig()
    keys = features.keys()
    if control is not None and control.classes != features.classes:
        raise ValueError(
            f"the control dataset's classes {control.classes} differ from {features.classes}: "
            "record it from the same template and seeds with --random-init"
        )

    def groups(feats: FeatureSet) -> np.ndarray | None:
        return feats.groups if config.group_by_seed else None

    def task(key: Key) -> tuple[float, float, float, float]:
        other = None
        if control is not None and key in control.X:
            other = (control.X[key], control.y, groups(control))
        return probe_cell(features.X[key], features.y, config, groups(features), other)

    bar = tqdm(keys, disable=not progress, desc=f"probe {features.label}", unit="cell")
    if jobs == 1:
        values = [task(k) for k in bar]
    else:
        from joblib import Parallel, delayed

        values = Parallel(n_jobs=jobs)(delayed(task)(k) for k in bar)
    chance = 1.0 / len(features.classes)
    rows = []
    for (layer, step, kind), (acc, std, shuf, rand) in zip(keys, values, strict=True):
        timestep = features.timesteps.get(step, math.nan)
        dim = features.X[layer, step, kind].shape[1]
        rows.append(
            ProbeRow(
                layer,
                step,
                timestep,
                kind,
                config.probe,
                acc,
                std,
                shuf,
                rand,
                acc - shuf,
                chance,
                len(features.y),
                dim,
            )
        )
    rows.sort(key=lambda r: (r.kind, r.layer, r.step))
    return ProbeResults(rows, features.label)
