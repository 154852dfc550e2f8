"""Run attnprobe's benchmarks and write JSON plus a markdown table.

    python benchmarks/run_all.py --out benchmarks/results            # full run (make bench)
    python benchmarks/run_all.py --out /tmp/bench --quick            # smoke mode, < 1 min
    python benchmarks/run_all.py --out benchmarks/results --cases fpe_sd15,k_targets
    python benchmarks/run_all.py --out /tmp/bench --cases fpe_sdxl --sdxl-latent 32  # smoke

The SDXL cases (``record_sdxl``, ``fpe_sdxl``) hold the 9.6 GiB SDXL UNet: run them one per
process (``--cases record_sdxl``, then ``--cases fpe_sdxl``; see ``benchmarks/cases_sdxl.py``).

Every case writes ``<out>/<case>.json`` as soon as it finishes; ``results.json`` and
``README.md`` are then rebuilt from every case file in ``<out>``, so a run of some cases keeps
the others' last results. See ``docs/performance.md`` for what the numbers mean.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from benchmarks.profiles import PROFILES, Bench  # noqa: E402

# the cases with targets first, so a run cut short still has them
CASE_ORDER = (
    "fpe_sd15", "record_toy", "fpe_overhead", "k_targets", "record_sd15", "real_image",
    "inversion_quality", "null_text", "record_scaling", "probe_grid", "probe_stream",
    "record_sdxl", "fpe_sdxl",
)  # fmt: skip
SDXL_CASES = ("record_sdxl", "fpe_sdxl")


def cases() -> dict[str, Callable[[Bench], dict[str, Any]]]:
    """Case name → function."""
    from benchmarks import (
        cases_edit,
        cases_inversion,
        cases_overhead,
        cases_probe,
        cases_record,
        cases_sdxl,
        cases_stream,
    )

    return {
        "fpe_sd15": cases_edit.fpe_sd15,
        "record_sd15": cases_record.record_sd15,
        "record_toy": cases_record.record_toy,
        "k_targets": cases_edit.k_targets,
        "fpe_overhead": cases_overhead.fpe_overhead,
        "real_image": cases_edit.real_image,
        "inversion_quality": cases_inversion.inversion_quality,
        "null_text": cases_edit.null_text,
        "record_scaling": cases_record.record_scaling,
        "probe_grid": cases_probe.probe_grid,
        "probe_stream": cases_stream.probe_stream,
        "record_sdxl": cases_sdxl.record_sdxl,
        "fpe_sdxl": cases_sdxl.fpe_sdxl,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for JSON and README.md")
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, one run each")
    p.add_argument("--cases", default="all", help=f"comma list of: {', '.join(CASE_ORDER)}")
    p.add_argument("--model", default=None, help="toy or tiny (default: toy if trained)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument(
        "--sdxl-latent", type=int, default=None,
        help="latent size of the SDXL cases (default 128 = 1024 px; e.g. 32 for a smoke run)",
    )  # fmt: skip
    return p.parse_args(argv)


def selected(spec: str) -> list[str]:
    """The cases to run, in :data:`CASE_ORDER`."""
    if spec == "all":
        return list(CASE_ORDER)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = sorted(set(names) - set(CASE_ORDER))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}: choose from {', '.join(CASE_ORDER)}")
    return [c for c in CASE_ORDER if c in names]


def _load() -> float | None:
    """The machine's 1-minute load average (other work running beside the benchmark)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measured_on() -> dict[str, Any]:
    """When a case ran, on what, and how busy the machine was as it started."""
    from benchmarks.rigs import describe_machine

    machine = describe_machine()
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": machine["cpu"],
        "torch_threads": machine["torch_threads"],
        "load_before": _load(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks import report
    from benchmarks.measure import PEAK_METHOD
    from benchmarks.rigs import describe_machine

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = PROFILES["quick" if args.quick else "full"]
    if args.sdxl_latent:
        profile = replace(profile, sdxl_latent=args.sdxl_latent)
    model = args.model or ("tiny" if args.quick else None)
    bench = Bench(profile, model, log=lambda s: print(s, flush=True))
    out = Path(args.out)
    funcs = cases()
    todo = selected(args.cases)
    for name in todo:
        if name not in ("fpe_sd15", "record_sd15"):
            bench.drop_sd15()
        if name not in SDXL_CASES:
            bench.drop_sdxl()
        print(f"[{name}]", flush=True)
        started = measured_on()
        t0 = time.perf_counter()
        result = funcs[name](bench)
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        result["measured"] = started | {"load_after": _load()}
        print(f"  wrote {report.write_case(out, result)} ({result['wall_seconds']} s)", flush=True)
    header = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile.as_dict(),
        "machine": describe_machine(),
        "peak_method": PEAK_METHOD,
    }
    paths = report.write_summary(out, report.load_cases(out, CASE_ORDER), header)
    print("results: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
