"""Many L2-penalised logistic regressions at once, by SciPy's L-BFGS-B run in lockstep.

``LogisticRegression(solver="lbfgs")`` hands its loss to SciPy's L-BFGS-B. With no bounds that
is plain L-BFGS: the direction ``-H g`` from the last 10 ``(s, y)`` pairs (``H₀ = sᵀy/yᵀy · I``),
a first step of ``1/‖g‖`` and then 1, the Moré–Thuente line search (``ftol=1e-3``, ``gtol=0.9``,
``xtol=0.1``, ``stpmax=1e10``, at most ``maxls=50`` trials), a pair skipped when
``sᵀy <= eps · (−gᵀs)``, the relative-reduction stop ``(f_k − f_{k+1}) <= 64 eps · max(|f|, 1)``
and a restart from the steepest descent after a failed line search. This module runs exactly
that algorithm on ``B`` problems side by side: each round evaluates every live problem once
(batched products), accepts the steps that pass the line search's first test in one vectorised
comparison, and hands the others to SciPy's own line-search code (``DCSRCH``) one at a time.
The stopping rule is scikit-learn's (the largest gradient entry at most ``tol``), tested on the
original ``d`` weights when the problem was reduced to a span (:class:`GradientTest`).

Iterates equal SciPy's up to floating-point rounding (the inverse-Hessian product is the
two-loop recursion instead of L-BFGS-B's compact form; both are the same matrix).

Example:
    >>> problems = LogisticProblems.pack([A1, A2], [y1, y2], n_classes=10, C=1.0)
    >>> fit = minimise(problems, GradientTest(1e-4, [Q1, Q2], problems), max_iter=300)
    >>> fit.n_iter, fit.converged
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.special import expit

from probe.probing.lbfgs_memory import PairMemory

MAXLS = 50  # scikit-learn's maxls
LS_FTOL, LS_GTOL, LS_XTOL, STPMAX = 1e-3, 0.9, 0.1, 1e10  # L-BFGS-B's line-search constants
EPS = float(np.finfo(np.float64).eps)
REL_REDUCTION = 64 * EPS  # scikit-learn's ftol
WATCHED = 32  # weights whose gradient the stopping test checks first
CHECKED_SCIPY = "1.17.1"  # the SciPy whose private DCSRCH this was checked on (docs/probing.md)


def line_search_class() -> Any:
    """SciPy's private Moré–Thuente line search (``scipy.optimize._dcsrch.DCSRCH``).

    Raises:
        ImportError: this SciPy has no such module (it is private: a release may move it);
            :func:`batched_unavailable` says why, and the probe falls back to one fit at a time.
    """
    from scipy.optimize._dcsrch import DCSRCH

    return DCSRCH


def batched_unavailable() -> str | None:
    """Why the batched solver cannot run here (SciPy's private line search is missing), or
    ``None`` when it can."""
    try:
        line_search_class()
    except ImportError as err:
        import scipy

        return f"SciPy {scipy.__version__} has no scipy.optimize._dcsrch ({err})"
    return None


@dataclass
class LogisticProblems:
    """``B`` problems ``min_θ Σᵢ wᵢ · loss(Aᵢθ, yᵢ) + l2/2 ‖coef‖²`` padded to one shape.

    Padding rows have weight 0 and padding columns of ``A`` are 0, so they change no value and
    no gradient; the padded coefficients stay exactly 0.

    Attributes:
        A: ``[B, n, r]`` coordinates of the training rows.
        target: ``[B, n, rows]`` one-hot labels (``rows`` 1 for two classes: the binomial loss).
        weight: ``[B, n]`` ``1/n_b`` on each problem's own rows, 0 on padding.
        l2: ``[B]`` ``1/(C n_b)``, scikit-learn's penalty scaling.
    """

    A: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    l2: np.ndarray

    @classmethod
    def pack(
        cls, coords: list[np.ndarray], labels: list[np.ndarray], n_classes: int, C: float
    ) -> LogisticProblems:
        """Pad problems ``coords[b]`` (``[n_b, r_b]``) with labels ``labels[b]`` (``0..K-1``)."""
        n = max(a.shape[0] for a in coords)
        r = max(max(a.shape[1] for a in coords), 1)
        rows = 1 if n_classes == 2 else n_classes
        B = len(coords)
        A = np.zeros((B, n, r))
        target = np.zeros((B, n, rows))
        weight = np.zeros((B, n))
        for b, (a, y) in enumerate(zip(coords, labels, strict=True)):
            A[b, : a.shape[0], : a.shape[1]] = a
            target[b, : len(y)] = (y == 1)[:, None] if rows == 1 else np.eye(n_classes)[y]
            weight[b, : len(y)] = 1.0 / len(y)
        l2 = np.array([1.0 / (C * len(y)) for y in labels])
        return cls(A, target, weight, l2)

    @property
    def rows(self) -> int:
        return self.target.shape[2]

    @property
    def size(self) -> int:
        """Parameters per problem: ``rows · r`` weights, then ``rows`` intercepts."""
        return self.rows * (self.A.shape[2] + 1)

    def take(self, keep: np.ndarray) -> LogisticProblems:
        return LogisticProblems(*(getattr(self, f.name)[keep] for f in fields(self)))

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat parameters ``[B, size]`` → ``(coef [B, rows, r], intercept [B, rows])``."""
        rows, r = self.rows, self.A.shape[2]
        return x[:, : rows * r].reshape(-1, rows, r), x[:, rows * r :]

    def evaluate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Objective ``[B]`` and gradient ``[B, size]`` at ``x`` ``[B, size]``."""
        coef, bias = self.split(x)
        raw = self.A @ coef.transpose(0, 2, 1) + bias[:, None, :]  # [B, n, rows]
        if self.rows == 1:
            loss = np.logaddexp(0.0, raw) - self.target * raw
            resid = expit(raw) - self.target
        else:
            top = raw.max(axis=2, keepdims=True)
            exp = np.exp(raw - top)
            total = exp.sum(axis=2, keepdims=True)
            loss = np.log(total) + top - (raw * self.target).sum(axis=2, keepdims=True)
            resid = exp / total - self.target
        resid *= self.weight[:, :, None]
        g_coef = resid.transpose(0, 2, 1) @ self.A + self.l2[:, None, None] * coef
        value = (loss[:, :, 0] * self.weight).sum(axis=1)
        value += 0.5 * self.l2 * np.einsum("bkr,bkr->b", coef, coef)
        grad = np.concatenate([g_coef.reshape(len(x), -1), resid.sum(axis=1)], axis=1)
        return value, grad


@dataclass
class SpanBasis:
    """An orthonormal basis ``Q = Zᵀ M`` (``[d, r]``) of the span of the rows ``Z``, kept as
    its factors so that nothing ``d × r`` is ever built.

    Attributes:
        rows: ``Z`` ``[n, d]``.
        mix: ``M`` ``[n, r]``.
    """

    rows: np.ndarray
    mix: np.ndarray

    def columns(self, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` of ``Q``: ``[len(index), r]``."""
        return self.rows[:, index].T @ self.mix

    def to_weights(self, theta: np.ndarray) -> np.ndarray:
        """``θ Qᵀ``: span coefficients ``[k, r]`` as weights on the ``d`` features ``[k, d]``."""
        return (theta @ self.mix.T) @ self.rows


class GradientTest:
    """scikit-learn's stopping rule, ``max |∂F/∂w| <= tol`` over every weight and intercept.

    For a problem fitted in a span (:class:`SpanBasis` ``Q``) the weights are ``coef Qᵀ``, so
    the test runs on ``∇coef Qᵀ``: first on the ``WATCHED`` columns that were largest at the
    last full test (``[r, 32]`` products, batched), in full (``[r, d]``) only where those pass.

    Args:
        tol: scikit-learn's ``tol``.
        bases: per problem, its span basis, or ``None`` (fitted on the rows themselves).
        problems: the problems the bases belong to (for the shapes).
    """

    def __init__(
        self, tol: float, bases: list[SpanBasis | None], problems: LogisticProblems
    ) -> None:
        self.tol = tol
        self.bases = list(bases)
        self.reduced = np.array([q is not None for q in bases])
        self.watched = np.zeros((len(bases), problems.A.shape[2], WATCHED))

    def take(self, keep: np.ndarray) -> GradientTest:
        out = GradientTest.__new__(GradientTest)
        out.tol, out.reduced, out.watched = self.tol, self.reduced[keep], self.watched[keep]
        out.bases = [self.bases[i] for i in np.flatnonzero(keep)]
        return out

    def passed(self, g: np.ndarray, problems: LogisticProblems, live: np.ndarray) -> np.ndarray:
        """Which problems ``[B]`` (of those ``live``) pass at gradients ``g`` ``[B, size]``."""
        g_coef, g_bias = problems.split(g)
        ok = live & (np.abs(g_bias).max(axis=1) <= self.tol)
        result = ok & ~self.reduced & (np.abs(g_coef).max(axis=(1, 2)) <= self.tol)
        check = np.flatnonzero(ok & self.reduced)
        if len(check):
            near = np.abs(g_coef[check] @ self.watched[check]).max(axis=(1, 2)) <= self.tol
            for b in check[near]:
                result[b] = self._full(b, g_coef[b])
        return result

    def _full(self, b: int, g_coef: np.ndarray) -> bool:
        basis = self.bases[b]
        assert basis is not None
        r = basis.mix.shape[1]
        full = np.abs(basis.to_weights(g_coef[:, :r])).max(axis=0)  # [d]
        columns = np.argsort(full)[-WATCHED:]
        self.watched[b] = 0.0
        self.watched[b, :r, : len(columns)] = basis.columns(columns).T
        return bool(full.max() <= self.tol)


@dataclass
class BatchFit:
    """What :func:`minimise` returns: ``x`` ``[B, size]``, ``n_iter`` ``[B]``, ``converged``."""

    x: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray


@dataclass
class _State:
    """The live problems' L-BFGS state; row ``i`` is problem ``ids[i]``."""

    ids: np.ndarray
    x: np.ndarray  # current iterate [B, P]
    f: np.ndarray
    g: np.ndarray
    d: np.ndarray  # search direction
    trial: np.ndarray  # point being evaluated
    stp: np.ndarray
    gd0: np.ndarray  # gᵀd at the start of the line search
    first: np.ndarray  # the trial is the line search's first
    ifun: np.ndarray  # evaluations in this line search
    it: np.ndarray
    memory: PairMemory
    alive: np.ndarray

    def take(self, keep: np.ndarray) -> _State:
        return _State(*(getattr(self, f.name)[keep] for f in fields(self)))


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("bp,bp->b", a, b)


def _direction(st: _State, rows: np.ndarray) -> None:
    """``d = −H g`` for ``rows`` (:meth:`PairMemory.product`)."""
    st.d[rows] = -st.memory.product(rows, st.g[rows])


def _start_search(st: _State, rows: np.ndarray, first_iteration: bool) -> None:
    """Line search from ``x`` along ``d``: first trial ``1/‖d‖`` (iteration 0) or 1."""
    st.gd0[rows] = _rowdot(st.g[rows], st.d[rows])
    if first_iteration:
        st.stp[rows] = np.minimum(1.0 / np.sqrt(_rowdot(st.d[rows], st.d[rows])), STPMAX)
        st.trial[rows] = st.stp[rows, None] * st.d[rows] + st.x[rows]
    else:
        st.stp[rows] = 1.0
        st.trial[rows] = st.x[rows] + st.d[rows]
    st.first[rows] = True
    st.ifun[rows] = 1


def _restart(st: _State, b: int) -> bool:
    """After a failed line search: drop the pairs and go down the gradient (``False``: no
    pairs to drop, L-BFGS-B gives up)."""
    if st.memory.col[b] == 0:
        return False
    st.memory.reset(b)
    st.d[b] = -st.g[b]
    rows = np.array([b])
    _start_search(st, rows, first_iteration=False)
    return True


def _line_search(
    st: _State, f_t: np.ndarray, gd_t: np.ndarray, searchers: dict[int, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """One line-search step per live problem: ``(accepted, failed)`` masks ``[B]``."""
    ok = (f_t <= st.f + st.stp * (LS_FTOL * st.gd0)) & (np.abs(gd_t) <= LS_GTOL * -st.gd0)
    accepted = st.alive & st.first & ok
    failed = np.zeros_like(accepted)
    for b in np.flatnonzero(st.alive & ~accepted):
        pid = int(st.ids[b])
        if st.first[b]:
            searchers[pid] = line_search_class()(None, None, LS_FTOL, LS_GTOL, LS_XTOL, 0.0, STPMAX)
            searchers[pid]._iterate(st.stp[b], st.f[b], st.gd0[b], b"START")
        stp, _, _, task = searchers[pid]._iterate(st.stp[b], f_t[b], gd_t[b], b"FG")
        st.first[b] = False
        if task[:4] in (b"CONV", b"WARN"):
            accepted[b] = True
            del searchers[pid]
            continue
        st.ifun[b] += 1
        if st.ifun[b] - 1 >= MAXLS:
            failed[b] = True
            del searchers[pid]
            continue
        st.stp[b] = stp
        st.trial[b] = stp * st.d[b] + st.x[b] if stp != 1.0 else st.x[b] + st.d[b]
    return accepted, failed


def _update_memory(st: _State, rows: np.ndarray, g_new: np.ndarray, gd_t: np.ndarray) -> None:
    """Store ``(s, y)`` for ``rows`` unless ``sᵀy <= eps · (−gᵀs)`` (L-BFGS-B's skip)."""
    stp, gd0 = st.stp[rows], st.gd0[rows]
    y = g_new - st.g[rows]
    unit = stp == 1.0
    dr = np.where(unit, gd_t - gd0, (gd_t - gd0) * stp)
    keep = dr > EPS * np.where(unit, -gd0, -gd0 * stp)
    rows, y, dr = rows[keep], y[keep], dr[keep]
    if not len(rows):
        return
    s = np.where((stp[keep] == 1.0)[:, None], st.d[rows], stp[keep, None] * st.d[rows])
    st.memory.store(rows, s, y, dr)


def _initial_state(problems: LogisticProblems) -> _State:
    B, P = len(problems.l2), problems.size
    x = np.zeros((B, P))
    f, g = problems.evaluate(x)
    zeros, ints = np.zeros(B), np.zeros(B, dtype=int)
    return _State(
        ids=np.arange(B), x=x, f=f, g=g, d=-g, trial=x.copy(), stp=zeros.copy(),
        gd0=zeros.copy(), first=np.ones(B, dtype=bool), ifun=ints.copy(), it=ints.copy(),
        memory=PairMemory(B, P), alive=np.ones(B, dtype=bool),
    )  # fmt: skip


def minimise(problems: LogisticProblems, test: GradientTest, max_iter: int) -> BatchFit:
    """Run L-BFGS-B (scikit-learn's settings) on every problem; stop each by ``test``.

    Args:
        problems: the packed problems.
        test: the stopping rule (built on the same ``problems``).
        max_iter: iterations at most (scikit-learn's ``max_iter``).

    Returns:
        :class:`BatchFit`: the final iterates, iteration counts, and whether each stopped by
        ``test`` or the relative reduction (not by ``max_iter`` or a failed line search).
    """
    B = len(problems.l2)
    out = BatchFit(np.zeros((B, problems.size)), np.zeros(B, dtype=int), np.zeros(B, bool))
    st = _initial_state(problems)
    done = test.passed(st.g, problems, st.alive)  # L-BFGS-B tests the starting point too
    _finish(st, out, done, np.ones(B, dtype=bool))
    _start_search(st, np.flatnonzero(st.alive), first_iteration=True)
    searchers: dict[int, Any] = {}
    while st.alive.any():
        if st.alive.sum() < 0.8 * len(st.alive):
            keep = st.alive.copy()
            st, problems, test = st.take(keep), problems.take(keep), test.take(keep)
        f_t, g_t = problems.evaluate(st.trial)
        gd_t = _rowdot(g_t, st.d)
        accepted, failed = _line_search(st, f_t, gd_t, searchers)
        for b in np.flatnonzero(failed).tolist():  # back to the start of the search
            if not _restart(st, b):
                _finish(st, out, _mask(b, len(st.alive)), np.zeros(len(st.alive), bool))
        _accept(st, out, problems, test, np.flatnonzero(accepted), f_t, g_t, gd_t, max_iter)
    return out


def _accept(
    st: _State, out: BatchFit, problems: LogisticProblems, test: GradientTest,
    rows: np.ndarray, f_t: np.ndarray, g_t: np.ndarray, gd_t: np.ndarray, max_iter: int,
) -> None:  # fmt: skip
    """A new iterate for ``rows``: test it, store the pair, and start the next search."""
    if not len(rows):
        return
    f_old = st.f[rows]
    _update_memory(st, rows, g_t[rows], gd_t[rows])
    st.x[rows], st.f[rows], st.g[rows] = st.trial[rows], f_t[rows], g_t[rows]
    st.it[rows] += 1
    B = len(st.alive)
    new = np.zeros(B, dtype=bool)
    new[rows] = True
    stop = test.passed(st.g, problems, new)
    ftol = np.zeros(B, dtype=bool)
    f_new = st.f[rows]
    ftol[rows] = f_old - f_new <= REL_REDUCTION * np.maximum(
        np.maximum(np.abs(f_old), np.abs(f_new)), 1.0
    )
    hit_max = new & (st.it >= max_iter)
    _finish(st, out, stop | hit_max | (new & ftol), stop | (ftol & ~hit_max))
    rows = rows[st.alive[rows]]
    if len(rows):
        _direction(st, rows)
        _start_search(st, rows, first_iteration=False)
        for b in rows[st.gd0[rows] >= 0].tolist():  # not a descent direction: restart
            if not _restart(st, b):
                _finish(st, out, _mask(b, B), np.zeros(B, dtype=bool))


def _mask(b: int, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[b] = True
    return mask


def _finish(st: _State, out: BatchFit, done: np.ndarray, converged: np.ndarray) -> None:
    """Record the problems ``done`` (``[B]`` of the live rows) and retire them."""
    done = done & st.alive
    ids = st.ids[done]
    out.x[ids], out.n_iter[ids], out.converged[ids] = st.x[done], st.it[done], converged[done]
    st.alive &= ~done


__all__ = ["BatchFit", "GradientTest", "LogisticProblems", "SpanBasis", "minimise"]
