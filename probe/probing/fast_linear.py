"""The default linear probe: ``StandardScaler + LogisticRegression``, fitted in the span of the
training rows.

An L2-penalised linear model's gradient with respect to its weights is a combination of the
training rows, so every iterate of a solver started at zero, and the solution, lie in their span.
With ``Q`` (``[d, r]``, ``r < n``) an orthonormal basis of the span of the standardised training
rows ``Z`` (``[n, d]``, ``Z = A Qᵀ`` with ``A = Z Q``), weights ``W = Θ Qᵀ`` give the same scores
``Z Wᵀ = A Θᵀ`` and the same penalty ``‖W‖ = ‖Θ‖``: the fit on the ``[n, r]`` coordinates ``A``
is the same problem in ``r`` unknowns per class instead of ``d``. It runs scikit-learn's
optimiser on it (SciPy's L-BFGS-B algorithm with scikit-learn's options, loss and penalty
scaling, replayed for many problems at once by :mod:`probe.probing.lbfgs_batch`), and stops by
scikit-learn's rule as well: the largest gradient entry over the ``d`` original weights
(``∇Θ Qᵀ``) is at most ``tol``. Up to floating-point rounding the iterates are those of
``LogisticRegression().fit(Z, y)`` rotated, so the probe is the same model, stopped at the same
iteration. :meth:`SpanLogisticRegression.fit_many` fits many training sets (every fold of every
cell and control of a run) in one batch. See docs/probing.md, "The span probe".

Example:
    >>> probe = SpanLogisticRegression(C=1.0, max_iter=500).fit(X_train, y_train)
    >>> probe.predict_proba(X_test).shape
    (8, 10)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_array, check_is_fitted
from threadpoolctl import threadpool_limits

from probe.probing.lbfgs_batch import (
    GradientTest,
    LogisticProblems,
    SpanBasis,
    batched_unavailable,
    minimise,
)

CHUNK = 384  # problems per batched L-BFGS run
SPAN_RTOL = 1e-12  # eigenvalues of Z Zᵀ below this fraction of the largest are dropped


def standardise_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``StandardScaler``'s statistics of ``X`` ``[n, d]``: ``(mean [d], scale [d])``.

    Mean and standard deviation (``ddof=0``) with float64 accumulators; a feature that is
    constant up to the rounding bound scikit-learn uses gets scale 1.
    """
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    mean = X.mean(axis=0)
    var = ((X - mean) ** 2).mean(axis=0)
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    return mean, np.where(constant, 1.0, np.sqrt(var))


def span_factors(Z: np.ndarray) -> tuple[SpanBasis, np.ndarray]:
    """An orthonormal basis ``Q = Zᵀ M`` (``[d, r]``, ``r <= n``) of the span of ``Z``'s rows,
    and the rows' coordinates in it, ``A = Z Q`` (``[n, r]``), from the Gram matrix alone.

    The eigenvectors ``U`` of ``G = Z Zᵀ`` (``[n, n]``) give ``Q = Zᵀ U Λ^{-1/2}``; directions
    whose singular value is below ``1e-6`` of the largest are dropped (among them the one that
    centring removes), and a Cholesky-QR pass (``L Lᵀ = QᵀQ = Mᵀ G M``) makes the columns
    orthonormal to rounding. ``A = G M``: after ``G`` (``n²d``), everything is ``n × n``.

    Args:
        Z: ``[n, d]`` rows.
    """
    Z = np.asarray(Z, dtype=np.float64)
    G = Z @ Z.T
    ev, U = np.linalg.eigh(G)
    keep = ev > ev[-1] * SPAN_RTOL if ev[-1] > 0 else np.zeros(len(ev), dtype=bool)
    M = U[:, keep] / np.sqrt(ev[keep])
    if M.shape[1]:
        L = np.linalg.cholesky(M.T @ G @ M)  # ≈ I
        M = M @ np.linalg.inv(L).T
    return SpanBasis(Z, M), G @ M


def span_basis(Z: np.ndarray) -> np.ndarray:
    """The basis of :func:`span_factors` as a matrix ``Q`` ``[d, r]``."""
    basis, _ = span_factors(Z)
    return basis.rows.T @ basis.mix


