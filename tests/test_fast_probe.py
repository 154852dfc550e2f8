"""The span probe (the default linear probe) against today's per-cell probe it replaces.

Unit tests on synthetic blobs (the same model to rounding, iteration for iteration); a behaviour
test on a dataset recorded from the toy model, probed both ways with both controls.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from probe.probing.fast_linear import SpanLogisticRegression, span_basis, standardise_stats
from probe.probing.features import build_features, synthetic_features
from probe.probing.probes import CellFolds, ProbeConfig, make_probe, run_probes
from probe.prompts.templates import load_template
from probe.recording.dataset import record_dataset
from probe.recording.random_control import random_init_like
from probe.recording.store import AttentionDataset

COLUMNS = ("acc_mean", "shuffled_acc", "random_model_acc")


def _full(tol: float = 1e-4, max_iter: int = 100):
    return make_pipeline(StandardScaler(), LogisticRegression(tol=tol, max_iter=max_iter))


def _split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    test = np.arange(len(y)) % 4 == 0
    return ~test, test


@pytest.mark.parametrize(
    ("classes", "dim", "per_class"),
    [(10, 2048, 4), (2, 512, 16), (3, 300, 10), (10, 8, 8)],  # n < d, two classes, n >= d
)
@pytest.mark.parametrize("tol", [1e-4, 1e-10])
def test_span_fit_is_the_full_fit(classes, dim, per_class, tol):
    X, y = synthetic_features(per_class, classes, dim, separation=2.0)
    X = X.astype(np.float64)
    train, test = _split(y)
    full = _full(tol, 5000).fit(X[train], y[train])
    span = SpanLogisticRegression(tol=tol, max_iter=5000).fit(X[train], y[train])
    assert span.n_iter_[0] == full[-1].n_iter_[0]  # the same iterates, rotated
    assert np.abs(span.predict_proba(X[test]) - full.predict_proba(X[test])).max() < 1e-6
    assert np.abs(span.coef_ - full[-1].coef_).max() < 1e-6
    assert np.abs(span.intercept_ - full[-1].intercept_).max() < 1e-6
    assert np.array_equal(span.predict(X[test]), full.predict(X[test]))
    assert span.score(X[test], y[test]) == full.score(X[test], y[test])


def test_fit_many_is_each_fit_and_the_full_fit():
    """One batch of problems of different sizes and class counts (span-reduced, binomial, and
    n >= d): each equals its own per-cell fit, iteration for iteration."""
    shapes = [(10, 2048, 4), (10, 512, 6), (2, 512, 16), (3, 300, 10), (10, 8, 8), (10, 64, 3)]
    data = []
    for seed, (classes, dim, per_class) in enumerate(shapes):
        X, y = synthetic_features(per_class, classes, dim, separation=1.0 + seed % 3)
        train = np.random.default_rng(seed).permutation(len(y))[: len(y) * 3 // 4]
        data.append((X.astype(np.float64)[train], y[train]))
    for tol in (1e-4, 1e-8):
        probes = SpanLogisticRegression(tol=tol, max_iter=5000).fit_many(data)
        for (X, y), span in zip(data, probes, strict=True):
            full = _full(tol, 5000).fit(X, y)
            assert span.n_iter_[0] == full[-1].n_iter_[0], (X.shape, tol)
            assert np.abs(span.predict_proba(X) - full.predict_proba(X)).max() < 1e-6
            alone = SpanLogisticRegression(tol=tol, max_iter=5000).fit(X, y)
            assert np.abs(span.coef_ - alone.coef_).max() < 1e-9
    with pytest.warns(ConvergenceWarning, match="in 6 of 6 fits"):
        short = SpanLogisticRegression(max_iter=2).fit_many(data)
    assert [p.n_iter_[0] for p in short] == [2] * 6


def test_without_scipys_private_line_search_the_probe_fits_one_at_a_time(monkeypatch):
    """A SciPy that moved ``scipy.optimize._dcsrch``: one warning naming why and the cost, then
    each fit by scikit-learn's own L-BFGS-B in the span, the same model (to the tolerance)."""
    import sys

    from probe.probing.lbfgs_batch import batched_unavailable

    data = []
    for classes, dim, per_class in [(10, 512, 4), (2, 64, 16), (3, 8, 10)]:
        X, y = synthetic_features(per_class, classes, dim, separation=2.0)
        data.append((X.astype(np.float64), y))
    batched = SpanLogisticRegression(tol=1e-8, max_iter=5000).fit_many(data)
    monkeypatch.setitem(sys.modules, "scipy.optimize._dcsrch", None)  # import raises
    assert "has no scipy.optimize._dcsrch" in str(batched_unavailable())
    with pytest.warns(RuntimeWarning, match=r"_dcsrch .*one at a time .*slower") as caught:
        fallback = SpanLogisticRegression(tol=1e-8, max_iter=5000).fit_many(data)
    assert len([w for w in caught if w.category is RuntimeWarning]) == 1
    for (X, _), a, b in zip(data, batched, fallback, strict=True):
        assert np.abs(a.predict_proba(X) - b.predict_proba(X)).max() < 1e-5
        assert np.array_equal(a.predict(X), b.predict(X))
    with pytest.warns(RuntimeWarning, match="one at a time"):
        single = SpanLogisticRegression(tol=1e-8, max_iter=5000).fit(*data[1])
    assert np.abs(single.coef_ - batched[1].coef_).max() < 1e-4


