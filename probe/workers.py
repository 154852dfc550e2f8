"""Model work on several CPU processes, each with its own copy of the model and one thread.

On a CPU, torch's intra-op threads parallelise a small model's kernels poorly (the toy's UNet
runs on 16×16 latents), and on a machine busy with other work its waiting threads slow every
kernel down many times over: one FPE edit of three targets on the toy took 60 s with two torch
threads and 3 s with one while other processes kept the two cores busy. Independent tasks (the
samples of a dataset, the edits of a sweep) parallelise without that loss. A :class:`ModelPool`
starts ``workers`` processes (``spawn``); each sets one torch thread and loads the model once,
by the name or folder :func:`probe.models.load_pipeline` takes, and runs the tasks it is given
on it::

    with ModelPool("toy", workers=2) as pool:
        futures = [pool.submit(task, arg) for arg in args]   # task(pipe, arg) in a worker

A task is a module-level function ``task(pipe, *args, **kwargs)`` (it is pickled by reference); its
arguments and result must pickle. The pool is only worth starting on a CPU with more than one
core and more than a few seconds of work: each worker imports torch and diffusers and loads the
model (a few seconds).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

_PIPE: Any = None  # the model of this worker process
_CACHE: dict[Any, Any] = {}  # per-worker objects tasks derive from the model (random copies)


def cpu_workers(requested: int | None = None) -> int:
    """Worker processes to use: ``requested``, or one per CPU core this process may run on."""
    if requested is not None and requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def model_bytes(pipe: Any) -> int:
    """Bytes of a pipeline's weights (every ``torch.nn.Module`` component)."""
    import torch

    total = 0
    for part in getattr(pipe, "components", {}).values():
        if isinstance(part, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in part.parameters())
    return total


def affordable_workers(pipe: Any, share: float = 0.5) -> int:
    """One worker per CPU core, as many as hold a copy of ``pipe`` each (plus the caller's)
    within ``share`` of this machine's memory; 1 for a model that is not on the CPU."""
    if getattr(getattr(pipe, "device", None), "type", "cpu") != "cpu":
        return 1
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1
    fits = int(memory * share // max(model_bytes(pipe), 1)) - 1
    return max(1, min(cpu_workers(), fits))


def _start(model: str, threads: int) -> None:
    global _PIPE
    import torch
    from diffusers.utils import logging as diffusers_logging

    torch.set_num_threads(threads)
    diffusers_logging.disable_progress_bar()  # the parent shows the progress
    from probe.models import load_pipeline

    _PIPE = load_pipeline(model)


def _run(task: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return task(_PIPE, *args, **kwargs)


def worker_cache() -> dict[Any, Any]:
    """A dictionary that lives as long as this worker process (for a task's derived models)."""
    return _CACHE


class ModelPool:
    """``workers`` processes, each holding the model ``model`` with one torch thread.

    Args:
        model: ``"toy"``, ``"tiny"`` or a diffusers folder (what ``load_pipeline`` takes).
        workers: processes (default: one per CPU core).
        threads: torch threads of each worker (default 1).

    Example:
        >>> with ModelPool("toy") as pool:
        ...     images = [f.result() for f in [pool.submit(generate, p) for p in prompts]]
    """

    def __init__(self, model: str, workers: int | None = None, threads: int = 1) -> None:
        self.model = str(model)
        self.workers = cpu_workers(workers)
        self._executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(self.model, threads),
        )

    def submit(self, task: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``task(pipe, *args, **kwargs)`` in a worker; its future."""
        return self._executor.submit(_run, task, args, kwargs)

    def close(self, cancel: bool = False) -> None:
        """Stop the workers (``cancel``: drop the tasks not started)."""
        self._executor.shutdown(wait=True, cancel_futures=cancel)

    def __enter__(self) -> ModelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=exc[0] is not None)

    def __repr__(self) -> str:
        return f"ModelPool({self.model!r}, workers={self.workers})"
