"""The L-BFGS pairs of many problems, and ``H g`` from them in compact form.

Each problem keeps its last ``MEMORY`` pairs ``(s, y)`` in a ring, with the inner products
``SᵀY`` and ``YᵀY`` between its slots. The inverse-Hessian product uses Byrd, Nocedal and
Schnabel's compact representation (1994, eq. 3.1, the form L-BFGS-B is built on): with
``H₀ = γ I``, ``R`` the upper triangle of ``SᵀY`` in the order the pairs were stored and ``D``
its diagonal,

    H g = γ g + S R⁻ᵀ ((D + γ YᵀY) R⁻¹ Sᵀg − γ Yᵀg) − γ Y R⁻¹ Sᵀg,

the same vector as the two-loop recursion. Its products with ``S`` and ``Y`` are four batched
matrix-vector products over all slots at once, where the recursion makes twenty passes.

Example:
    >>> memory = PairMemory(problems=8, size=540)
    >>> memory.store(rows, s, y, sy)
    >>> d = -memory.product(rows, g)
"""

from __future__ import annotations

import numpy as np

MEMORY = 10  # L-BFGS-B's default maxcor, which scikit-learn keeps


def _inner(M: np.ndarray, rows: np.ndarray, *v: np.ndarray) -> np.ndarray:
    """``[R, MEMORY, len(v)]``: ``M[rows, j] · v[i]`` for every slot ``j``, in one pass."""
    vs = np.stack(v, axis=2)  # [R, P, len(v)]
    if 2 * len(rows) > len(M):  # most rows: one pass over M, no gathered copy of it
        full = np.zeros((len(M), *vs.shape[1:]))
        full[rows] = vs
        return np.matmul(M, full)[rows]
    return np.matmul(M[rows], vs)


def _combine(M: np.ndarray, rows: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``[R, P]``: ``Σ_j c[:, j] M[rows, j]``."""
    if 2 * len(rows) > len(M):
        full = np.zeros((len(M), MEMORY))
        full[rows] = c
        return np.matmul(full[:, None, :], M)[rows, 0]
    return np.matmul(c[:, None, :], M[rows])[:, 0]


class PairMemory:
    """Rings of ``MEMORY`` pairs for ``problems`` problems of ``size`` parameters.

    Attributes:
        S, Y: ``[B, MEMORY, size]`` the pairs; ``SY``, ``YY``: ``[B, MEMORY, MEMORY]`` their
            inner products (``SY[i, j] = s_iᵀ y_j``); ``stamp``: ``[B, MEMORY]`` the number of
            the pair in each slot (``-1``: empty); ``count``: pairs stored; ``col``: pairs in use
            (the newest ``col``; 0 after a restart); ``gamma``: ``sᵀy/yᵀy`` of the newest pair.
    """

    FIELDS = ("S", "Y", "SY", "YY", "stamp", "count", "col", "gamma")

    def __init__(self, problems: int, size: int) -> None:
        self.S = np.zeros((problems, MEMORY, size))
        self.Y = np.zeros((problems, MEMORY, size))
        self.SY = np.zeros((problems, MEMORY, MEMORY))
        self.YY = np.zeros((problems, MEMORY, MEMORY))
        self.stamp = np.full((problems, MEMORY), -1)
        self.count = np.zeros(problems, dtype=int)
        self.col = np.zeros(problems, dtype=int)
        self.gamma = np.ones(problems)

    def __getitem__(self, keep: np.ndarray) -> PairMemory:
        out = PairMemory.__new__(PairMemory)
        for name in self.FIELDS:
            setattr(out, name, getattr(self, name)[keep])
        return out

    def __len__(self) -> int:
        return len(self.count)

    def reset(self, b: int) -> None:
        """Forget problem ``b``'s pairs (L-BFGS-B's restart)."""
        self.col[b], self.gamma[b] = 0, 1.0

    def store(self, rows: np.ndarray, s: np.ndarray, y: np.ndarray, sy: np.ndarray) -> None:
        """Add pair ``(s, y)`` ``[R, size]`` with ``sᵀy = sy`` ``[R]`` to problems ``rows``."""
        k = self.count[rows] % MEMORY  # the oldest slot once the ring is full
        self.S[rows, k], self.Y[rows, k], self.stamp[rows, k] = s, y, self.count[rows]
        with_y = _inner(self.Y, rows, s, y)
        s_y, y_y, y_s = with_y[..., 0], with_y[..., 1], _inner(self.S, rows, y)[..., 0]
        self.SY[rows, k], self.SY[rows, :, k], self.SY[rows, k, k] = s_y, y_s, sy
        self.YY[rows, k], self.YY[rows, :, k] = y_y, y_y
        self.gamma[rows] = sy / np.einsum("rp,rp->r", y, y)
        self.count[rows] += 1
        self.col[rows] = np.minimum(self.col[rows] + 1, MEMORY)

    def product(self, rows: np.ndarray, g: np.ndarray) -> np.ndarray:
        """``H g`` ``[R, size]`` for problems ``rows`` at gradients ``g`` ``[R, size]``."""
        n = len(rows)
        valid = self.stamp[rows] >= (self.count[rows] - self.col[rows])[:, None]
        order = np.argsort(np.where(valid, self.stamp[rows], np.iinfo(int).max), axis=1)
        pick = (np.arange(n)[:, None, None], order[:, :, None], order[:, None, :])
        used = np.take_along_axis(valid, order, 1)
        both = used[:, :, None] & used[:, None, :]
        SY = np.where(both, self.SY[rows][pick], 0.0)  # chronological order
        YY = np.where(both, self.YY[rows][pick], 0.0)
        a = np.take_along_axis(_inner(self.S, rows, g)[..., 0], order, 1) * used
        b = np.take_along_axis(_inner(self.Y, rows, g)[..., 0], order, 1) * used
        diag = np.where(used, np.einsum("rii->ri", SY), 1.0)
        upper = np.triu(SY, 1)
        u = np.zeros((n, MEMORY))
        for i in range(MEMORY - 1, -1, -1):  # R u = a
            u[:, i] = (a[:, i] - np.einsum("rj,rj->r", upper[:, i], u)) / diag[:, i]
        gamma = self.gamma[rows, None]
        w = (np.where(used, diag, 0.0) * u + gamma * np.einsum("rij,rj->ri", YY, u)) - gamma * b
        top = np.zeros((n, MEMORY))
        for i in range(MEMORY):  # Rᵀ top = w
            top[:, i] = (w[:, i] - np.einsum("rj,rj->r", upper[:, :, i], top)) / diag[:, i]
        in_slots = np.zeros((n, MEMORY)), np.zeros((n, MEMORY))
        np.put_along_axis(in_slots[0], order, top * used, 1)
        np.put_along_axis(in_slots[1], order, u * used, 1)
        return (
            gamma * g
            + _combine(self.S, rows, in_slots[0])
            - gamma * _combine(self.Y, rows, in_slots[1])
        )
