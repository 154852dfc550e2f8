"""The layer-range sweep: which layers should an edit replace attention in?

For every layer range (presets, sliding windows, prefixes, suffixes, a probe selection), every
kind of replacement (``self``: Free-Prompt-Editing's self-attention replacement; ``cross``:
cross-attention replacement), every step fraction and seed, the sweep edits each source prompt
into its targets and scores every edit with the toy world's judges
(:func:`editing.scoring.toy_metrics.score_edit`): edit success, structure IoU, shape distance,
background.

Rows go to ``sweep.csv`` as they finish, so an interrupted sweep resumes where it stopped;
``summary.json`` holds the means per (kind, range, step fraction), ``tradeoff.png`` plots
structure against success and ``windows.png`` both along sliding windows of layers.

    from editing.sweep.run import sweep
    from probe.prompts.templates import load_edit_pairs
    rows = sweep(pipe, load_edit_pairs("colour_edits"), seeds=[0, 1], out="sweep_out")
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editing.methods.registry import sweep_kinds
from editing.scheduler import sampling_settings
from editing.scoring.toy_metrics import score_edit
from editing.sweep.plots import sweep_tradeoff, sweep_windows
from editing.sweep.ranges import LayerRange, default_ranges, parse_ranges
from editing.sweep.table import append_rows, load_table, row_key, summarise_rows
from probe.attention.layer_files import save_layer_table
from probe.attention.layers import resolve_layers
from probe.attention.presets import PRESET_NAMES, preset_rule
from probe.models import defaults_origin, run_layer_table
from probe.models.vocabulary import check_known_words
from probe.recording.folders import check_folder_settings
from probe.recording.store import parse_seeds

KIND_METHODS = sweep_kinds()  # sweep kind -> editing method, from the method registry
LAYER_TABLE = "layer_table.json"  # the sweep's layer table, in its folder


@dataclass
class _Job:
    kind: str
    layer_range: LayerRange
    layers: list[int]
    step_fraction: float
    seed: int
    source: str
    pairs: list[Any]


def _plan(
    pairs: list[Any],
    ranges: list[tuple[LayerRange, list[int]]],
    kinds: Sequence[str],
    seeds: Sequence[int],
    fractions: Sequence[float],
    batch_size: int,
) -> list[_Job]:
    by_source: dict[str, list[Any]] = {}
    for pair in pairs:
        by_source.setdefault(pair.source, []).append(pair)
    chunks = [
        (source, group[i : i + batch_size])
        for source, group in by_source.items()
        for i in range(0, len(group), batch_size)
    ]
    return [
        _Job(kind, r, layers, fraction, seed, source, chunk)
        for seed in seeds
        for source, chunk in chunks
        for kind in kinds
        for r, layers in ranges
        for fraction in fractions
    ]


def _format_layers(layers: list[int]) -> str:
    return ",".join(map(str, layers)) if layers else "none"


def sweep(
    pipe: Any,
    pairs: Iterable[Any],
    ranges: Sequence[LayerRange | str] | None = None,
    *,
    kinds: Sequence[str] = ("self", "cross"),
    seeds: Sequence[int] | str = (0,),
    step_fractions: float | Sequence[float] = 0.8,
    out: str | Path | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 9,
    model_name: str | None = None,
    progress: bool = True,
    save_images: bool = False,
    scorer: Callable[..., Any] = score_edit,
) -> list[dict[str, Any]]:
    """Edit every pair with attention replaced in each layer range, and score every edit.

    Args:
        pipe: a Stable Diffusion pipeline (the toy model: its judges score the edits).
        pairs: :class:`~probe.prompts.templates.EditPair` items (an ``EditSet``, or a subset).
        ranges: :class:`LayerRange` items or strings for :func:`parse_ranges` (default:
            :func:`default_ranges` of the UNet).
        kinds: ``"self"`` (FPE's self-attention replacement) and/or ``"cross"``
            (cross-attention replacement).
        seeds: seeds of the shared initial noise (``"0-3"`` or a list).
        step_fractions: the first fraction(s) of steps to replace in.
        out: folder for ``sweep.csv`` (appended as edits finish; rows already there are
            skipped), ``sweep.json`` (settings), ``summary.json``, ``tradeoff.png`` and
            ``windows.png``.
        num_steps, guidance_scale: default: the model's.
        batch_size: targets of one source edited together (they share one source branch).
        model_name: recorded in ``sweep.json`` (a resume with another model is refused).
        progress: show a tqdm bar.
        save_images: also save every edit under ``out/images/<kind>_<range>_<fraction>/``
            and each source under ``out/images/source/``.
        scorer: ``(source_image, edited_image, pair) -> EditScore`` (default: the toy judges;
            for a real checkpoint :class:`editing.scoring.clip_scorer.ClipEditScorer`). Its ``name``
            attribute is saved in ``sweep.json``: a resume with another scorer is refused.

    Returns:
        One row per (kind, range, step fraction, seed, pair): the columns of
            :data:`editing.sweep.table.FIELDS`.

    Raises:
        ValueError: an unknown kind, a range that does not fit the UNet, bad seeds, or an
            ``out`` folder holding a sweep with other settings.
        UnknownWordError: a pair's prompt has a word outside the model's closed vocabulary
            (the toy's; see :mod:`probe.models.vocabulary`), before ``out`` is written.

    Example:
        >>> rows = sweep(pipe, load_edit_pairs("colour_edits"), ["fpe", "all", "none"],
        ...              seeds="0-1", out="sweep_colour")
        >>> summarise_rows(rows)[0]["success"]
        0.93
    """
    from tqdm.auto import tqdm

    bad = [k for k in kinds if k not in KIND_METHODS]
    if bad or not kinds:
        raise ValueError(f"kinds {list(kinds)}: use 'self' and/or 'cross'")
    fractions = [step_fractions] if isinstance(step_fractions, float | int) else step_fractions
    for f in fractions:
        if not 0.0 <= float(f) <= 1.0:
            raise ValueError(f"step fraction {f} is not between 0 and 1")
    table = run_layer_table(pipe)  # the edits run at the model's size: their layer table
    chosen = _default_ranges(table) if ranges is None else _as_ranges(ranges, len(table))
    resolved = [(r, resolve_layers(table, r.spec)) for r in chosen]
    pair_list = list(pairs)
    prompts = dict.fromkeys(p for pair in pair_list for p in (pair.source, pair.target))
    check_known_words(pipe, prompts)  # the toy refuses a word it never learned
    jobs = _plan(pair_list, resolved, kinds, parse_seeds(seeds), fractions, batch_size)
    scorer_name = str(getattr(scorer, "name", "judges"))
    sampling = sampling_settings(pipe, num_steps, guidance_scale)
    rows, done, csv_path = _open_out(
        out, num_steps, guidance_scale, model_name, scorer_name, (sampling, _legacy_ok(pipe))
    )
    if csv_path is not None:  # what select-from-sweep resolves --base against
        save_layer_table(csv_path.parent / LAYER_TABLE, table)
    todo = sum(1 for job in jobs for pair in job.pairs if _key(job, pair) not in done)
    plain: dict[tuple[Any, ...], Any] = {}
    bar = tqdm(total=todo, desc="sweep", unit="edit", disable=not progress)
    for job in jobs:
        batch = [pair for pair in job.pairs if _key(job, pair) not in done]
        if not batch:
            continue
        result = _run(pipe, job, batch, num_steps, guidance_scale, plain)
        new = [
            _row(job, pair, scorer(result.source, image, pair))
            for pair, image in zip(batch, result.targets, strict=True)
        ]
        if csv_path is not None:
            append_rows(csv_path, new)
            if save_images:
                _save_images(csv_path.parent / "images", job, batch, result)
        rows += new
        done.update(_key(job, pair) for pair in batch)
        bar.update(len(new))
    bar.close()
    if out is not None:
        write_sweep_summary(rows, Path(out))
    return rows


def _default_ranges(table: list[Any]) -> list[LayerRange]:
    """:func:`default_ranges` without the presets this model's family gives no meaning
    (SDXL: ``paper``, SD 1.5's "layers 4-14"; :mod:`probe.attention.presets`)."""
    out = []
    for r in default_ranges(len(table)):
        if r.group == "preset" and isinstance(r.spec, str) and r.spec in PRESET_NAMES:
            try:
                preset_rule(table, r.spec)
            except ValueError:
                continue
        out.append(r)
    return out


def _as_ranges(ranges: Sequence[LayerRange | str], num_layers: int) -> list[LayerRange]:
    out: dict[str, LayerRange] = {}  # by name: the first wins (windows and suffixes overlap)
    for item in ranges:
        for r in [item] if isinstance(item, LayerRange) else parse_ranges([item], num_layers):
            out.setdefault(r.name, r)
    return list(out.values())


def _open_out(
    out: str | Path | None,
    num_steps: int | None,
    guidance: float | None,
    model: str | None,
    scorer: str,
    sampling: tuple[dict[str, Any], bool] = ({}, True),
) -> tuple[list[dict[str, Any]], set[tuple[str, ...]], Path | None]:
    if out is None:
        return [], set(), None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"model": model, "num_steps": num_steps, "guidance_scale": guidance}
    # sweeps written before the scorer was saved were scored by the judges; before the
    # sampling was saved, a DDIM model with its own defaults sampled as today
    legacy = {"scorer": "judges", **({"sampling": sampling[0]} if sampling[1] else {})}
    check_folder_settings(
        folder, "sweep.json", {**settings, "scorer": scorer, "sampling": sampling[0]},
        "a sweep run", legacy,
    )  # fmt: skip
    path = folder / "sweep.csv"
    rows = load_table(path)
    return rows, {row_key(r) for r in rows}, path


def _legacy_ok(pipe: Any) -> bool:
    """Whether a sweep.json without ``sampling`` sampled as today: a model on DDIM whose
    defaults did not change (the toy, tiny); an SD folder then ran its own scheduler, 20 steps."""
    from diffusers import DDIMScheduler

    return isinstance(pipe.scheduler, DDIMScheduler) and defaults_origin(pipe)["family"] != "sd"


def _key(job: _Job, pair: Any) -> tuple[str, ...]:
    return (job.kind, job.layer_range.name, f"{job.step_fraction:g}", str(job.seed), job.source,
            pair.target)  # fmt: skip


def _run(
    pipe: Any,
    job: _Job,
    batch: list[Any],
    num_steps: int | None,
    guidance: float | None,
    plain: dict[tuple[Any, ...], Any],
) -> Any:
    from editing.editor import edit

    targets = [pair.target for pair in batch]
    if not job.layers:  # no replacement: the same images for every kind and fraction
        key = (job.seed, job.source, tuple(targets))
        if key not in plain:
            plain[key] = edit(pipe, job.source, targets, method="none", seed=job.seed,
                              num_steps=num_steps, guidance_scale=guidance)  # fmt: skip
        return plain[key]
    return edit(
        pipe, job.source, targets, method=KIND_METHODS[job.kind], layers=job.layers,
        step_fraction=job.step_fraction, seed=job.seed, num_steps=num_steps,
        guidance_scale=guidance,
    )  # fmt: skip


def _row(job: _Job, pair: Any, score: Any) -> dict[str, Any]:
    s = score.as_dict()
    return {
        "kind": job.kind,
        "range": job.layer_range.name,
        "group": job.layer_range.group,
        "layers": _format_layers(job.layers),
        "step_fraction": float(job.step_fraction),
        "seed": job.seed,
        "source": pair.source,
        "target": pair.target,
        "slot": pair.slot,
        "target_word": pair.target_word,
        **{k: s[k] for k in ("judged", "success", "source_found", "edit_found")},
        **{k: float(s[k]) for k in ("iou", "shape_distance", "background_psnr")},
        "background_diff": float(s["background_diff"]),
        "source_shift": float(s.get("source_shift", math.nan)),
    }


def _save_images(folder: Path, job: _Job, batch: list[Any], result: Any) -> None:
    def name(prompt: str) -> str:
        return f"s{job.seed}_" + "_".join(prompt.split())

    edits = folder / f"{job.kind}_{job.layer_range.name}_{job.step_fraction:g}"
    for sub in (edits, folder / "source"):
        sub.mkdir(parents=True, exist_ok=True)
    result.source.save(folder / "source" / f"{name(job.source)}.png")
    for pair, image in zip(batch, result.targets, strict=True):
        image.save(edits / f"{name(pair.source)}_to_{pair.target_word}.png")


def write_sweep_summary(rows: list[dict[str, Any]], out: Path) -> None:
    """Write ``summary.json``, ``tradeoff.png`` and ``windows.png`` for a sweep's rows."""
    summary = summarise_rows(rows)
    clean = [{k: None if _is_nan(v) else v for k, v in s.items()} for s in summary]
    (out / "summary.json").write_text(json.dumps(clean, indent=2))
    if rows:
        sweep_tradeoff(rows).savefig(out / "tradeoff.png", dpi=120, bbox_inches="tight")
        sweep_windows(rows).savefig(out / "windows.png", dpi=120, bbox_inches="tight")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
