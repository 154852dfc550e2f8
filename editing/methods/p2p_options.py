"""Prompt-to-Prompt's option values, read from Python values or command-line strings (no torch:
the registry imports this to build ``attnprobe edit --help``).

    parse_cross_steps("0.8")                      # 0.8: the first int(0.8·(N+1)) of N+1 rows
    parse_cross_steps("0.2,0.8")                  # (0.2, 0.8): from row int(0.2·(N+1)) on
    parse_cross_steps("default_=1.0,lion=0.4")    # {'default_': 1.0, 'lion': 0.4}
    parse_words("car,red")                        # ['car', 'red']
    parse_weights("car=2,red=0.5")                # {'car': 2.0, 'red': 0.5}
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from probe.attention.steps import as_step_fraction

Window = float | tuple[float, float]
CrossSteps = Window | dict[str, Window]

DEFAULT_KEY = "default_"
"""The key of a per-word schedule that covers every token (the authors' spelling)."""


def parse_window(value: Any, name: str = "cross_steps") -> Window:
    """One replace window: a fraction ``f`` (= ``(0, f)``) or a ``(start, end)`` pair.

    Args:
        value: a number, a pair of numbers, or a string ``"0.8"``, ``"0.2,0.8"``, ``"0.2:0.8"``.
        name: the option's name, for errors.

    Returns:
        A float, or a tuple ``(start, end)`` with ``0 <= start <= end <= 1``.

    Raises:
        ValueError: not a number or a pair of numbers in [0, 1], or ``start > end``.
    """
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace(":", ",").split(",")]
        try:
            numbers_ = [float(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"{name}={value!r}: use a fraction (0.8), a pair 0.2,0.8 or 0.2:0.8"
            ) from None
        value = numbers_[0] if len(numbers_) == 1 else tuple(numbers_)
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{name}={value!r}: a window is (start, end), two fractions")
        start, end = (_fraction(v, name) for v in value)
        if start > end:
            raise ValueError(f"{name}={value!r}: start {start:g} is after end {end:g}")
        return (start, end)
    return _fraction(value, name)


def parse_cross_steps(value: Any) -> CrossSteps:
    """Prompt-to-Prompt's ``cross_replace_steps``: one window for every token, or per word.

    Args:
        value: a window (see :func:`parse_window`); a dict ``{"default_": 1.0, "lion": 0.4}``
            (values are windows; without ``default_`` every other token is replaced at every
            step, as the authors' code does); or the string form ``"default_=1.0,lion=0.4"``
            (a pair value as ``lion=0.2:0.6``).

    Returns:
        A float, a ``(start, end)`` tuple, or a dict word → window.

    Raises:
        ValueError: a bad window, an empty word, or a word given twice.

    Example:
        >>> parse_cross_steps("default_=1,lion=0.2:0.6")
        {'default_': 1.0, 'lion': (0.2, 0.6)}
    """
    if isinstance(value, str) and "=" in value:
        items = [p.partition("=") for p in value.split(",") if p.strip()]
        if any(not sep for _, sep, _ in items):
            raise ValueError(
                f"cross_steps={value!r}: write every part as word=window, e.g. "
                "default_=1.0,lion=0.4"
            )
        pairs = [(word.strip(), window) for word, _, window in items]
        words = [w for w, _ in pairs]
        repeated = sorted({w for w in words if words.count(w) > 1})
        if repeated:
            raise ValueError(f"cross_steps={value!r}: {repeated[0]!r} is given twice")
        value = dict(pairs)
    if isinstance(value, Mapping):
        out: dict[str, Window] = {}
        for word, window in value.items():
            if not isinstance(word, str) or not word.strip():
                raise ValueError(f"cross_steps: {word!r} is not a word (use e.g. 'lion')")
            out[word.strip()] = parse_window(window, f"cross_steps[{word!r}]")
        return out
    return parse_window(value)


def parse_words(value: Any, name: str = "blend") -> list[str]:
    """Words from ``"car"``, ``"car,red"`` or a list of either (order kept, repeats dropped).

    Raises:
        ValueError: no word at all, or something that is not a string.
    """
    parts = list(value) if isinstance(value, list | tuple) else [value]
    words: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise ValueError(f"{name}={part!r}: give words, e.g. car or car,red")
        words += [w.strip() for w in part.split(",") if w.strip() and w.strip() not in words]
    if not words:
        raise ValueError(f"{name}={value!r} names no word: give one, e.g. car")
    return words


def parse_unit(value: Any, name: str) -> float:
    """A number in [0, 1] (a threshold), from a number or a string.

    Raises:
        ValueError: not a number, or outside [0, 1].
    """
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number: use e.g. 0.3") from None
    if isinstance(number, bool) or not isinstance(number, numbers.Real):
        raise ValueError(f"{name}={value!r} is not a number: use e.g. 0.3")
    if not 0.0 <= float(number) <= 1.0:  # also refuses NaN
        raise ValueError(f"{name}={value!r}: use a number between 0 and 1, e.g. 0.3")
    return float(number)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a number: use e.g. 0.8") from None
    try:
        return as_step_fraction(value)
    except ValueError:
        raise ValueError(
            f"{name}={value!r}: use a fraction of the steps between 0 and 1, e.g. 0.8"
        ) from None


def parse_weights(value: Any) -> dict[str, float]:
    """Word → factor from ``{"car": 2.0}``, ``"car=2,red=0.5"`` or a list of either.

    Raises:
        ValueError: a part that is not ``word=number``, or a word given twice with two factors.

    Example:
        >>> parse_weights(["car=2", "red=0.5,car=2"])
        {'car': 2.0, 'red': 0.5}
    """
    parts: list[Any] = list(value) if isinstance(value, list | tuple) else [value]
    out: dict[str, float] = {}
    for part in parts:
        items = _weight_items(part)
        for word, factor in items:
            if word in out and out[word] != factor:
                raise ValueError(f"weights: {word!r} given twice ({out[word]:g} and {factor:g})")
            out[word] = factor
    return out


def _weight_items(part: Any) -> list[tuple[str, float]]:
    if isinstance(part, Mapping):
        pairs = list(part.items())
    elif isinstance(part, str):
        pairs = [p.partition("=")[::2] for p in part.split(",") if p.strip()]
    else:
        raise ValueError(f"weights {part!r}: use a dict word -> factor or 'car=2,red=0.5'")
    items = []
    for word, factor in pairs:
        try:
            number = float(factor)
        except (TypeError, ValueError):
            number = float("nan")
        word = str(word).strip()
        if not word or number != number or isinstance(factor, bool):
            raise ValueError(f"weights: {word}={factor!r} is not word=number, e.g. car=2.0")
        items.append((word, number))
    return items
