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
from functools import partial
from pathlib import Path
from typing import Any

from editing.sampling import sampling_settings
from editing.scoring.toy_metrics import score_edit
from editing.sweep.jobs import KIND_METHODS, EditSettings, run_jobs
from editing.sweep.plots import sweep_tradeoff, sweep_windows
from editing.sweep.ranges import (
    GROUPS_WITH_PRESETS,
    VITAL_ABLATION,
    LayerRange,
    default_ranges,
    parse_ranges,
    refused_presets,
    vital_blocks,
    vital_ranges,
)
from editing.sweep.table import (
    append_rows,
    load_all,
    load_table,
    merge_shard_tables,
    row_key,
    summarise_rows,
)
from probe.attention.layer_files import save_layer_table
from probe.attention.layers import resolve_layers
from probe.models import defaults_origin, run_layer_table
from probe.models.vocabulary import check_known_words
from probe.recording.folders import check_folder_settings
from probe.recording.store import parse_seeds
from probe.shards import ShardGroup, plan_tag
from probe.workers import ModelPool

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


def _units(jobs: list[_Job]) -> list[list[_Job]]:
    """The plan's jobs by (seed, source, its targets): what a shard takes whole, so that it
    batches its edits as one process would (the same edits, bit for bit)."""
    units: dict[tuple[Any, ...], list[_Job]] = {}
    for job in jobs:
        key = (job.seed, job.source, tuple(pair.target for pair in job.pairs))
        units.setdefault(key, []).append(job)
    return list(units.values())


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
    scorer: Callable[..., Any] | None = None,
    pool: ModelPool | None = None,
    group: ShardGroup | None = None,
) -> list[dict[str, Any]]:
    """Edit every pair with attention replaced in each layer range, and score every edit.

    Args:
        pipe: a Stable Diffusion pipeline (the toy model: its judges score the edits).
        pairs: :class:`~probe.prompts.templates.EditPair` items (an ``EditSet``, or a subset).
        ranges: :class:`LayerRange` items or strings for :func:`parse_ranges` (default:
            :func:`default_ranges` of the UNet); ``"vital-ablation"``: none, the model's vital
            blocks, the others, all (:func:`~editing.sweep.ranges.vital_ranges`).
        kinds: ``"self"`` (FPE's self-attention replacement), ``"cross"``
            (cross-attention replacement), ``"inject"`` (Stable Flow's K/V injection, DiTs;
            it injects in every step at step fraction 1.0).
        seeds: seeds of the shared initial noise (``"0-3"`` or a list).
        step_fractions: the first fraction(s) of steps to replace in.
        out: folder for ``sweep.csv`` (appended as edits finish; rows already there are
            skipped), ``sweep.json`` (settings), ``summary.json``, ``tradeoff.png`` and
            ``windows.png``.
        num_steps, guidance_scale: default: the model's.
        batch_size: targets of one source and seed edited in one batch, sharing one source
            branch: the targets of one range, and of the next ranges, kinds and fractions
            while they fit (each range's editor acts on its own targets).
        model_name: recorded in ``sweep.json`` (a resume with another model is refused).
        progress: show a tqdm bar.
        save_images: also save every edit under ``out/images/<kind>_<range>_<fraction>/``
            and each source under ``out/images/source/``.
        pool: run the edits on these worker processes (:class:`probe.workers.ModelPool` of
            the same model; the scorer must pickle); default: in this process.
        scorer: ``(source_image, edited_image, pair) -> EditScore`` (default: the toy judges
            of the model's world, :func:`toy_scorer`; for a real checkpoint
            :class:`editing.scoring.clip_scorer.ClipEditScorer`). Its ``name`` attribute is
            saved in ``sweep.json``: a resume with another scorer is refused.
        group: shards of this sweep run in other processes (:class:`probe.shards.ShardGroup`):
            this one edits every n-th (seed, source) of the plan from its index (every range,
            kind and fraction of it, batched as one process would) into
            ``sweep.<i>-of-<n>.csv``; when every shard is done, shard 0 folds those into
            ``sweep.csv`` (in plan order) and writes the summary. Needs ``out``.

    Returns:
        One row per (kind, range, step fraction, seed, pair): the columns of
            :data:`editing.sweep.table.FIELDS` (with ``out``: every row of its ``sweep.csv``,
            every shard's included).

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

    group = group or ShardGroup()
    if group.sharded and out is None:
        raise ValueError(f"a sharded sweep ({group}) needs out=: its shards meet in one folder")
    if group.folder is None and out is not None:
        group.folder = Path(out)  # where hand-started shards leave their markers
    bad = [k for k in kinds if k not in KIND_METHODS]
    if bad or not kinds:
        raise ValueError(f"kinds {list(kinds)}: use any of {', '.join(KIND_METHODS)}")
    fractions = [step_fractions] if isinstance(step_fractions, float | int) else step_fractions
    for f in fractions:
        if not 0.0 <= float(f) <= 1.0:
            raise ValueError(f"step fraction {f} is not between 0 and 1")
    table = run_layer_table(pipe)  # the edits run at the model's size: their layer table
    chosen = _default_ranges(table) if ranges is None else _as_ranges(ranges, table, pipe)
    resolved = [(r, resolve_layers(table, r.spec)) for r in chosen]
    pair_list = list(pairs)
    prompts = dict.fromkeys(p for pair in pair_list for p in (pair.source, pair.target))
    check_known_words(pipe, prompts)  # the toy refuses a word it never learned
    jobs = _plan(pair_list, resolved, kinds, parse_seeds(seeds), fractions, batch_size)
    scorer = toy_scorer(pipe) if scorer is None else scorer
    scorer_name = str(getattr(scorer, "name", "judges"))
    sampling = sampling_settings(pipe, num_steps, guidance_scale)
    rows, done, csv_path = _open_out(
        out, num_steps, guidance_scale, model_name, scorer_name, (sampling, _legacy_ok(pipe))
    )
    if csv_path is not None and group.main:  # what select-from-sweep resolves --base against
        save_layer_table(csv_path.parent / LAYER_TABLE, table)
    if csv_path is not None:
        csv_path = csv_path.with_name(f"sweep{group.suffix}.csv")  # this shard's own rows
    mine = [job for unit in group.take(_units(jobs)) for job in unit]
    work = [(job, [p for p in job.pairs if _key(job, p) not in done]) for job in mine]
    work = [(job, batch) for job, batch in work if batch]
    keep = save_images and csv_path is not None
    settings = EditSettings(num_steps, guidance_scale, scorer, keep, batch_size)
    bar = tqdm(total=sum(len(b) for _, b in work), desc="sweep", unit="edit", disable=not progress)
    finished: dict[int, list[dict[str, Any]]] = {}  # rows of jobs done ahead of plan order
    next_job = 0
    for i, job, batch, scores, result in run_jobs(pipe, work, settings, pool):
        finished[i] = [_row(job, pair, score) for pair, score in zip(batch, scores, strict=True)]
        if csv_path is not None and result is not None:
            _save_images(csv_path.parent / "images", job, batch, result)
        bar.update(len(batch))
        while next_job in finished:  # appended in plan order: a resumed table reads the same
            new = finished.pop(next_job)
            if csv_path is not None:
                append_rows(csv_path, new)
            rows += new
            next_job += 1
    bar.close()
    if out is None:
        return rows
    return _gather(Path(out), jobs, group)


def _gather(folder: Path, jobs: list[_Job], group: ShardGroup) -> list[dict[str, Any]]:
    """Once every shard has edited its jobs: shard 0 folds the shard tables into
    ``sweep.csv`` and writes the summary; then every shard reads the whole table."""
    keys = [_key(job, pair) for job in jobs for pair in job.pairs]
    tag = plan_tag(keys)
    group.barrier(f"sweep-{tag}-edited")
    if group.main:
        write_sweep_summary(merge_shard_tables(folder / "sweep.csv", keys), folder)
    group.barrier(f"sweep-{tag}-merged")
    return load_table(folder / "sweep.csv")


def toy_scorer(pipe: Any) -> Callable[..., Any]:
    """:func:`~editing.scoring.toy_metrics.score_edit` with the judges of ``pipe``'s toy world
    (v1 for the shipped toy, the world in a trained folder's ``attnprobe.json`` otherwise);
    it pickles, so worker processes score with the same world."""
    from probe.toy.world.world import world_of

    return partial(score_edit, world=world_of(pipe))


def _default_ranges(table: list[Any]) -> list[LayerRange]:
    """:func:`default_ranges` without the presets this model's family gives no meaning
    (SDXL: ``paper``, SD 1.5's "layers 4-14"; see
    :meth:`probe.families.base.ModelFamily.preset_rule`)."""
    return _without_refused(default_ranges(len(table)), table)


def _without_refused(ranges: list[LayerRange], table: list[Any]) -> list[LayerRange]:
    refused = refused_presets(table)
    return [r for r in ranges if not (r.group == "preset" and str(r.spec) in refused)]


def _as_ranges(
    ranges: Sequence[LayerRange | str], table: list[Any], pipe: Any = None
) -> list[LayerRange]:
    """Ranges by name (the first wins: windows and suffixes overlap). A group keyword
    (``default``, ``presets``) leaves out the presets the family refuses; a refused preset
    named on its own is an error (from :func:`resolve_layers`); ``vital-ablation`` is
    :func:`vital_ranges` of the model's vital blocks."""
    out: dict[str, LayerRange] = {}
    for item in ranges:
        if isinstance(item, LayerRange):
            found = [item]
        elif item.strip() == VITAL_ABLATION:
            found = vital_ranges(vital_blocks(pipe, table), len(table))
        else:
            found = parse_ranges([item], len(table))
            if item.strip() in GROUPS_WITH_PRESETS:
                found = _without_refused(found, table)
        for r in found:
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
    rows = load_all(path)  # shard tables too: a sharded run resumes, sharded or not
    return rows, {row_key(r) for r in rows}, path


def _legacy_ok(pipe: Any) -> bool:
    """Whether a sweep.json without ``sampling`` sampled as today: a model on DDIM whose
    defaults did not change (the toy, tiny); an SD folder then ran its own scheduler, 20 steps."""
    from diffusers import DDIMScheduler

    return isinstance(pipe.scheduler, DDIMScheduler) and defaults_origin(pipe)["family"] != "sd"


def _key(job: _Job, pair: Any) -> tuple[str, ...]:
    return (job.kind, job.layer_range.name, f"{job.step_fraction:g}", str(job.seed), job.source,
            pair.target)  # fmt: skip


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
