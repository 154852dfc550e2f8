"""Probe classifiers with controls, over every (layer, step, kind) cell of a :class:`FeatureSet`.

- **linear** (default): ``StandardScaler`` + ``LogisticRegression``, fitted in the span of the
  training rows when there are fewer samples than features
  (:class:`probe.probing.fast_linear.SpanLogisticRegression`): the same model and optimiser in
  ``n`` instead of ``d`` dimensions.
- **linear-full**: the same probe as a scikit-learn ``Pipeline(StandardScaler,
  LogisticRegression)`` fitted in all ``d`` dimensions (the reference the fast one is tested on).
- **mlp**: the authors' two-layer MLP (hidden ``max(in/8, 2048)`` units, tanh), as scikit-learn's
  ``MLPClassifier`` (L2 ``alpha`` stands in for their dropout of 0.1).

Accuracy is the mean (and standard deviation) over stratified k-fold splits with a fixed seed.
Controls:

- **shuffled labels**: the same probe and fold rule (stratified on the permuted labels), with the
  labels permuted once (fixed seed);
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

from probe.attention.layers import LayerInfo, load_layer_table, save_layer_table
from probe.probing.fast_linear import SpanLogisticRegression
from probe.probing.features import FeatureSet, Key

PROBES = ("linear", "linear-full", "mlp")
Split = tuple[np.ndarray, np.ndarray]  # (train indices, test indices)


@dataclass(frozen=True)
class ProbeConfig:
    """Which probe, and how it is cross-validated.

    Attributes:
        probe: ``"linear"`` (default), ``"linear-full"`` (the same fitted in all dimensions) or
            ``"mlp"``.
        folds: stratified k-fold splits (fewer if a class has fewer samples).
        seed: seed of the folds, the label permutation and the MLP's weights.
        C: inverse L2 strength of the logistic regression.
        max_iter: optimiser iterations.
        hidden: MLP hidden units (default ``max(in/8, 2048)``, as the authors').
        group_by_seed: keep all samples of one seed in the same fold (default). Samples that share
            a seed share their initial noise, so their maps are near-copies; split across train
            and test, a probe matches test samples to their seed's other prompts and scores
            *below* chance. Held-out seeds measure what generalises to new noise.
        tol: the logistic regression's stopping tolerance (scikit-learn's ``tol``: the largest
            gradient entry). The default stops well before the optimum when features outnumber
            samples; ``1e-8`` converges (both linear probes then agree to ~1e-5).
    """

    probe: str = "linear"
    folds: int = 5
    seed: int = 0
    C: float = 1.0
    max_iter: int = 500
    hidden: int | None = None
    group_by_seed: bool = True
    tol: float = 1e-4

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise ValueError(f"probe {self.probe!r} is not one of {', '.join(PROBES)}")
        if self.folds < 2:
            raise ValueError(f"folds={self.folds}: cross-validation needs at least 2 folds")


def make_probe(config: ProbeConfig, n_features: int) -> Any:
    """A fresh, unfitted probe (a scikit-learn classifier) for inputs of ``n_features``."""
    if config.probe == "linear":
        return SpanLogisticRegression(C=config.C, tol=config.tol, max_iter=config.max_iter)
    if config.probe == "linear-full":
        clf: Any = LogisticRegression(C=config.C, tol=config.tol, max_iter=config.max_iter)
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


def fold_splits(
    y: np.ndarray, config: ProbeConfig, groups: np.ndarray | None = None
) -> list[Split]:
    """The stratified (and, with ``groups``, grouped) k-fold splits of labels ``y``.

    They depend on the labels, the groups and the config only, so every cell of a run shares
    them (see :class:`CellFolds`).
    """
    n = _n_splits(y, config.folds)
    splitter: Any = StratifiedKFold(n, shuffle=True, random_state=config.seed)
    if groups is not None:
        n = min(n, len(np.unique(groups)))
        splitter = StratifiedGroupKFold(n, shuffle=True, random_state=config.seed)
    return list(splitter.split(np.zeros((len(y), 1)), y, groups))


def cross_validate(
    X: np.ndarray,
    y: np.ndarray,
    config: ProbeConfig,
    groups: np.ndarray | None = None,
    splits: list[Split] | None = None,
) -> np.ndarray:
    """Held-out accuracy of the probe on each stratified fold: ``[folds]``.

    With ``groups`` (the samples' seeds), every group is wholly in train or in test. ``splits``
    (from :func:`fold_splits` of the same ``y`` and ``groups``) saves computing them again.
    """
    scores = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for train, test in fold_splits(y, config, groups) if splits is None else splits:
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
        layer_table: the layer table of the dataset probed, at its latent size (what a layer
            spec such as ``res<max`` resolves against when layers are chosen from these
            results); saved next to the CSV as ``<name>.layers.json``.
    """

    rows: list[ProbeRow] = field(default_factory=list)
    label: str = ""
    layer_table: list[LayerInfo] = field(default_factory=list)

    def __repr__(self) -> str:
        kinds = sorted({r.kind for r in self.rows})
        return f"ProbeResults(label={self.label!r}, {len(self.rows)} rows, kinds={kinds})"

    def __len__(self) -> int:
        return len(self.rows)

    def to_csv(self, path: str | Path) -> Path:
        """Write the table (plus a ``label`` column), and the layer table beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.layer_table:
            save_layer_table(table_path(path), self.layer_table)
        else:
            table_path(path).unlink(missing_ok=True)  # not the table of an earlier run
        names = ["label", *(f.name for f in fields(ProbeRow))]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({"label": self.label, **asdict(row)})
        return path

    @classmethod
    def from_csv(cls, path: str | Path) -> ProbeResults:
        """Read a table written by :meth:`to_csv` (with its layer table, when it is there).

        Raises:
            ValueError: the layer table beside the CSV cannot be read.
        """
        types = {f.name: f.type for f in fields(ProbeRow)}
        cast = {"int": int, "float": float, "str": str}
        rows, label = [], ""
        with open(path, newline="") as f:
            for raw in csv.DictReader(f):
                label = raw.pop("label", label)
                rows.append(ProbeRow(**{k: cast[str(types[k])](v) for k, v in raw.items()}))
        table = table_path(Path(path))
        return cls(rows, label, load_layer_table(table) if table.is_file() else [])

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


def table_path(csv_path: Path) -> Path:
    """Where :meth:`ProbeResults.to_csv` keeps the layer table: ``results.layers.json``."""
    return csv_path.with_suffix(".layers.json")


@dataclass(frozen=True)
class CellFolds:
    """The splits every cell of a run shares: those of the labels, of the shuffled labels and of
    the control dataset's labels. Splits depend on labels, groups and config only, so a run
    computes them once, not once per cell and control.

    Attributes:
        shuffled_y: the permuted labels of the shuffled-label control.
        real, shuffled, control: ``(train, test)`` index pairs.
    """

    shuffled_y: np.ndarray
    real: list[Split]
    shuffled: list[Split]
    control: list[Split] | None = None

    @classmethod
    def plan(
        cls,
        y: np.ndarray,
        config: ProbeConfig,
        groups: np.ndarray | None = None,
        control: tuple[np.ndarray, np.ndarray | None] | None = None,
    ) -> CellFolds:
        """Splits for labels ``y`` (and ``groups``) and the control's ``(y, groups)``."""
        y_shuf = shuffled(y, config.seed)
        other = None if control is None else fold_splits(control[0], config, control[1])
        real = fold_splits(y, config, groups)
        return cls(y_shuf, real, fold_splits(y_shuf, config, groups), other)


def probe_cell(
    X: np.ndarray,
    y: np.ndarray,
    config: ProbeConfig,
    groups: np.ndarray | None = None,
    control: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    folds: CellFolds | None = None,
) -> tuple[float, float, float, float]:
    """``(acc_mean, acc_std, shuffled_acc, random_model_acc)`` of one cell.

    ``control`` is the random-model dataset's ``(X, y, groups)`` of the same cell; ``folds`` the
    run's shared splits (default: computed here).
    """
    if folds is None or (control is not None and folds.control is None):
        folds = CellFolds.plan(y, config, groups, None if control is None else control[1:])
    acc = cross_validate(X, y, config, groups, folds.real)
    shuf = cross_validate(X, folds.shuffled_y, config, groups, folds.shuffled)
    rand = math.nan
    if control is not None:
        cx, cy, cg = control
        rand = float(cross_validate(cx, cy, config, cg, folds.control).mean())
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

    probed = None
    if control is not None and any(k in control.X for k in keys):
        probed = (control.y, groups(control))
    folds = CellFolds.plan(features.y, config, groups(features), probed)

    def task(key: Key) -> tuple[float, float, float, float]:
        other = None
        if control is not None and key in control.X:
            other = (control.X[key], control.y, groups(control))
        return probe_cell(features.X[key], features.y, config, groups(features), other, folds)

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
    return ProbeResults(rows, features.label, list(features.layer_table))
