"""Running a sweep's edits: one after the other, or on a :class:`probe.workers.ModelPool`.

Each job edits one source into some of its targets with one layer range, kind and step fraction.
Consecutive jobs of the same seed and source run as one edit, up to ``batch_size`` targets: one
source branch for all of them, each job's editor acting on its own targets only (a target row
depends on the source row alone, so this is the same edit as running the jobs one by one).

:func:`run_jobs` yields ``(index, job, batch, scores, result)`` as jobs finish; ``result`` (the
images) only when they are wanted, since a pool's workers send them back pickled. Jobs that ask
for the same edit run it once and share its scores: jobs without layers (no replacement) give
the same images for every kind and fraction, and two ranges of the same layers (the probe
selection is often one of the windows) give the same edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
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
    batch_size: int = 9  # targets of one source edited in one batch, over jobs


def edit_key(job: Any, batch: list[Any]) -> tuple[Any, ...]:
    """What the images of a job depend on: two jobs of one key make the same edit. Without
    replacement (no layers) neither the kind nor the step fraction matters."""
    shared = (job.seed, job.source, tuple(pair.target for pair in batch))
    if not job.layers:
        return ("none", *shared)
    return (job.kind, tuple(job.layers), float(job.step_fraction), *shared)


def group_work(work: Sequence[tuple[Any, list[Any]]], indexes: Sequence[int],
               batch_size: int) -> list[list[int]]:  # fmt: skip
    """Consecutive jobs of one seed and source, up to ``batch_size`` targets in all: each group
    is one edit whose targets share the source branch (a job larger than that is one group)."""
    groups: list[list[int]] = []
    size = 0
    for i in indexes:
        job, batch = work[i]
        if groups:
            first = work[groups[-1][0]][0]
            same = (first.seed, first.source) == (job.seed, job.source)
            if same and size + len(batch) <= batch_size:
                groups[-1].append(i)
                size += len(batch)
                continue
        groups.append([i])
        size = len(batch)
    return groups


def group_controllers(members: Sequence[tuple[Any, list[Any]]]) -> tuple[list[Any], list[Any]]:
    """``(targets, controllers)`` of one edit for every member job: each job's editor acts on
    its own targets only (:class:`~editing.methods.replace.RowEditor`'s ``targets``)."""
    from editing.methods.registry import get_method
    from editing.methods.replace import RowEditor

    targets: list[str] = []
    controllers: list[Any] = []
    for job, batch in members:
        start = len(targets)
        targets += [pair.target for pair in batch]
        if not job.layers:
            continue
        for c in get_method(KIND_METHODS[job.kind]).controllers(job.layers, job.step_fraction):
            if not isinstance(c, RowEditor):
                raise TypeError(f"sweep kind {job.kind!r}: {c!r} cannot edit a subset of targets")
            c.targets = frozenset(range(start, len(targets)))
            controllers.append(c)
    return targets, controllers


def score_group(
    pipe: Any, members: Sequence[tuple[Any, list[Any]]], settings: EditSettings
) -> list[tuple[list, Any]]:
    """Edit the targets of every member job in one batch and score each: ``(scores, result or
    None)`` per member, what a worker sends back."""
    from editing.editor import EditResult, edit

    targets, controllers = group_controllers(members)
    job = members[0][0]
    result = edit(pipe, job.source, targets, controllers=controllers, seed=job.seed,
                  num_steps=settings.num_steps, guidance_scale=settings.guidance)  # fmt: skip
    out: list[tuple[list, Any]] = []
    start = 0
    for _, batch in members:
        images = result.targets[start : start + len(batch)]
        start += len(batch)
        scores = [settings.scorer(result.source, image, pair)
                  for pair, image in zip(batch, images, strict=True)]  # fmt: skip
        kept = EditResult(result.source, images, result.settings) if settings.keep_images else None
        out.append((scores, kept))
    return out


def run_jobs(
    pipe: Any,
    work: Sequence[tuple[Any, list[Any]]],
    settings: EditSettings,
    pool: ModelPool | None = None,
) -> Iterator[tuple[int, Any, list[Any], list[Any], Any]]:
    """Edit and score every ``(job, batch)`` of ``work``; yield each as it finishes (not in
    order: a group's jobs finish together, and a job asking for an edit already made with it).

    Yields:
        ``(index in work, job, batch, scores, result or None)``.
    """
    uses: dict[tuple[Any, ...], list[int]] = {}
    for i, (job, batch) in enumerate(work):
        uses.setdefault(edit_key(job, batch), []).append(i)
    firsts = [same[0] for same in uses.values()]
    groups = group_work(work, firsts, settings.batch_size)

    def finished(group: list[int], done: list[tuple[list, Any]]) -> Iterator[Any]:
        for i, (scores, result) in zip(group, done, strict=True):
            for j in uses[edit_key(*work[i])]:
                yield j, work[j][0], work[j][1], scores, result

    if pool is None:
        for group in groups:
            yield from finished(group, score_group(pipe, [work[i] for i in group], settings))
        return
    pending = {pool.submit(score_group, [work[i] for i in group], settings): group
               for group in groups}  # fmt: skip
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield from finished(pending.pop(future), future.result())
    finally:
        for future in pending:
            future.cancel()