def test_span_basis_and_standardisation():
    X, _ = synthetic_features(3, 10, 256, separation=1.0)
    mean, scale = standardise_stats(X)
    scaler = StandardScaler().fit(X.astype(np.float64))
    assert np.allclose(mean, scaler.mean_) and np.allclose(scale, scaler.scale_)
    X[:, 5] = 3.0  # a constant feature keeps scale 1, as in StandardScaler
    mean, scale = standardise_stats(X)
    assert scale[5] == 1.0
    Z = (X.astype(np.float64) - mean) / scale
    Q = span_basis(Z)
    assert Q.shape == (256, 29)  # 30 centred rows span 29 dimensions
    assert np.abs(Q.T @ Q - np.eye(29)).max() < 1e-12
    assert np.abs(Z @ Q @ Q.T - Z).max() < 1e-9


def test_estimator_api_and_errors():
    X, y = synthetic_features(5, 3, 64, separation=3.0)
    probe = SpanLogisticRegression(C=0.5, max_iter=50)
    assert clone(probe).get_params() == {"C": 0.5, "tol": 1e-4, "max_iter": 50, "span": True}
    labels = np.array(["red", "green", "blue"])[y]
    fitted = probe.fit(X, labels)
    assert list(fitted.classes_) == ["blue", "green", "red"]
    assert set(fitted.predict(X)) <= set(labels) and fitted.predict_proba(X).shape == (15, 3)
    assert np.allclose(fitted.predict_proba(X).sum(1), 1.0)
    with pytest.raises(ValueError, match="one class"):
        SpanLogisticRegression().fit(X, np.zeros(15))
    with pytest.raises(ValueError, match="64"):
        fitted.predict(X[:, :10])
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        SpanLogisticRegression(max_iter=2).fit(X, y)
    assert isinstance(make_probe(ProbeConfig(), 64), SpanLogisticRegression)
    assert make_probe(ProbeConfig("linear-full"), 64)[-1].tol == 1e-4


def test_cell_folds_are_those_cross_validation_draws():
    _, y = synthetic_features(4, 5, 32, separation=3.0)
    groups = np.tile(np.arange(4), 5)
    folds = CellFolds.plan(y, ProbeConfig(folds=4), groups, (y, groups))
    assert len(folds.real) == 4 and sorted(np.concatenate([t for _, t in folds.real])) == list(
        range(20)
    )
    for train, test in folds.real:
        assert not set(groups[train]) & set(groups[test])
    assert np.array_equal(np.sort(folds.shuffled_y), np.sort(y))
    assert folds.control is not None and all(
        np.array_equal(a[1], b[1]) for a, b in zip(folds.control, folds.real, strict=True)
    )


@pytest.fixture(scope="module")
def colour_features(tmp_path_factory):
    """The toy model's colour_car set, seeds 0-3 (40 samples), and its random-model control."""
    from probe.models import load_pipeline

    pipe = load_pipeline("toy")
    out = tmp_path_factory.mktemp("fast_probe")
    kw = {"model": "toy", "layers": "3,13", "steps": [0, 3], "num_steps": 4,
          "self_reduce": "svd:8", "progress": False}  # fmt: skip
    record_dataset(pipe, load_template("colour_car"), range(4), out / "colour", **kw)
    control = random_init_like(pipe, seed=0)
    record_dataset(control, load_template("colour_car"), range(4), out / "random",
                   random_init=0, **kw)  # fmt: skip
    return tuple(
        build_features(AttentionDataset(out / name), "colour", progress=False)
        for name in ("colour", "random")
    )


@pytest.mark.slow
def test_span_probe_matches_per_cell_probe_on_recorded_data(colour_features):
    feats, control = colour_features
    assert {x.shape[1] for x in feats.X.values()} == {64, 256, 512, 2048}
    fast = run_probes(feats, ProbeConfig(), control, progress=False)
    full = run_probes(feats, ProbeConfig("linear-full"), control, progress=False)
    assert [(r.layer, r.step, r.kind) for r in fast.rows] == [
        (r.layer, r.step, r.kind) for r in full.rows
    ]
    for a, b in zip(fast.rows, full.rows, strict=True):
        for column in COLUMNS:
            assert getattr(a, column) == pytest.approx(getattr(b, column), abs=0.005), (a, column)
        assert (a.probe, b.probe, a.n_features) == ("linear", "linear-full", b.n_features)
    assert max(r.acc_mean for r in fast.rows) >= 0.5  # the toy model's maps carry the colour


@pytest.mark.slow
@pytest.mark.parametrize(("tol", "bound"), [(1e-4, 1e-5), (1e-8, 1e-4)])
def test_span_probe_probabilities_on_recorded_data(colour_features, tol, bound):
    """Fold by fold on the widest cells (2048 self features, 30 training rows), against the
    per-cell fit on float64 copies: the same iterates up to rounding at the default tol, the same
    optimum when converged. (On the float32 features themselves the per-cell fit computes its
    loss in float32, which moves its early-stopped probabilities by up to ~1e-2.)"""
    feats, _ = colour_features
    folds = CellFolds.plan(feats.y, ProbeConfig(), feats.groups)
    for key in [(13, 0, "self"), (13, 3, "self")]:
        X = feats.X[key]
        for train, test in folds.real:
            span = SpanLogisticRegression(tol=tol, max_iter=5000).fit(X[train], feats.y[train])
            ref = _full(tol, 5000).fit(X[train].astype(np.float64), feats.y[train])
            diff = np.abs(span.predict_proba(X[test]) - ref.predict_proba(X[test])).max()
            assert diff < bound, (key, tol, diff)
            if tol == 1e-4:
                assert span.n_iter_[0] == ref[-1].n_iter_[0]
