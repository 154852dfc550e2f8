"""The paper's claims, checked against a run's numbers: one verdict and paragraph per claim.

Liu et al. (CVPR 2024) claim that (1) cross-attention maps carry semantic features of their
token, (2) self-attention maps carry less of them, and keep the layout instead, (3) replacing
self-attention keeps the source's structure, but in every layer the edit fails, (4) a middle
range of layers is the compromise, and (5) cross-attention maps need not be edited, and replacing
them can make an edit fail. :func:`check_claims` reads probe results and the sweep's summary and
says, for each, whether it held here, with the numbers.

    claims = check_claims({"colour": results}, summarise_rows(rows), selection_name="layers")
    for c in claims: print(c.verdict, c.title)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from probe.probing.probes import ProbeResults

HELD, NOT_HELD, INCONCLUSIVE = "held", "did not hold", "inconclusive"
MIDDLE = ("fpe", "paper")  # the presets that replace a middle range of layers
MIN_FOUND = 0.5  # below this share of edits with an object found, edit claims are inconclusive


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and what this run says about it.

    Attributes:
        key: short id (``cross_semantics``).
        title: the claim, in the paper's words.
        verdict: ``held``, ``did not hold`` or ``inconclusive``.
        text: a paragraph with the numbers.
    """

    key: str
    title: str
    verdict: str
    text: str


def _layer_means(results: ProbeResults, kind: str, column: str) -> dict[int, float]:
    layers, _, values = results.grid(kind, column)
    with warnings.catch_warnings():  # a control that was not run is all nan: stays nan
        warnings.simplefilter("ignore", RuntimeWarning)
        return {layer: float(np.nanmean(values[i])) for i, layer in enumerate(layers)}


def probe_summary(results: ProbeResults, kind: str) -> dict[str, float]:
    """Best layer (mean accuracy over steps) of ``kind`` and its controls, and the mean layer."""
    acc = _layer_means(results, kind, "acc_mean")
    if not acc:
        return {}
    best = max(acc, key=lambda k: acc[k])
    shuf = _layer_means(results, kind, "shuffled_acc")
    rand = _layer_means(results, kind, "random_model_acc")
    return {
        "best_layer": best, "best_acc": acc[best], "best_shuffled": shuf[best],
        "best_random": rand.get(best, math.nan), "mean_acc": float(np.mean(list(acc.values()))),
        "chance": results.rows[0].chance,
    }  # fmt: skip


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def carries_class(s: Mapping[str, float]) -> bool:
    """The best layer is at least 0.2 above both the shuffled-label control and chance."""
    return s["best_acc"] - max(s["best_shuffled"], s["chance"]) >= 0.2


def claim_cross_semantics(probes: Mapping[str, ProbeResults]) -> Claim:
    """Claim 1: a probe reads the token's class from its cross-attention map."""
    title = "Cross-attention maps carry semantic features of their token"
    parts, verdicts = [], []
    for label, results in probes.items():
        s = probe_summary(results, "cross")
        if not s:
            continue
        beats_random = math.isnan(s["best_random"]) or s["best_acc"] >= s["best_random"] + 0.1
        verdicts.append(carries_class(s) and beats_random)
        parts.append(
            f"{label}: the best cross-attention layer (L{s['best_layer']}) reaches accuracy "
            f"{_fmt(s['best_acc'])} averaged over steps, against {_fmt(s['best_shuffled'])} "
            f"with shuffled labels, {_fmt(s['best_random'])} on a randomly initialised model "
            f"and chance {_fmt(s['chance'])}"
        )
    if not verdicts:
        return Claim("cross_semantics", title, INCONCLUSIVE, "No cross-attention probe was run.")
    verdict = HELD if all(verdicts) else NOT_HELD if not any(verdicts) else INCONCLUSIVE
    rule = (" Held means at least 0.2 above the shuffled-label control and chance, and 0.1 "
            "above the random model where it was run.")  # fmt: skip
    return Claim("cross_semantics", title, verdict, "; ".join(parts) + "." + rule)


