"""Stable Flow's ablation inside ``attnprobe reproduce`` on a DiT: the source's image keys and
values injected (method ``stable-flow``) in the vital blocks, in every block, in the non-vital
blocks and nowhere, on the run's colour and animal edits, scored by the sweep's judges.

Stable Flow (Avrahami et al., CVPR 2025) reports on FLUX.1-dev: injecting in every block keeps
the image and the edit fails (CLIP direction 0.00); in the vital blocks the edit goes through
and the image is kept (0.14, image similarity 0.92); in the non-vital blocks it goes through and
less of the image is kept (0.09, 0.72): the DiT twin of the FPE paper's "self-attention replaced
in every layer makes the edit fail". The stage writes ``inject/`` and ``inject_animal/`` (a
sweep of kind ``inject`` over :func:`~editing.sweep.ranges.vital_ranges`, every step), or
``inject/skipped.json`` with the reason (a UNet; a DiT without measured or published vital
blocks); :func:`injection_claims` decides the two claims per edit set and
:func:`injection_html` is the report's section.

    run_injection(pipe, Path("runs/flux"), colour_pairs, animal_pairs, sweep_args)
    injection_claims(Path("runs/flux"))   # [Claim(key="inject_all_fails_colour", ...), ...]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from editing.experiment.claims import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    Claim,
    _edit_numbers,
    _found_enough,
    _pick,
)
from editing.experiment.claims import _structure as structure

FOLDERS = {"colour": "inject", "animal": "inject_animal"}
SKIPPED = "skipped.json"
STEP_FRACTION = 1.0  # Stable Flow injects in every step
UNET_REASON = (
    "Stable Flow's K/V injection acts on a DiT's joint attention (SD3, Flux); this model is a "
    "UNet, whose layer-range sweep above is the FPE paper's own ablation"
)


def run_injection(
    pipe: Any, out: Path, colours: Sequence[Any], animals: Sequence[Any], common: dict[str, Any]
) -> dict[str, list[int]]:
    """Sweep kind ``inject`` over none / vital / non-vital / all on each edit set.

    Args:
        pipe: the run's model.
        out: the run's folder (``inject/``, ``inject_animal/`` are written there).
        colours, animals: the sweep's edit pairs (an empty set is skipped).
        common: :func:`editing.sweep.run.sweep`'s keywords shared by the run's sweeps (seeds,
            steps, model name, scorer or pool); ``out`` and ``step_fractions`` are set here.

    Returns:
        ``{"vital": [...], "non-vital": [...]}``, or ``{}`` when skipped (the reason in
        ``inject/skipped.json``).
    """
    from editing.sweep.ranges import VITAL_ABLATION, vital_blocks, vital_ranges
    from editing.sweep.run import sweep
    from probe.families import family_of
    from probe.models import run_layer_table

    folder = out / FOLDERS["colour"]
    folder.mkdir(parents=True, exist_ok=True)
    table = run_layer_table(pipe)
    try:
        if not family_of(pipe).joint_attention:
            raise ValueError(UNET_REASON)
        ranges = vital_ranges(vital_blocks(pipe, table), len(table))
    except ValueError as err:
        (folder / SKIPPED).write_text(json.dumps({"reason": str(err)}, indent=2) + "\n")
        return {}
    args = {**common, "step_fractions": STEP_FRACTION}
    for name, pairs in (("colour", colours), ("animal", animals)):
        if pairs:
            args["out"] = out / FOLDERS[name]
            sweep(pipe, list(pairs), [VITAL_ABLATION], kinds=("inject",), **args)
    return {r.name: list(r.spec) for r in ranges if r.group == "vital"}  # type: ignore[arg-type]


def read_summary(out: Path, edits: str) -> list[dict[str, Any]]:
    """The ``inject`` sweep's summary rows of one edit set (``colour``, ``animal``), NaN for
    missing numbers; ``[]`` when it was not run."""
    path = out / FOLDERS[edits] / "summary.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    return [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]


def skipped_reason(out: Path) -> str | None:
    """Why the stage ran no injection (``None``: it ran, or the run predates it)."""
    path = out / FOLDERS["colour"] / SKIPPED
    return str(json.loads(path.read_text())["reason"]) if path.is_file() else None


def claim_all_fails(summary: Sequence[Mapping[str, Any]]) -> Claim:
    """Injecting in every block makes the edit fail where the vital blocks do not: held when
    its success is below both no injection's and the vital blocks'; inconclusive when it is
    below no injection's only (the vital blocks fail as often: the ablation separates
    nothing); did not hold when it is not below no injection's."""
    key, title = (
        "inject_all_fails",
        (
            "Injecting the source's attention keys and values in every block makes the edit fail "
            "(Stable Flow's ablation)"
        ),
    )
    rows = {n: _pick(summary, "inject", n) for n in ("none", "vital", "all")}
    if (missing := _missing(key, title, summary, rows)) is not None:
        return missing
    none, vital, every = rows["none"], rows["vital"], rows["all"]
    assert none is not None and vital is not None and every is not None
    fails = every["success"] < none["success"]
    apart = every["success"] < vital["success"]
    text = (f"No injection: {_edit_numbers(none)}. Vital blocks: {_edit_numbers(vital)}. All "
            f"blocks: {_edit_numbers(every)}. Success below no injection's: "
            f"{'yes' if fails else 'no'}; below the vital blocks': "
            f"{'yes' if apart else 'no'}.")  # fmt: skip
    verdict = HELD if fails and apart else INCONCLUSIVE if fails else NOT_HELD
    return Claim(key, title, verdict, text)