@dataclass
class _Prepared:
    """One training set made ready for the batched fit."""

    classes: np.ndarray
    y_index: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    coords: np.ndarray  # [n, r] span coordinates, or the standardised rows
    basis: SpanBasis | None


def _prepare(X: Any, y: Any, span: bool) -> _Prepared:
    """Standardise ``X`` ``[n, d]`` and reduce it to its span when ``n < d`` (and ``span``).

    Raises:
        ValueError: ``y`` has fewer than two classes.
    """
    X = check_array(X, dtype=[np.float64, np.float32])
    classes, y_index = np.unique(np.asarray(y), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"the training labels hold one class ({classes[0]!r}): a probe needs "
            "at least two; record more prompts or seeds"
        )
    mean, scale = standardise_stats(X)
    Z = (X - mean) / scale
    n, d = Z.shape
    basis, coords = span_factors(Z) if span and n < d else (None, Z)
    return _Prepared(classes, y_index, mean, scale, coords, basis)


def _fit_prepared(
    prepared: list[_Prepared], C: float, tol: float, max_iter: int
) -> list[tuple[np.ndarray, np.ndarray, int, bool]]:
    """``(coef [rows, d], intercept [rows], n_iter, converged)`` of each prepared set.

    Sets with the same number of classes are fitted together, in chunks of similar width.
    """
    reason = batched_unavailable()
    if reason is not None:
        return _fit_one_at_a_time(prepared, C, tol, max_iter, reason)
    out: list[Any] = [None] * len(prepared)
    by_classes: dict[int, list[int]] = {}
    for i, p in enumerate(prepared):
        by_classes.setdefault(len(p.classes), []).append(i)
    for n_classes, members in by_classes.items():
        members.sort(key=lambda i: prepared[i].coords.shape[1])
        for lo in range(0, len(members), CHUNK):
            chunk = [prepared[i] for i in members[lo : lo + CHUNK]]
            problems = LogisticProblems.pack(
                [p.coords for p in chunk], [p.y_index for p in chunk], n_classes, C
            )
            test = GradientTest(tol, [p.basis for p in chunk], problems)
            fit = minimise(problems, test, max_iter)
            coef, bias = problems.split(fit.x)
            for j, p in enumerate(chunk):
                theta = coef[j, :, : p.coords.shape[1]]
                full = theta if p.basis is None else p.basis.to_weights(theta)
                out[members[lo + j]] = (full, bias[j], int(fit.n_iter[j]), bool(fit.converged[j]))
    return out


def _fit_one_at_a_time(
    prepared: list[_Prepared], C: float, tol: float, max_iter: int, reason: str
) -> list[tuple[np.ndarray, np.ndarray, int, bool]]:
    """The fallback where the batched solver cannot run: scikit-learn's ``LogisticRegression``
    (SciPy's public L-BFGS-B) on each set's span coordinates, one fit at a time, after a
    one-line warning. The model is the same; its stopping test reads the gradient in the span
    (``r`` entries per class) instead of over the ``d`` weights, and many small fits take
    several times longer (docs/probing.md, "The span probe")."""
    from sklearn.linear_model import LogisticRegression

    warnings.warn(
        f"{reason}: fitting probes one at a time with scikit-learn (the same model, several "
        "times slower on many folds); pin scipy to a checked version for the batched solver",
        RuntimeWarning,
        stacklevel=3,
    )
    out = []
    for p in prepared:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # reported by the caller
            fit = LogisticRegression(C=C, tol=tol, max_iter=max_iter).fit(p.coords, p.y_index)
        theta = fit.coef_
        full = theta if p.basis is None else p.basis.to_weights(theta)
        n_iter = int(fit.n_iter_[0])
        out.append((full, fit.intercept_.copy(), n_iter, n_iter < max_iter))
    return out


