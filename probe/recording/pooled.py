"""Recording several datasets on worker processes, each dataset in one shard per worker.

:func:`record_on_pool` splits every dataset into ``pool.workers`` disjoint shards
(:func:`probe.recording.store.shard_specs`) and records them side by side: a sample's noise comes
from its own seed whatever its shard, and the index takes concurrent appends, so the folder is
the one a single process writes (the same sample files, up to the arithmetic of one torch thread
against several). The progress bar counts index lines as the workers write them.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import wait
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from probe.recording.store import INDEX
from probe.workers import ModelPool, worker_cache

POLL_SECONDS = 0.5


def record_shard(
    pipe: Any,
    template: str,
    seeds: Sequence[int],
    out: Path,
    random_init: int | None,
    shard: tuple[int, int],
    args: dict[str, Any],
    lists: str | None = None,
) -> int:
    """Record shard ``shard`` of ``template`` × ``seeds`` into ``out`` (in a worker); with
    ``random_init``, on the randomly initialised copy of the model with that seed; ``lists``:
    the word lists the template is read with (``None``: the default lists)."""
    from probe.prompts.templates import load_template
    from probe.recording.dataset import record_dataset
    from probe.recording.random_control import random_init_like

    if random_init is not None:
        cache = worker_cache()
        key = ("random_init", random_init)
        if key not in cache:
            cache[key] = random_init_like(pipe, seed=random_init)
        pipe = cache[key]
    report = record_dataset(
        pipe, load_template(template, lists), list(seeds), out, random_init=random_init,
        shard=shard, progress=False, **args,
    )  # fmt: skip
    return int(report.recorded)


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def record_on_pool(
    pool: ModelPool,
    root: Path,
    jobs: Sequence[tuple[str, Any, Sequence[int], int | None]],
    args: dict[str, Any],
    progress: bool = True,
    lists: str | None = None,
) -> None:
    """Record every ``(name, _, seeds, random_init)`` dataset into ``root / name``.

    ``name`` is the template's name (a ``_random`` suffix marks the random-model control);
    ``args`` are :func:`~probe.recording.dataset.record_dataset`'s other keywords; ``lists`` the
    word lists the templates are read with (:func:`probe.prompts.templates.load_template`).
    """
    from probe.prompts.templates import load_template

    n = pool.workers
    futures, indexes, total = [], [], 0
    for name, _, seeds, random_init in jobs:
        template = name.removesuffix("_random")
        total += len(load_template(template, lists)) * len(seeds)
        indexes.append(root / name / INDEX)
        for i in range(n):
            futures.append(pool.submit(record_shard, template, list(seeds), root / name,
                                       random_init, (i, n), args, lists))  # fmt: skip
    bar = tqdm(total=total, desc=f"record ({n} workers)", unit="sample", disable=not progress)
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=POLL_SECONDS)
        written = min(total, sum(_lines(p) for p in indexes))
        if written > bar.n:
            bar.update(written - bar.n)
    bar.close()
    for future in futures:
        future.result()  # a worker's error, raised here
