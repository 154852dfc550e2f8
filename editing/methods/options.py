"""What an edit method's option is: :class:`MethodOption`, and the converters of its values.

Each converter takes a Python value or a command-line string and returns the value the method's
factory takes, or raises ``ValueError`` naming the bad value and what to give instead:

    integer("start_step")("4")        # 4
    choice("mode", ("a", "b"))("c")   # ValueError: mode='c': use one of a, b

The methods themselves are registered in :mod:`editing.methods.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editing.methods.p2p_options import parse_unit, parse_words
from probe.attention.steps import as_step_fraction


@dataclass(frozen=True)
class MethodOption:
    """One option of an edit method.

    Attributes:
        name: the Python keyword (``self_steps``); the CLI flag is ``--self-steps``.
        convert: turns a Python value or a CLI string into the value the factory takes; raises
            ``ValueError`` naming the bad value.
        default: attnprobe's default.
        help: one line for ``--help`` and the docs.
        authors_default: the published code's default and where it comes from, if any.
        choices: the allowed values (shown by ``--help``), if a fixed set.
        repeatable: the CLI flag may repeat; ``convert`` receives the list of strings.
        metavar: how ``--help`` writes the value.
    """

    name: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    authors_default: str | None = None
    choices: tuple[str, ...] | None = None
    repeatable: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--start-step``."""
        return cli_flag(self.name)


def cli_flag(name: str) -> str:
    """The command-line flag of an option name: ``start_step`` -> ``--start-step``."""
    return "--" + name.replace("_", "-")


# ---- value converters: each accepts a Python value or a CLI string -------------------------


def integer(name: str, minimum: int = 0) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name}={value!r}: use an integer >= {minimum}")
        return value

    return convert


def positive(name: str, example: str = "1.5") -> Callable[[Any], float]:
    """A positive number (a guidance scale), from a number or a string."""

    def convert(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} is not a number: use e.g. {example}") from None
        if isinstance(value, bool) or not number > 0 or number == float("inf"):
            raise ValueError(f"{name}={value!r}: use a positive number, e.g. {example}")
        return number

    return convert


def fraction(name: str) -> Callable[[Any], float]:
    def convert(value: Any) -> float:
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise ValueError(f"{name}={value!r} is not a number: use e.g. 0.4") from None
        return as_step_fraction(number)

    return convert


def words(name: str) -> Callable[[Any], list[str]]:
    return lambda value: parse_words(value, name)


def unit(name: str) -> Callable[[Any], float]:
    return lambda value: parse_unit(value, name)


def text(name: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name}={value!r}: give a layer spec, e.g. 'res==max/4' or '4-9'")
        return value.strip()

    return convert


def optional_word(name: str) -> Callable[[Any], str | None]:
    def convert(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or " " in value.strip():
            raise ValueError(f"{name}={value!r}: give one word of the prompt, e.g. 'car'")
        return value.strip()

    return convert


def image_path(name: str) -> Callable[[Any], str | None]:
    def convert(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, (str, Path)) or not Path(value).is_file():
            raise ValueError(
                f"{name}={str(value)!r} is not a file: give a mask PNG (white = object)"
            )
        return str(value)

    return convert


def choice(name: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{name}={value!r}: use one of {', '.join(choices)}")
        return str(value)

    return convert
