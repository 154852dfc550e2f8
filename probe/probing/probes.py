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
  same architecture (:mod:`probe.recording.random_control`): what token identity alone gives.

Example:
    >>> results = run_probes(build_features(AttentionDataset("runs/colour_car"), "colour"))
    >>> results.best("cross")
    ProbeRow(layer=13, step=4, ...)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from probe.probing.fast_linear import SpanLogisticRegression
from probe.probing.features import FeatureSet, Key
from probe.probing.results import ProbeResults, ProbeRow
from probe.probing.results import table_path as table_path  # re-exported

PROBES = ("linear", "linear-full", "mlp")
CELL_BLOCK = 64  # cells whose folds the linear probe fits in one batch, at most
BLOCK_BYTES = 2**30  # working memory of one batch, at most (float64 rows of every fold)
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
    splits = fold_splits(y, config, groups) if splits is None else splits
    return fold_scores([(X, y, splits)], config)[0]


def fold_scores(
    jobs: list[tuple[np.ndarray, np.ndarray, list[Split]]], config: ProbeConfig
) -> list[np.ndarray]:
    """Held-out accuracy ``[folds]`` of each ``(X, y, splits)`` job.

    The linear probe fits every fold of every job in one batched run
    (:meth:`SpanLogisticRegression.fit_many`); the others fit fold by fold.
    """
    folds = [(X, y, train, test) for X, y, splits in jobs for train, test in splits]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if config.probe == "linear":
            probe = make_probe(config, 0)
            fitted = probe.fit_many([(X[train], y[train]) for X, y, train, _ in folds])
        else:
            fitted = [make_probe(config, X.shape[1]).fit(X[tr], y[tr]) for X, y, tr, _ in folds]
    scores = [
        np.mean(p.predict(X[te]) == y[te]) for p, (X, y, _, te) in zip(fitted, folds, strict=True)
    ]
    out, at = [], 0
    for _, _, splits in jobs:
        out.append(np.array(scores[at : at + len(splits)], dtype=float))
        at += len(splits)
    return out


def shuffled(y: np.ndarray, seed: int) -> np.ndarray:
    """The labels permuted with a fixed seed (the shuffled-label control)."""
    return np.random.default_rng(seed).permutation(y)


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
    cx, cy = (None, None) if control is None else control[:2]
    return probe_cells([(X, cx)], y, config, folds, cy)[0]


def probe_cells(
    cells: list[tuple[np.ndarray, np.ndarray | None]],
    y: np.ndarray,
    config: ProbeConfig,
    folds: CellFolds,
    control_y: np.ndarray | None = None,
) -> list[tuple[float, float, float, float]]:
    """:func:`probe_cell` for several cells of one run: ``cells`` are ``(X, control X or
    None)`` with the run's labels ``y``, splits ``folds`` and control labels ``control_y``.
    The linear probe fits every fold of every cell and control in one batch.
    """
    jobs = []
    for X, cx in cells:
        jobs += [(X, y, folds.real), (X, folds.shuffled_y, folds.shuffled)]
        if cx is not None:
            assert folds.control is not None and control_y is not None
            jobs.append((cx, control_y, folds.control))
    scores = iter(fold_scores(jobs, config))
    out = []
    for _, cx in cells:
        acc, shuf = next(scores), next(scores)
        rand = math.nan if cx is None else float(next(scores).mean())
        out.append((float(acc.mean()), float(acc.std()), float(shuf.mean()), rand))
    return out


def cell_blocks(
    keys: list[Key], features: FeatureSet, config: ProbeConfig, control: bool
) -> list[list[Key]]:
    """The cells in blocks of at most :data:`CELL_BLOCK` for the batched fit, narrowest first
    (a batch pads every fold to its widest cell), each keeping at most :data:`BLOCK_BYTES` of
    training rows: the float32 copy and the float64 working rows of every fold of every label
    set, ~16 bytes a feature. 64 cells of the demo's grid; one at 10,000 samples of 2048."""
    sets = 3 if control else 2  # labels, shuffled labels, the random model's labels
    rows = len(features.y) * max(config.folds - 1, 1) * sets  # over a cell's folds
    blocks: list[list[Key]] = []
    width = 0
    for key in sorted(keys, key=lambda k: features.X[k].shape[1]):
        d = features.X[key].shape[1]
        fits = blocks and len(blocks[-1]) < CELL_BLOCK
        if not fits or (len(blocks[-1]) + 1) * rows * max(width, d) * 16 > BLOCK_BYTES:
            blocks.append([])
            width = 0
        blocks[-1].append(key)
        width = max(width, d)
    return blocks


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

    def task(block: list[Key]) -> list[tuple[float, float, float, float]]:
        cells = [(features.X[k], None if control is None else control.X.get(k)) for k in block]
        return probe_cells(cells, features.y, config, folds, None if control is None else control.y)

    blocks = cell_blocks(keys, features, config, control is not None)
    bar = tqdm(total=len(keys), disable=not progress, desc=f"probe {features.label}", unit="cell")
    by_key: dict[Key, tuple[float, float, float, float]] = {}
    if jobs == 1:
        for block in blocks:
            by_key.update(zip(block, task(block), strict=True))
            bar.update(len(block))
    else:
        from joblib import Parallel, delayed

        done = Parallel(n_jobs=jobs, return_as="generator")(delayed(task)(b) for b in blocks)
        for block, scores in zip(blocks, done, strict=True):
            by_key.update(zip(block, scores, strict=True))
            bar.update(len(block))
    bar.close()
    values = [by_key[k] for k in keys]
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
