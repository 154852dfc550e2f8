"""The default linear probe: ``StandardScaler + LogisticRegression``, fitted in the span of the
training rows.

An L2-penalised linear model's gradient with respect to its weights is a combination of the
training rows, so every iterate of a solver started at zero, and the solution, lie in their span.
With ``Q`` (``[d, r]``, ``r < n``) an orthonormal basis of the span of the standardised training
rows ``Z`` (``[n, d]``, ``Z = A Qᵀ`` with ``A = Z Q``), weights ``W = Θ Qᵀ`` give the same scores
``Z Wᵀ = A Θᵀ`` and the same penalty ``‖W‖ = ‖Θ‖``: the fit on the ``[n, r]`` coordinates ``A``
is the same problem in ``r`` unknowns per class instead of ``d``. It runs scikit-learn's
optimiser on it (SciPy's L-BFGS-B, scikit-learn's options, loss and penalty scaling), and stops
by scikit-learn's rule as well: the largest gradient entry over the ``d`` original weights
(``∇Θ Qᵀ``) is at most ``tol``. Up to floating-point rounding the iterates are those of
``LogisticRegression().fit(Z, y)`` rotated, so the probe is the same model, stopped at the same
iteration. See docs/probing.md, "The span probe".

Example:
    >>> probe = SpanLogisticRegression(C=1.0, max_iter=500).fit(X_train, y_train)
    >>> probe.predict_proba(X_test).shape
    (8, 10)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_array, check_is_fitted

WATCHED_COLUMNS = 32  # weights whose gradient is checked first at each iteration
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


def span_basis(Z: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the span of ``Z``'s rows: ``Q`` ``[d, r]``, ``r <= n``.

    From the eigenvectors of the Gram matrix ``Z Zᵀ`` (``[n, n]``, much cheaper than a QR or
    SVD of ``[n, d]``); directions whose singular value is below ``1e-6`` of the largest are
    dropped (among them the one that centring removes), and a Cholesky-QR pass makes the columns
    orthonormal to rounding.

    Args:
        Z: ``[n, d]`` rows.
    """
    Z = np.asarray(Z, dtype=np.float64)
    ev, U = np.linalg.eigh(Z @ Z.T)
    keep = ev > ev[-1] * SPAN_RTOL if ev[-1] > 0 else np.zeros(len(ev), dtype=bool)
    V = Z.T @ (U[:, keep] / np.sqrt(ev[keep]))
    if V.shape[1] == 0:
        return V
    L = np.linalg.cholesky(V.T @ V)  # ≈ I
    return V @ np.linalg.inv(L).T


@dataclass
class _Stopping:
    """scikit-learn's convergence test for L-BFGS, read through a span basis.

    The test is ``max |∂F/∂w| <= tol`` over every weight of the full problem (``d`` per class)
    and every intercept. The full gradient is ``∇Θ Qᵀ``; the columns that were largest at the
    last full check are tried first, so most iterations need ``K·n·32`` flops, not ``K·n·d``.
    """

    tol: float
    basis: np.ndarray | None
    columns: np.ndarray | None = None
    grad: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def converged(self) -> bool:
        """The test at the point of the last evaluation (``grad``: ``(x, ∇Θ, ∇b)``)."""
        assert self.grad is not None
        _, g_coef, g_bias = self.grad
        if np.abs(g_bias).max(initial=0.0) > self.tol:
            return False
        if self.basis is None:
            return bool(np.abs(g_coef).max(initial=0.0) <= self.tol)
        watched = self.columns
        if watched is not None and np.abs(g_coef @ self.basis[watched].T).max() > self.tol:
            return False
        full = np.abs(g_coef @ self.basis.T).max(axis=0)  # [d]
        self.columns = np.argsort(full)[-WATCHED_COLUMNS:]
        return bool(full.max() <= self.tol)


