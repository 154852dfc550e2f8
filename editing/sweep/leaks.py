"""Layers for FPE from a measured leak: a one-layer sweep says which layers carry the source over.

The probes (:mod:`probe.probing.selection`) *predict* which layers' self-attention carries an
attribute.
A sweep with one layer per range (``attnprobe sweep --kinds self --ranges none 0 1 ... 15
--step-fractions 1.0``) *measures* it: a layer leaks when replacing only its self-attention moves
the edit toward the source (mean ``source_shift`` above the plain target's by more than
``shift_tolerance``) or makes edits fail (success below the plain target's by more than
``success_tolerance``). :func:`select_from_sweep` takes a base range (``fpe`` by default) and
leaves out the layers that leak.

    rows = read_rows("runs/sweep_layers/sweep.csv")
    sel = select_from_sweep(rows, base="fpe")       # e.g. fpe 2-12 without 11 and 12
    sel.save("layers.json")                         # any --layers accepts it
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from editing.scoring.toy_metrics import summarise
from probe.attention.layer_info import LayerInfo
from probe.attention.layers import resolve_layers
from probe.probing.selection import LayerSelection


def layer_leaks(
    rows: Iterable[dict[str, Any]],
    shift_tolerance: float = 0.01,
    success_tolerance: float = 0.02,
) -> dict[int, dict[str, Any]]:
    """Per single-layer range of a self-attention sweep: its shift and success against the
    plain target, and whether it leaks.

    Raises:
        ValueError: no ``none`` range, or no single-layer range of kind ``self``.
    """
    rows = [r for r in rows if r["kind"] == "self"]
    plain = [r for r in rows if r["range"] == "none"]
    single = sorted({int(r["range"]) for r in rows if str(r["range"]).isdigit()})
    if not plain or not single:
        raise ValueError(
            "a leak needs a self-attention sweep with the 'none' range and one layer per range: "
            "attnprobe sweep --kinds self --ranges none 0 1 2 ... --step-fractions 1.0"
        )
    base = summarise(plain)
    out: dict[int, dict[str, Any]] = {}
    for layer in single:
        means = summarise([r for r in rows if r["range"] == str(layer)])
        excess = means["source_shift"] - base["source_shift"]
        drop = base["success"] - means["success"]
        leaks = bool((not math.isnan(excess) and excess > shift_tolerance)
                     or drop > success_tolerance)  # fmt: skip
        out[layer] = {"shift_excess": _round(excess), "success_drop": _round(drop), "leaks": leaks}
    return out


def select_from_sweep(
    rows: Iterable[dict[str, Any]],
    base: str | Sequence[int] = "fpe",
    step_fraction: float = 0.8,
    shift_tolerance: float = 0.01,
    success_tolerance: float = 0.02,
    model: str = "",
    table: Sequence[LayerInfo] | None = None,
) -> LayerSelection:
    """The layers of ``base`` whose one-layer replacement does not leak.

    Args:
        rows: rows of a sweep (``read_rows``) holding ``none`` and single-layer ranges of kind
            ``self``.
        base: a range name in the sweep (its resolved layers), any layer spec when ``table``
            is given (``fpe``, ``paper``, ``res<max``), a spec such as ``"2-12"`` or
            ``"2,3,5"``, or a list of layer indices.
        step_fraction: the step fraction the selection is for.
        shift_tolerance, success_tolerance: how far above the plain target's shift, or below
            its success, a layer may be before it counts as leaking.
        model: recorded in the selection.
        table: the sweep's layer table (its ``layer_table.json``), to resolve ``base`` specs
            the sweep did not run; kept in the selection.

    Raises:
        ValueError: the sweep lacks the ranges, ``base`` is unknown, or every layer of it leaks.
    """
    rows = list(rows)
    leaks = layer_leaks(rows, shift_tolerance, success_tolerance)
    base_layers = _base_layers(rows, base, table)
    untested = [i for i in base_layers if i not in leaks]
    if untested:
        raise ValueError(
            f"layers {untested} of the base range were not swept one by one: add them to "
            "--ranges of the sweep"
        )
    kept = [i for i in base_layers if not leaks[i]["leaks"]]
    if not kept:
        raise ValueError(f"every layer of the base range {base_layers} leaks: nothing to keep")
    evidence = {
        "rule": "measured-leak",
        "base": base if isinstance(base, str) else list(base),
        "base_layers": base_layers,
        "left_out": [i for i in base_layers if leaks[i]["leaks"]],
        "shift_tolerance": shift_tolerance,
        "success_tolerance": success_tolerance,
        "per_layer": {str(i): v for i, v in leaks.items()},
    }
    return LayerSelection(kept, step_fraction, "measured-leak", evidence, model, list(table or []))


def _base_layers(
    rows: list[dict[str, Any]], base: str | Sequence[int], table: Sequence[LayerInfo] | None
) -> list[int]:
    if not isinstance(base, str):
        return sorted(int(i) for i in base)
    named = [r for r in rows if r["range"] == base]
    if named:
        layers = str(named[0]["layers"])
        return [] if layers == "none" else [int(i) for i in layers.split(",")]
    if table is not None:
        return sorted(resolve_layers(list(table), base))
    spelled: list[int] = []
    for part in base.split(","):
        bounds = part.strip().split("-")
        if not all(b.isdigit() for b in bounds) or len(bounds) > 2:
            raise ValueError(
                f"base {base!r} is neither a range of this sweep nor a spec such as 2-12 or "
                "2,3,5: add it to the sweep's --ranges or spell out its layers"
            )
        lo, hi = int(bounds[0]), int(bounds[-1])
        spelled += list(range(lo, hi + 1))
    return sorted(set(spelled))


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 4)
