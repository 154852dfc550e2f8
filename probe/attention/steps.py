"""Step specs: which denoising steps to act on."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

StepSpec = int | str | Sequence[int] | None


def resolve_steps(spec: StepSpec, total: int | None) -> list[int]:
    """Turn a step spec into sorted step indices.

    Args:
        spec: ``None``/``"all"``; an int (negative counts from the end); ``"0-9"``; ``"0,5,9"``;
            a list; ``"first:0.8"`` (the first 80% of steps, as FPE's step fraction) or
            ``"last:0.25"``.
        total: number of steps in the run, if known.

    Raises:
        ValueError: a step outside ``0..total-1`` or an unreadable spec.

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
        if m := re.fullmatch(r"(first|last):([0-9.]+)", s):
            if total is None:
                raise ValueError(f"steps {spec!r} needs the number of steps, unknown here")
            n = math.ceil(float(m[2]) * total - 1e-9)
            return list(range(n)) if m[1] == "first" else list(range(total - n, total))
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


def parse_int_ranges(spec: str) -> list[int]:
    """Integers from ``"0-31"``, ``"1,5,9"`` or a mix (``"0-3,10"``), in the given order.

    Raises:
        ValueError: a part is not an integer or a range ``a-b`` with ``a <= b``.
    """
    out: list[int] = []
    for part in str(spec).replace(" ", "").split(","):
        if not part:
            continue
        a, sep, b = part.partition("-")
        try:
            lo, hi = (int(a), int(b)) if sep else (int(a), int(a))
        except ValueError:
            raise ValueError(
                f"{part!r} in {spec!r} is not an integer or a range like 0-31"
            ) from None
        if hi < lo:
            raise ValueError(f"range {part!r} runs backwards; write {hi}-{lo}")
        out.extend(range(lo, hi + 1))
    if not out:
        raise ValueError(f"no integers in {spec!r}; write e.g. 0-31 or 1,5,9")
    return out