class SpanLogisticRegression(ClassifierMixin, BaseEstimator):
    """``Pipeline(StandardScaler(), LogisticRegression(C=C, tol=tol, max_iter=max_iter))``,
    fitted in ``n`` dimensions when there are fewer training rows ``n`` than features ``d``.

    The inputs are standardised with the training rows' mean and standard deviation
    (:func:`standardise_stats`); with ``n < d`` the model is fitted on the rows' coordinates in
    their span (:func:`span_factors`), else on the rows themselves. Either way it is
    scikit-learn's L-BFGS with scikit-learn's stopping rule (:func:`probe.probing.lbfgs_batch.
    minimise`), in float64.

    Args:
        C: inverse L2 strength.
        tol: scikit-learn's tolerance: the largest gradient entry over the ``d`` weights per class.
        max_iter: L-BFGS iterations at most.
        span: fit in the span when ``n < d`` (``False``: always the ``d``-dimensional problem).

    Attributes:
        classes_: the labels, sorted.
        coef_: ``[1 or n_classes, d]`` weights on the standardised inputs.
        intercept_: ``[1 or n_classes]``.
        mean_, scale_: ``[d]`` the standardisation.
        n_iter_: ``[1]`` L-BFGS iterations.

    Example:
        >>> SpanLogisticRegression(max_iter=500).fit(X, y).score(X_test, y_test)
        0.9
    """

    def __init__(
        self, C: float = 1.0, tol: float = 1e-4, max_iter: int = 100, span: bool = True
    ) -> None:
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.span = span

    def fit(self, X: Any, y: Any) -> SpanLogisticRegression:
        """Standardise ``X`` ``[n, d]`` and fit the probe to labels ``y`` ``[n]``.

        Raises:
            ValueError: ``y`` has fewer than two classes.
        """
        prepared = _prepare(X, y, self.span)
        fitted = _fit_prepared([prepared], self.C, self.tol, self.max_iter)[0]
        self._store(prepared, *fitted)
        if not fitted[3]:
            warnings.warn(
                f"L-BFGS stopped after {fitted[2]} iterations above tol={self.tol}: raise max_iter",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def fit_many(self, datasets: Sequence[tuple[Any, Any]]) -> list[SpanLogisticRegression]:
        """Fit one copy of this probe per ``(X, y)`` in ``datasets``, all in one batched run.

        Each copy equals ``clone(self).fit(X, y)``; the L-BFGS runs of all of them advance
        side by side (:mod:`probe.probing.lbfgs_batch`), which is what makes many small fits
        (every fold of every cell and control) cheap. Runs that stop at ``max_iter`` give one
        ``ConvergenceWarning`` for all.

        Args:
            datasets: ``(X [n_i, d_i], y [n_i])`` pairs; sizes may differ.

        Returns:
            The fitted copies, in the order of ``datasets``.

        Example:
            >>> probes = SpanLogisticRegression().fit_many([(X[tr], y[tr]) for tr, _ in splits])
        """
        # the problems are n x n (n: a fold's rows): BLAS threads only add synchronisation
        # there (2x slower on 2 busy cores); parallel blocks use the cores instead
        with threadpool_limits(limits=1, user_api="blas"):
            prepared = [_prepare(X, y, self.span) for X, y in datasets]
            fits = _fit_prepared(prepared, self.C, self.tol, self.max_iter)
        probes = []
        for p, fitted in zip(prepared, fits, strict=True):
            probes.append(clone(self)._store(p, *fitted))
        stopped = sum(not f[3] for f in fits)
        if stopped:
            warnings.warn(
                f"L-BFGS stopped above tol={self.tol} in {stopped} of {len(fits)} fits: "
                "raise max_iter",
                ConvergenceWarning,
                stacklevel=2,
            )
        return probes

    def _store(
        self, p: _Prepared, coef: np.ndarray, intercept: np.ndarray, n_iter: int, _: bool
    ) -> SpanLogisticRegression:
        self.classes_, self.mean_, self.scale_ = p.classes, p.mean, p.scale
        self.coef_, self.intercept_ = coef, intercept
        self.n_iter_ = np.array([n_iter])
        self.n_features_in_ = len(p.mean)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores ``[n]`` (two classes) or ``[n, n_classes]``."""
        check_is_fitted(self, "coef_")
        X = check_array(X, dtype=[np.float64, np.float32])
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features; this probe was fitted on {self.n_features_in_}"
            )
        scores = ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``[n, n_classes]``, as ``LogisticRegression.predict_proba``."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.stack([1.0 - p, p], axis=1)
        return softmax(scores, axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """The most likely class of each row."""
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[index]
