"""Step specs: which denoising steps to act on, and the one rule for step fractions
(:func:`fraction_steps`, the official FPE / Prompt-to-Prompt one):

    resolve_steps("first:0.8", 50)[-1]      # 39
    fraction_steps(0.8, 4)                  # [0, 1, 2]: the first int(0.8 * 4) = 3 steps
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from typing import Literal

StepSpec = int | str | Sequence[int] | None


def as_step_fraction(value: object) -> float:
    """A step fraction as a float in ``[0, 1]``; the integers 0 and 1 mean 0.0 and 1.0.

    Args:
        value: a real number (``0.8``, ``1``, a numpy float). A bool is not a fraction.

    Returns:
        The fraction as a float.

    Raises:
        ValueError: a bool, something that is not a real number, or a number outside [0, 1].

    Example:
        >>> as_step_fraction(1)
        1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"step fraction {value!r} is not a number: use a fraction in [0, 1], e.g. 0.8"
        )
    fraction = float(value)
    if not 0.0 <= fraction <= 1.0:  # also refuses NaN
        raise ValueError(
            f"step fraction {value!r} is not between 0 and 1: e.g. 0.8 edits the first 80% of steps"
        )
    return fraction


def fraction_steps(
    fraction: float, total: int, where: Literal["first", "last"] = "first"
) -> list[int]:
    """The steps a fraction of a run covers: the first (or last) ``int(fraction * total)``.

    This is the official rule of the FPE code and of Prompt-to-Prompt
    (``num_self_replace = int(num_steps * self_replace_steps)``): the count is floored, so at
    4 steps 0.8 covers 3 steps and at 7 steps 5. It is floored exactly as their code floors it
    (``int(0.29 * 100)`` is 28 in floating point, as there). Every step fraction in attnprobe
    (``step_fraction=``, ``RowEditor``, the ``first:f`` / ``last:f`` step specs) goes through it.

    Args:
        fraction: a step fraction (see :func:`as_step_fraction`; an int 1 means every step).
        total: the number of steps in the run.
        where: ``"first"`` (the edit window of FPE and P2P) or ``"last"``.

    Returns:
        Sorted step indices.

    Raises:
        ValueError: a bad fraction, a negative ``total`` or an unknown ``where``.

    Example:
        >>> fraction_steps(0.8, 50)[-1], len(fraction_steps(0.8, 7)), fraction_steps(1, 4)
        (39, 5, [0, 1, 2, 3])
    """
    f = as_step_fraction(fraction)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total={total!r}: the number of steps must be an integer >= 0")
    n = int(f * total)
    if where == "first":
        return list(range(n))
    if where == "last":
        return list(range(total - n, total))
    raise ValueError(f"where={where!r}: use 'first' or 'last'")


def resolve_steps(spec: StepSpec, total: int | None) -> list[int]:
    """Turn a step spec into sorted step indices.

    Args:
        spec: ``None``/``"all"``; an int (negative counts from the end); ``"0-9"``; ``"0,5,9"``;
            a list; ``"first:0.8"`` (the first ``int(0.8 * total)`` steps, as FPE's step
            fraction: see :func:`fraction_steps`) or ``"last:0.25"``.
        total: number of steps in the run, if known.

    Raises:
        ValueError: a step outside ``0..total-1``, a fraction outside [0, 1] or an unreadable
            spec.

    Example:
        >>> resolve_steps("first:0.8", 50)[-1]
        39
    """
    if total is None:
        total = 10**6 if spec in (None, "all") else None  # type: ignore[assignment]
    if spec is None or spec == "all":
        return list(range(total or 0))
    if isinstance(spec, int):
        return [_check(spec, total)]
    if isinstance(spec, str):
        s = spec.strip().lower()
        if m := re.fullmatch(r"(first|last):([0-9]*\.?[0-9]+)", s):
            if total is None:
                raise ValueError(f"steps {spec!r} needs the number of steps, unknown here")
            return fraction_steps(float(m[2]), total, "first" if m[1] == "first" else "last")
        if m := re.fullmatch(r"(-?\d+)-(-?\d+)", s):
            return list(range(_check(int(m[1]), total), _check(int(m[2]), total) + 1))
        if re.fullmatch(r"-?\d+(,-?\d+)*", s):
            return sorted({_check(int(x), total) for x in s.split(",")})
        raise ValueError(
            f"steps {spec!r}: use 'all', an index, '0-9', '0,5,9', 'first:0.8' or 'last:0.25'"
        )
    return sorted({_check(int(x), total) for x in spec})


def _check(step: int, total: int | None) -> int:
    if total is None:
        if step < 0:
            raise ValueError(f"step {step} counts from the end, but the number of steps is unknown")
        return step
    if step < 0:
        step += total
    if not 0 <= step < total:
        raise ValueError(f"step {step} does not exist: this run has steps 0-{total - 1}")
    return step