def claim_self_less_semantic(probes: Mapping[str, ProbeResults]) -> Claim:
    """Claim 2: self-attention maps hold less of the token's class than cross-attention."""
    title = "Self-attention maps carry less of the token's semantics than cross-attention maps"
    parts: list[str] = []
    verdicts: list[bool | None] = []
    for label, results in probes.items():
        c, s = probe_summary(results, "cross"), probe_summary(results, "self")
        if not c or not s:
            continue
        if not carries_class(c):
            parts.append(f"{label}: cross-attention itself does not carry the class here (best "
                         f"layer {_fmt(c['best_acc'])}, chance {_fmt(c['chance'])}), so there is "
                         "nothing to compare against")  # fmt: skip
            verdicts.append(None)
            continue
        verdicts.append(s["mean_acc"] < c["mean_acc"])
        parts.append(
            f"{label}: mean accuracy over layers and steps {_fmt(s['mean_acc'])} from "
            f"self-attention vs {_fmt(c['mean_acc'])} from cross-attention (chance "
            f"{_fmt(c['chance'])})"
        )
    if not verdicts:
        return Claim("self_layout", title, INCONCLUSIVE, "Self and cross were not both probed.")
    verdict = (
        HELD if all(v is True for v in verdicts)
        else NOT_HELD if all(v is False for v in verdicts) else INCONCLUSIVE
    )  # fmt: skip
    return Claim("self_layout", title, verdict, "; ".join(parts) + ".")