def _objective(
    A: np.ndarray, y: np.ndarray, n_classes: int, l2: float, stop: _Stopping
) -> tuple[Callable[[np.ndarray], tuple[float, np.ndarray]], int]:
    """scikit-learn's mean log-loss + ``l2/2 ‖W‖²`` and its gradient, on ``A`` ``[n, r]``.

    Two classes use the binomial loss on one weight vector (as scikit-learn does), more the
    multinomial loss on one vector per class. The intercepts are not penalised. Returns the
    function of the flat parameters ``[rows·r weights, rows intercepts]`` and ``rows``.
    """
    n, r = A.shape
    rows = 1 if n_classes == 2 else n_classes
    onehot = (y == 1).astype(np.float64)[:, None] if rows == 1 else np.eye(n_classes)[y]

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        coef, bias = x[: rows * r].reshape(rows, r), x[rows * r :]
        raw = A @ coef.T + bias  # [n, rows]
        if rows == 1:
            loss = np.logaddexp(0.0, raw) - onehot * raw
            resid = expit(raw) - onehot
        else:
            top = raw.max(axis=1, keepdims=True)
            exp = np.exp(raw - top)
            total = exp.sum(axis=1, keepdims=True)
            loss = np.log(total) + top - (raw * onehot).sum(axis=1, keepdims=True)
            resid = exp / total - onehot
        resid /= n
        g_coef = resid.T @ A + l2 * coef
        g_bias = resid.sum(axis=0)
        stop.grad = (x.copy(), g_coef, g_bias)
        value = float(loss.sum() / n + 0.5 * l2 * np.sum(coef * coef))
        return value, np.concatenate([g_coef.ravel(), g_bias])

    return fun, rows


def fit_logistic(
    A: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    C: float = 1.0,
    tol: float = 1e-4,
    max_iter: int = 100,
    basis: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """L2 logistic regression by scikit-learn's L-BFGS on coordinates ``A``.

    Args:
        A: ``[n, r]`` the training rows (span coordinates, or the standardised rows themselves).
        y: ``[n]`` class indices ``0 .. n_classes-1``.
        n_classes: number of classes (2: binomial, one weight vector).
        C: inverse penalty, as in ``LogisticRegression``.
        tol: stop when the largest gradient entry of the full problem is at most ``tol``.
        max_iter: L-BFGS iterations at most.
        basis: ``[d, r]`` the span basis ``A`` was taken in (``None``: ``A`` is the full problem).

    Returns:
        ``(coef [rows, r], intercept [rows], iterations, converged)``, ``rows`` 1 for two
        classes, else ``n_classes``.
    """
    n, r = A.shape
    stop = _Stopping(tol, basis)
    fun, rows = _objective(A, y, n_classes, 1.0 / (C * n), stop)
    x0 = np.zeros(rows * (r + 1))
    fun(x0)
    if stop.converged():  # L-BFGS-B tests the starting point too
        return x0[: rows * r].reshape(rows, r), x0[rows * r :], 0, True
    hit = []

    def callback(intermediate_result: Any) -> None:
        assert stop.grad is not None
        if not np.array_equal(stop.grad[0], intermediate_result.x):
            fun(intermediate_result.x)  # L-BFGS-B ends an iteration at its last evaluation
        if stop.converged():
            hit.append(True)
            raise StopIteration

    res = optimize.minimize(
        fun, x0, jac=True, method="L-BFGS-B", callback=callback,
        options={"maxiter": max_iter, "maxls": 50, "gtol": 0.0, "ftol": 64 * np.finfo(float).eps},
    )  # fmt: skip
    converged = bool(hit) or res.status == 0
    return res.x[: rows * r].reshape(rows, r), res.x[rows * r :], int(res.nit), converged


class SpanLogisticRegression(ClassifierMixin, BaseEstimator):
    """``Pipeline(StandardScaler(), LogisticRegression(C=C, tol=tol, max_iter=max_iter))``,
    fitted in ``n`` dimensions when there are fewer training rows ``n`` than features ``d``.

    The inputs are standardised with the training rows' mean and standard deviation
    (:func:`standardise_stats`); with ``n < d`` the model is fitted on the rows' coordinates in
    their span (:func:`span_basis`), else on the rows themselves. Either way it is scikit-learn's
    L-BFGS with scikit-learn's stopping rule (:func:`fit_logistic`), in float64.

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
        X = check_array(X, dtype=[np.float64, np.float32])
        self.classes_, y_index = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"the training labels hold one class ({self.classes_[0]!r}): a probe needs "
                "at least two; record more prompts or seeds"
            )
        self.mean_, self.scale_ = standardise_stats(X)
        Z = (X - self.mean_) / self.scale_
        n, d = Z.shape
        basis = span_basis(Z) if self.span and n < d else None
        A = Z if basis is None else Z @ basis
        coef, self.intercept_, n_iter, converged = fit_logistic(
            A, y_index, len(self.classes_), C=self.C, tol=self.tol, max_iter=self.max_iter,
            basis=basis,
        )  # fmt: skip
        if not converged:
            warnings.warn(
                f"L-BFGS stopped after {n_iter} iterations above tol={self.tol}: raise max_iter",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.coef_ = coef if basis is None else coef @ basis.T
        self.n_iter_ = np.array([n_iter])
        self.n_features_in_ = d
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
