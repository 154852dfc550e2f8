"""Wall time and peak memory of benchmark variants, measured in one process, interleaved.

Peak memory is the process's peak resident set size (RSS). PyTorch's CPU allocations bypass
Python's allocator, so ``tracemalloc`` does not see them; the kernel does. On Linux the peak
(``VmHWM`` in ``/proc/self/status``) is reset before each run by writing ``5`` to
``/proc/self/clear_refs``, so every run gets its own exact peak. Where that is not allowed, a
thread samples the RSS every 2 ms instead (and may miss a peak shorter than that).

Before each run: ``gc.collect()`` and glibc's ``malloc_trim(0)``, so memory freed by the previous
run goes back to the system and does not hide (or inflate) the next run's peak.

    runs = run_interleaved({"plain": plain, "record": record}, repeats=5)
    table = summarize(runs, baseline="plain")
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class Run:
    """One timed run of one variant.

    Attributes:
        seconds: wall time.
        start_rss: resident memory just before the run, bytes.
        peak_rss: peak resident memory during the run, bytes.
    """

    seconds: float
    start_rss: int
    peak_rss: int

    @property
    def peak_delta(self) -> int:
        """Memory the run added on top of what the process already held, bytes."""
        return max(0, self.peak_rss - self.start_rss)


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{field} is not in {STATUS}")
    return int(match[1]) * 1024


def current_rss() -> int:
    """The process's resident memory now, bytes."""
    return _status_kib("VmRSS")


def _can_reset_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


PEAK_METHOD = (
    "VmHWM reset via /proc/self/clear_refs"
    if STATUS.exists() and _can_reset_peak()
    else "RSS sampled every 2 ms (psutil)"
)


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc only)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, self.process.memory_info().rss)


def measure(fn: Callable[[], Any]) -> Run:
    """Run ``fn`` once; return its wall time and peak memory."""
    release_memory()
    sampler = None
    if PEAK_METHOD.startswith("VmHWM"):
        start = current_rss()
        CLEAR_REFS.write_text("5")
    else:
        sampler = _Sampler()
        start = sampler.peak
        sampler.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    if sampler is None:
        peak = _status_kib("VmHWM")
    else:
        sampler.done.set()
        sampler.join()
        peak = sampler.peak
    return Run(seconds, start, peak)


def run_interleaved(
    variants: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, list[Run]]:
    """Run every variant ``repeats`` times, interleaved: A B C, C B A, A B C, ...

    Reversing the order every round spreads slow drifts (thermal, other processes) evenly
    over the variants. With ``warmup``, each variant runs once first, unrecorded.

    Returns:
        Variant name → its runs, in the order they ran.
    """
    names = list(variants)
    if warmup:
        for name in names:
            variants[name]()
    runs: dict[str, list[Run]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            run = measure(variants[name])
            runs[name].append(run)
            log(f"    {name}: {run.seconds:.2f} s, peak {run.peak_rss / 2**20:.0f} MiB")
    return runs


def summarize(runs: Mapping[str, list[Run]], baseline: str) -> dict[str, dict[str, Any]]:
    """Medians of each variant and their ratios to ``baseline``'s medians.

    Returns:
        Variant name → ``seconds`` (median), ``seconds_min``, ``seconds_max``, ``peak_rss_mib``
        and ``peak_delta_mib`` (medians), ``time_ratio``, ``peak_ratio``, ``delta_ratio`` and
        the raw ``runs``.
    """
    base = _medians(runs[baseline])
    table = {}
    for name, rs in runs.items():
        med = _medians(rs)
        table[name] = {
            **med,
            "seconds_min": round(min(r.seconds for r in rs), 4),
            "seconds_max": round(max(r.seconds for r in rs), 4),
            "time_ratio": _ratio(med["seconds"], base["seconds"]),
            "peak_ratio": _ratio(med["peak_rss_mib"], base["peak_rss_mib"]),
            "delta_ratio": _ratio(med["peak_delta_mib"], base["peak_delta_mib"]),
            "runs": [asdict(r) | {"peak_delta": r.peak_delta} for r in rs],
        }
    return table


def _medians(rs: list[Run]) -> dict[str, float]:
    mib = 2**20
    return {
        "seconds": round(statistics.median(r.seconds for r in rs), 4),
        "peak_rss_mib": round(statistics.median(r.peak_rss for r in rs) / mib, 1),
        "peak_delta_mib": round(statistics.median(r.peak_delta for r in rs) / mib, 1),
    }


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None
