"""Run editing methods × inversions over a PIE-Bench folder: one JSON line per edited item,
resumable, and a table per edit type.

    run_bench(pipe, "runs/toy_pie", "runs/bench", methods=["fpe", "p2p"], inversions=["ddim"])
    write_tables("runs/bench")        # tables.json, tables.md: per method × inversion × type

Each (method, inversion, item) is one line of ``rows.jsonl``, appended and flushed as soon as
it is scored; a rerun skips every line already there, so an interrupted run loses at most the
item it was on. Edited images go to ``images/<method>+<inversion>/<id>.png``.

Sharded (``shard=(i, n)``, or ``--shard i/n``, or the ``RANK``/``WORLD_SIZE`` that ``torchrun``
and ``accelerate launch`` set): shard ``i`` takes every n-th (method, inversion, item) of the
whole job list from ``i`` and appends to its own ``rows.<i>-of-<n>.jsonl`` in the same folder;
every shard skips what any ``rows*.jsonl`` there already holds, and :func:`read_rows` (so the
tables) merges them in job order.

Methods run with their authors' defaults through :func:`editing.editor.edit`, after the
inversion asked (UNets: ``ddim`` with the prompt the method's source branch runs on, then
each method's own source row; ``direct``: the same DDIM inversion with the source row forced
onto it, Ju et al.'s Direct Inversion as PnP-Inversion runs it for every method
(``directinversion+p2p``, ``directinversion+masactrl``; FPE forces it after ``ddim`` too, so
its two rows are the same edit); or ``null-text``; flow models: ``euler``, ``rf-inversion``,
``rf-solver``, ``fireflow``);
``flowedit`` inverts nothing (its inversion is ``none``). Prompt-to-Prompt takes the settings
of PnP-Inversion's PIE-Bench runner (``run_editing_p2p.py``): word swap when the two prompts
have as many words, else refine; cross-attention replaced for 0.4 of the steps, self-attention
for 0.6; LocalBlend on the item's ``blended_word`` and the target word reweighted by 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from editing.bench.pie_bench import PieItem, read_pie_bench
from editing.bench.pie_metrics import nan_mean
from editing.bench.pie_models import METRIC_COLUMNS, PieScorer

FLOW_INVERSIONS = ("euler", "rf-inversion", "rf-solver", "fireflow")
UNET_INVERSIONS = ("ddim", "null-text", "direct")
TOY_COLUMNS = ("toy_success", "toy_kept", "toy_iou")


def bench_jobs(methods: Sequence[str], inversions: Sequence[str]) -> list[tuple[str, str]]:
    """(method, inversion) pairs to run: every method after every inversion; ``flowedit``
    once, with inversion ``none``.

    Raises:
        ValueError: an unknown method or inversion.
    """
    from editing.methods.registry import get_method

    for inversion in inversions:
        if inversion not in (*UNET_INVERSIONS, *FLOW_INVERSIONS):
            raise ValueError(
                f"inversion {inversion!r}: use {', '.join((*UNET_INVERSIONS, *FLOW_INVERSIONS))}"
            )
    jobs: list[tuple[str, str]] = []
    for method in methods:
        get_method(method)  # refuses an unknown name with the list
        pairs = [(method, "none")] if method == "flowedit" else [(method, i) for i in inversions]
        jobs += [p for p in pairs if p not in jobs]
    return jobs


def method_options(method: str, item: PieItem) -> dict[str, Any]:
    """The options a method runs an item with (see the module docstring for p2p's)."""
    if method != "p2p":
        return {}
    same_length = len(item.source_prompt.split()) == len(item.target_prompt.split())
    options: dict[str, Any] = {"mode": "replace" if same_length else "refine",
                               "cross_steps": 0.4, "self_steps": 0.6}  # fmt: skip
    words = item.blended_words
    if len(words) == 2:
        options |= {"blend": words, "weights": {words[1]: 2.0}}
    return options


def invert(
    pipe: Any, image: Image.Image, inversion: str, method: str, source: str,
    num_steps: int | None = None,
) -> Any:  # fmt: skip
    """The inversion of one image, with the prompt the method's source branch runs on
    (``""`` or the source prompt; null-text always pivots on the source prompt)."""
    from editing.methods.registry import get_method

    by_source = get_method(method).source_prompt_on_real_image == "source"
    prompt = source if by_source else ""
    if inversion in ("ddim", "direct"):
        from editing.inversion import ddim_invert

        return ddim_invert(pipe, image, prompt=prompt, num_steps=num_steps)
    if inversion == "null-text":
        from editing.inversion import ddim_invert
        from editing.null_text import null_text_invert

        pivot = ddim_invert(pipe, image, prompt=source, num_steps=num_steps)
        return null_text_invert(pipe, pivot, source, None)
    if inversion == "euler":
        from editing.flow_inversion import flow_invert

        return flow_invert(pipe, image, prompt, num_steps)
    if inversion == "rf-inversion":
        from editing.rf_inversion import rf_invert

        return rf_invert(pipe, image, prompt, num_steps)
    from editing.rf_solver import solver_invert

    return solver_invert(pipe, image, prompt, num_steps, solver=inversion)


def edit_item(
    pipe: Any, item: PieItem, image: Image.Image, method: str, inversion: str, seed: int = 0,
    num_steps: int | None = None,
) -> Image.Image:  # fmt: skip
    """One item edited by one method after one inversion (``none``: FlowEdit)."""
    if method == "flowedit":
        from editing.methods.flowedit import flowedit

        source, target = item.source_prompt, item.target_prompt
        n_max = flowedit_n_max(pipe, num_steps)
        return flowedit(pipe, image, source, target, num_steps=num_steps, n_max=n_max,
                        seed=seed).image  # fmt: skip
    from editing.editor import edit

    inverted = invert(pipe, image, inversion, method, item.source_prompt, num_steps)
    branch = "forced" if inversion == "direct" else None  # None: the method's own
    result = edit(pipe, item.source_prompt, [item.target_prompt], method=method, seed=seed,
                  inversion=inverted, source_branch=branch, source_branch_prompt="inversion",
                  **method_options(method, item))  # fmt: skip
    return result.targets[0]


def flowedit_n_max(pipe: Any, num_steps: int | None) -> int | None:
    """FlowEdit's ``n_max`` for ``num_steps`` (``None``: the authors' step count and theirs):
    the authors' fraction of the steps, the rule ``flowedit`` applies itself
    (:func:`editing.methods.flowedit.authors_n_max`)."""
    if num_steps is None:
        return None
    from editing.methods.flowedit import FLOWEDIT_DEFAULTS, authors_n_max
    from probe.families import family_of

    authors = FLOWEDIT_DEFAULTS.get(family_of(pipe).name, FLOWEDIT_DEFAULTS["sd3"])
    return authors_n_max(authors, num_steps)


def rows_files(out: str | Path) -> list[Path]:
    """A run's row files: ``rows.jsonl`` and every shard's ``rows.<i>-of-<n>.jsonl``."""
    root = Path(out)
    shards = sorted(root.glob("rows.*-of-*.jsonl"), key=lambda p: [
        int(n) if n.isdigit() else n for n in p.name.replace("-", ".").split(".")])  # fmt: skip
    return [p for p in [root / "rows.jsonl", *shards] if p.is_file()]


def done_keys(out: str | Path) -> set[tuple[str, str, str]]:
    """(method, inversion, id) of every line already in the run's row files (a torn last
    line, from a killed run, is ignored and redone)."""
    return {(row["method"], row["inversion"], row["id"]) for row in _read_lines(out)}


def _drop_torn_tail(rows_path: Path) -> None:
    """Cut a last line a killed run left without its newline, so the next row starts clean."""
    if not rows_path.is_file():
        return
    data = rows_path.read_bytes()
    if data and not data.endswith(b"\n"):
        rows_path.write_bytes(data[: data.rfind(b"\n") + 1])


def run_bench(
    pipe: Any,
    folder: str | Path,
    out: str | Path,
    methods: Sequence[str],
    inversions: Sequence[str] = ("ddim",),
    scorer: PieScorer | None = None,
    types: list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    num_steps: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Path:
    """Edit every item with every (method, inversion) and score it; resumable.

    Args:
        pipe: the pipeline (``load_pipeline(...)``).
        folder: a PIE-Bench folder (:func:`~editing.bench.pie_bench.read_pie_bench`).
        out: the run folder: ``rows.jsonl``, ``images/``.
        methods, inversions: see :func:`bench_jobs`.
        scorer: the metrics (default: no model folders, so the model metrics are missing).
        types: edit type ids to run (default all); ``limit``: the first N items of those.
        seed: the edit's seed (only generated noise reads it; an inverted image has none).
        num_steps: inversion and edit steps (default: the model's).
        shard: ``(i, n)``: run every n-th (method, inversion, item) from ``i`` only, into
            ``rows.<i>-of-<n>.jsonl`` (see the module docstring).

    Returns:
        The path of the row file this process wrote (``rows.jsonl`` unsharded).

    Example:
        >>> run_bench(load_pipeline("toy-v2"), "runs/toy_pie", "runs/bench", ["fpe"])
    """
    items = read_pie_bench(folder, types)[:limit]
    jobs = bench_jobs(methods, inversions)
    scorer = scorer or PieScorer()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    index, count = shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: give 0 <= i < n")
    rows_path = root / ("rows.jsonl" if count == 1 else f"rows.{index}-of-{count}.jsonl")
    _drop_torn_tail(rows_path)
    done = done_keys(root)
    every = [(m, i, item) for m, i in jobs for item in items][index::count]
    todo = [(m, i, item) for m, i, item in every if (m, i, item.id) not in done]
    with rows_path.open("a") as rows:
        for method, inversion, item in tqdm(todo, desc="bench", unit="edit"):
            job = (method, inversion, seed, num_steps)
            row = _bench_row(pipe, folder, root, item, job, scorer)
            rows.write(json.dumps(row) + "\n")
            rows.flush()
    return rows_path


def _bench_row(
    pipe: Any, folder: str | Path, root: Path, item: PieItem,
    job: tuple[str, str, int, int | None], scorer: PieScorer,
) -> dict[str, Any]:  # fmt: skip
    from editing.bench.toy_pie import judge_toy_edit

    method, inversion, seed, num_steps = job
    image, mask = item.load(folder)
    start = time.perf_counter()
    edited = edit_item(pipe, item, image, method, inversion, seed, num_steps)
    seconds = time.perf_counter() - start
    if edited.size != image.size:
        edited = edited.resize(image.size, Image.Resampling.BICUBIC)
    name = f"images/{method}+{inversion}/{item.id}.png"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    edited.save(root / name)
    row: dict[str, Any] = {
        "id": item.id, "method": method, "inversion": inversion,
        "editing_type_id": item.editing_type_id, "source_prompt": item.source_prompt,
        "target_prompt": item.target_prompt, "image": name, "seconds": round(seconds, 3),
    }  # fmt: skip
    row |= scorer.score(image, edited, mask, (item.source_prompt, item.target_prompt))
    if "toy" in item.extra:
        row |= judge_toy_edit(image, edited, item.extra["toy"])
    row["missing"] = scorer.missing
    return row


def _read_lines(out: str | Path) -> list[dict[str, Any]]:
    rows = []
    for path in rows_files(out):
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_rows(out: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a run's row files (``rows.jsonl`` and the shards'), one per
    (method, inversion, id): unsharded, in the order they ran; sharded, ``rows.jsonl``'s, then
    shard 0's, shard 1's, …"""
    seen: set[tuple[str, str, str]] = set()
    rows = []
    for row in _read_lines(out):
        key = (row["method"], row["inversion"], row["id"])
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One summary per (method, inversion, edit type) and per (method, inversion) over all
    types (``editing_type_id`` ``"all"``): each metric's mean over its non-NaN rows and how
    many those were (``n_<metric>``); a metric missing on every row stays ``None``."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        for kind in (row["editing_type_id"], "all"):
            groups.setdefault((row["method"], row["inversion"], kind), []).append(row)
    columns = [*METRIC_COLUMNS, *TOY_COLUMNS, "seconds"]
    out = []
    for (method, inversion, kind), members in groups.items():
        summary: dict[str, Any] = {"method": method, "inversion": inversion,
                                   "editing_type_id": kind, "n": len(members)}  # fmt: skip
        for column in columns:
            values = [r.get(column) for r in members]
            if all(v is None for v in values):
                summary[column] = None
                continue
            summary[column], summary[f"n_{column}"] = nan_mean(values)
        out.append(summary)
    return out