def claim_vital_compromise(summary: Sequence[Mapping[str, Any]]) -> Claim:
    """The vital blocks: success above all blocks', structure above no injection's and the
    non-vital blocks'."""
    key, title = (
        "inject_vital",
        (
            "Injecting in the vital blocks edits more often than in all blocks and keeps more "
            "of the source's structure than no injection or the non-vital blocks (Stable Flow's "
            "ablation)"
        ),
    )
    rows = {n: _pick(summary, "inject", n) for n in ("none", "vital", "non-vital", "all")}
    if (missing := _missing(key, title, summary, rows)) is not None:
        return missing
    none, vital, rest, every = (rows[n] for n in ("none", "vital", "non-vital", "all"))
    assert none is not None and vital is not None and rest is not None and every is not None
    parts = {
        "success above all blocks'": vital["success"] > every["success"],
        "structure above no injection's": structure(vital) > structure(none),
        "structure above the non-vital blocks'": structure(vital) > structure(rest),
    }
    text = (f"Vital blocks: {_edit_numbers(vital)}. Non-vital blocks: {_edit_numbers(rest)}. "
            f"No injection: {_edit_numbers(none)}. All blocks: {_edit_numbers(every)}. "
            + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in parts.items())
            + ".")  # fmt: skip
    held = parts.values()
    verdict = HELD if all(held) else NOT_HELD if not any(held) else INCONCLUSIVE
    return Claim(key, title, verdict, text)


def _missing(
    key: str, title: str, summary: Sequence[Mapping[str, Any]], rows: Mapping[str, Any]
) -> Claim | None:
    ok, share = _found_enough(summary)
    if not ok:
        return Claim(key, title, INCONCLUSIVE, f"The judges found an object in only "
                     f"{share:.0%} of the injected edits, too few to score them.")  # fmt: skip
    lacking = [n for n, r in rows.items() if r is None]
    if lacking:
        return Claim(key, title, INCONCLUSIVE, f"The ablation lacks {', '.join(lacking)}.")
    return None


def injection_claims(out: Path) -> list[Claim]:
    """The two claims of Stable Flow's ablation per edit set that was injected (keys end
    ``_colour``, ``_animal``; titles "(colour edits)", "(animal edits)"); ``[]`` when the run
    has no injection (a UNet, or no vital blocks)."""
    from dataclasses import replace

    claims = []
    for edits in FOLDERS:
        summary = read_summary(out, edits)
        if not summary:
            continue
        for claim in (claim_all_fails(summary), claim_vital_compromise(summary)):
            claims.append(replace(claim, key=f"{claim.key}_{edits}",
                                  title=f"{claim.title} ({edits} edits)"))  # fmt: skip
    return claims


def injection_html(out: Path) -> str:
    """The report's section: the vital blocks, one table per edit set, or why not run."""
    from editing.experiment.html_parts import esc, figure_html, table_html

    reason = skipped_reason(out)
    if reason is not None:
        return f"<p>Not run: {esc(reason)}.</p>"
    parts = [
        "<p>Stable Flow's ablation (Avrahami et al., CVPR 2025): each target row attends with "
        "its own queries over the source's image-token keys and values (method "
        "<code>stable-flow</code>, conditional rows, every step) in the vital blocks (the "
        "model folder's <code>vital_blocks</code>, measured by <code>attnprobe vital</code>; "
        "FLUX.1-dev's published set otherwise), in the other blocks, in all, or nowhere. "
        "On FLUX.1-dev the authors report: all blocks keep the image and the edit fails; the "
        "vital blocks edit and keep the image; the non-vital blocks edit and keep less.</p>"
    ]
    cols = ["range", "layers", "n", "success", "iou", "background_psnr", "found"]
    for edits, folder in FOLDERS.items():
        summary = read_summary(out, edits)
        if not summary:
            continue
        for s in summary:
            s["n"] = int(s["n"])
        parts.append(f"<h3>{esc(edits.capitalize())} edits</h3>" + table_html(summary, cols))
        parts.append(figure_html(out / folder / "tradeoff.png",
                                 f"Structure vs edit success: injection, {edits} edits",
                                 "One point per set of blocks."))  # fmt: skip
    if len(parts) == 1:
        return "<p>No injection was run (a run from before this stage).</p>"
    return "".join(parts)
