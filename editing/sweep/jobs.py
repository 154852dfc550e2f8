"""Running a sweep's edits: one after the other, or on a :class:`probe.workers.ModelPool`.

Each job edits one source into a batch of its targets (one shared source branch) and scores
every edit. :func:`run_jobs` yields ``(index, job, batch, scores, result)`` as jobs finish;
``result`` (the images) only when they are wanted, since a pool's workers send them back
pickled. Jobs that ask for the same edit run it once and share its scores: jobs without layers
(no replacement) give the same images for every kind and fraction, and two ranges of the same
layers (the probe selection is often one of the windows) give the same edit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any

from editing.methods.registry import sweep_kinds
from probe.workers import ModelPool

KIND_METHODS = sweep_kinds()  # sweep kind -> editing method, from the method registry


@dataclass(frozen=True)
class EditSettings:
    """What every edit of a sweep shares."""

    num_steps: int | None
    guidance: float | None
    scorer: Callable[..., Any]
    keep_images: bool


def edit_key(job: Any, batch: list[Any]) -> tuple[Any, ...]:
    """What the images of a job depend on: two jobs of one key make the same edit. Without
    replacement (no layers) neither the kind nor the step fraction matters."""
    shared = (job.seed, job.source, tuple(pair.target for pair in batch))
    if not job.layers:
        return ("none", *shared)
    return (job.kind, tuple(job.layers), float(job.step_fraction), *shared)


def edit_job(pipe: Any, job: Any, batch: list[Any], settings: EditSettings) -> Any:
    """The edit of ``job`` for the targets of ``batch`` (an ``EditResult``)."""
    from editing.editor import edit

    targets = [pair.target for pair in batch]
    common = {"seed": job.seed, "num_steps": settings.num_steps,
              "guidance_scale": settings.guidance}  # fmt: skip
    if not job.layers:
        return edit(pipe, job.source, targets, method="none", **common)
    return edit(
        pipe, job.source, targets, method=KIND_METHODS[job.kind], layers=job.layers,
        step_fraction=job.step_fraction, **common,
    )  # fmt: skip


def score_job(pipe: Any, job: Any, batch: list[Any], settings: EditSettings) -> tuple[list, Any]:
    """``(scores, result or None)`` of one job: what a worker sends back."""
    result = edit_job(pipe, job, batch, settings)
    scores = [settings.scorer(result.source, image, pair)
              for pair, image in zip(batch, result.targets, strict=True)]  # fmt: skip
    return scores, result if settings.keep_images else None


def run_jobs(
    pipe: Any,
    work: Sequence[tuple[Any, list[Any]]],
    settings: EditSettings,
    pool: ModelPool | None = None,
) -> Iterator[tuple[int, Any, list[Any], list[Any], Any]]:
    """Edit and score every ``(job, batch)`` of ``work``; yield each as it finishes.

    Yields:
        ``(index in work, job, batch, scores, result or None)``.
    """
    if pool is None:
        left = Counter(edit_key(job, batch) for job, batch in work)  # uses still to come
        kept: dict[tuple[Any, ...], tuple[list, Any]] = {}  # only edits asked for again
        for i, (job, batch) in enumerate(work):
            key = edit_key(job, batch)
            done = kept.pop(key, None) if left[key] == 1 else kept.get(key)
            scores, result = done if done is not None else score_job(pipe, job, batch, settings)
            left[key] -= 1
            if left[key]:
                kept[key] = (scores, result)
            yield i, job, batch, scores, result
        return
    yield from _pooled(work, settings, pool)


def _pooled(
    work: Sequence[tuple[Any, list[Any]]], settings: EditSettings, pool: ModelPool
) -> Iterator[tuple[int, Any, list[Any], list[Any], Any]]:
    by_key: dict[tuple[Any, ...], Future[Any]] = {}
    pending: dict[Future[Any], list[int]] = {}
    for i, (job, batch) in enumerate(work):
        key = edit_key(job, batch)
        if key in by_key:
            pending[by_key[key]].append(i)  # the same edit: run and scored once
            continue
        future = pool.submit(score_job, job, batch, settings)
        pending[future] = [i]
        by_key[key] = future
    try:
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                scores, result = future.result()
                for i in pending.pop(future):
                    job, batch = work[i]
                    yield i, job, batch, scores, result
    finally:
        for future in pending:
            future.cancel()