def _pick(summary: Sequence[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any] | None:
    return next((s for s in summary if s["kind"] == kind and s["range"] == name), None)


def _edit_numbers(s: Mapping[str, Any] | None) -> str:
    if s is None:
        return "not run"
    structure = f"structure IoU {_fmt(s['iou'])}"
    if math.isnan(float(s["iou"])) and not math.isnan(_structure(s)):  # the CLIP scorer
        structure = f"DINO structure distance {_fmt(s['shape_distance'])}"
    return f"success {_fmt(s['success'])}, {structure} (n={int(s['n'])})"


def _structure(s: Mapping[str, Any]) -> float:
    """Higher = more of the source's structure kept: the toy judges' IoU, else minus the DINO
    distance (the CLIP scorer has no masks); NaN when neither was measured (CLIP, no DINO)."""
    iou = float(s["iou"])
    return iou if not math.isnan(iou) else -float(s.get("shape_distance", math.nan))


def _no_structure(key: str, title: str, *rows: Mapping[str, Any]) -> Claim | None:
    if any(math.isnan(_structure(r)) for r in rows):
        return Claim(key, title, INCONCLUSIVE, "No structure was measured (CLIP without DINO: "
                     "pass --dino DIR).")  # fmt: skip
    return None


def _found_enough(summary: Sequence[Mapping[str, Any]]) -> tuple[bool, float]:
    found = [float(s["found"]) for s in summary if not math.isnan(float(s["found"]))]
    share = float(np.mean(found)) if found else 0.0
    return share >= MIN_FOUND, share


def _inconclusive_edits(key: str, title: str, share: float) -> Claim:
    return Claim(key, title, INCONCLUSIVE,
                 f"The judges found an object in only {share:.0%} of the edits, too few to "
                 "score them (a model that does not draw the toy world, e.g. 'tiny').")  # fmt: skip


def claim_self_structure(summary: Sequence[Mapping[str, Any]]) -> Claim:
    """Claim 3: self-attention replacement keeps structure; in every layer the edit fails."""
    title = ("Replacing self-attention keeps the source's structure; replacing it in every layer "
             "makes the edit fail")  # fmt: skip
    ok, share = _found_enough(summary)
    none, every = _pick(summary, "self", "none"), _pick(summary, "self", "all")
    if not ok or none is None or every is None:
        return (
            _inconclusive_edits("self_structure", title, share)
            if not ok
            else Claim(
                "self_structure", title, INCONCLUSIVE, "The sweep lacks the 'none' or 'all' range."
            )
        )
    if (missing := _no_structure("self_structure", title, none, every)) is not None:
        return missing
    keeps = _structure(every) > _structure(none)
    fails = every["success"] < none["success"]
    verdict = HELD if keeps and fails else NOT_HELD if not (keeps or fails) else INCONCLUSIVE
    text = (f"No replacement: {_edit_numbers(none)}. Self-attention replaced in all layers: "
            f"{_edit_numbers(every)}. Structure kept better: {'yes' if keeps else 'no'}; edit "
            f"fails more often: {'yes' if fails else 'no'}.")  # fmt: skip
    return Claim("self_structure", title, verdict, text)


def claim_middle_range(summary: Sequence[Mapping[str, Any]], selection: str | None) -> Claim:
    """Claim 4: a middle range beats both extremes (the success of 'all', the IoU of 'none')."""
    title = "A middle range of layers is the compromise between structure and edit"
    ok, share = _found_enough(summary)
    none, every = _pick(summary, "self", "none"), _pick(summary, "self", "all")
    names = [*MIDDLE, *([selection] if selection else [])]
    middles = {n: m for n in names if (m := _pick(summary, "self", n)) is not None}
    if not ok:
        return _inconclusive_edits("middle_range", title, share)
    if none is None or every is None or not middles:
        return Claim("middle_range", title, INCONCLUSIVE, "The sweep lacks the ranges to compare.")
    if (missing := _no_structure("middle_range", title, none, *middles.values())) is not None:
        return missing
    wins = [n for n, m in middles.items()
            if m["success"] > every["success"] and _structure(m) > _structure(none)]  # fmt: skip
    shown = "; ".join(f"{n}: {_edit_numbers(m)}" for n, m in middles.items())
    text = (f"Extremes: none {_edit_numbers(none)}; all {_edit_numbers(every)}. Middle ranges: "
            f"{shown}. Beating 'all' on success and 'none' on structure: "
            f"{', '.join(wins) if wins else 'none of them'}.")  # fmt: skip
    return Claim("middle_range", title, HELD if wins else NOT_HELD, text)


def claim_cross_optional(summary: Sequence[Mapping[str, Any]]) -> Claim:
    """Claim 5: replacing cross-attention does worse on success than FPE's self replacement."""
    title = "Editing cross-attention maps is optional; replacing them can make the edit fail"
    ok, share = _found_enough(summary)
    fpe, cross = _pick(summary, "self", "fpe"), _pick(summary, "cross", "all")
    if not ok:
        return _inconclusive_edits("cross_optional", title, share)
    if fpe is None or cross is None:
        missing = "cross-attention 'all' (see the notes)" if cross is None else "self 'fpe'"
        return Claim("cross_optional", title, INCONCLUSIVE, f"The sweep has no {missing} edits.")
    held = cross["success"] < fpe["success"]
    text = (f"FPE (self-attention, fpe layers, cross untouched): {_edit_numbers(fpe)}. "
            f"Cross-attention replaced in all layers: {_edit_numbers(cross)}.")  # fmt: skip
    shifts = [float(s.get("source_shift", math.nan)) for s in (fpe, cross)]
    if not any(math.isnan(x) for x in shifts):
        text += (f" Colour moved toward the source's (0 = the target colour, 1 = the source's): "
                 f"FPE {shifts[0]:.3f}, cross {shifts[1]:.3f}.")  # fmt: skip
    return Claim("cross_optional", title, HELD if held else NOT_HELD, text)


def check_claims(
    probes: Mapping[str, ProbeResults],
    summary: Sequence[Mapping[str, Any]],
    selection: str | None = None,
    animal_summary: Sequence[Mapping[str, Any]] | None = None,
    animal_selection: str | None = None,
) -> list[Claim]:
    """Every claim's verdict.

    Args:
        probes: label → probe results (``colour``, ``animal``).
        summary: :func:`editing.sweep.table.summarise_rows` of the colour sweep.
        selection: the sweep's range name of the probe selection (a middle-range candidate).
        animal_summary: the same for a sweep of animal edits: claims 3-5 are then checked on
            each edit set, one verdict per set (titles end "(colour edits)", "(animal edits)").
        animal_selection: the animal sweep's range name of its own probe selection (DiTs:
            ``selection_animal``), a middle-range candidate of the animal edits.

    Returns:
        Five :class:`Claim` objects, in the order of the module docstring; eight with
        ``animal_summary`` (claims 3-5 of the animal edits last).

    Example:
        >>> [c.verdict for c in check_claims({"colour": results}, summary)]
        ['held', 'held', 'held', 'held', 'did not hold']
    """
    edits = [
        claim_self_structure(summary),
        claim_middle_range(summary, selection),
        claim_cross_optional(summary),
    ]
    claims = [claim_cross_semantics(probes), claim_self_less_semantic(probes), *edits]
    if not animal_summary:
        return claims
    animal = [
        claim_self_structure(animal_summary),
        claim_middle_range(animal_summary, animal_selection),
        claim_cross_optional(animal_summary),
    ]
    return [
        *claims[:2],
        *(_for_set(c, "colour") for c in edits),
        *(_for_set(c, "animal") for c in animal),
    ]


def _for_set(claim: Claim, name: str) -> Claim:
    return replace(claim, key=f"{claim.key}_{name}", title=f"{claim.title} ({name} edits)")
