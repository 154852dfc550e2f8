"""Benchmark results on disk: one JSON per case, ``results.json`` with all of them, and a
markdown summary (``README.md``) with one table per comparison and the targets met or missed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CASE_KEYS = ("case", "title", "groups", "targets", "notes")
GROUP_KEYS = ("label", "model", "settings", "baseline", "variants")
VARIANT_KEYS = ("seconds", "time_ratio", "peak_rss_mib", "peak_ratio", "peak_delta_mib")


def write_case(out: Path, result: dict[str, Any]) -> Path:
    """Write ``<out>/<case>.json`` and return its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['case']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def load_cases(out: Path, order: Sequence[str]) -> list[dict[str, Any]]:
    """Every case JSON present in ``out``, in ``order`` (a partial run keeps older cases)."""
    found = []
    for name in order:
        path = out / f"{name}.json"
        if path.is_file():
            found.append(json.loads(path.read_text()))
    return found


def write_summary(out: Path, cases: list[dict[str, Any]], header: dict[str, Any]) -> list[Path]:
    """Write ``results.json`` (header + cases) and ``README.md``; return both paths."""
    results = out / "results.json"
    results.write_text(json.dumps({**header, "cases": cases}, indent=2) + "\n")
    readme = out / "README.md"
    readme.write_text(markdown(cases, header))
    return [results, readme]


def markdown(cases: list[dict[str, Any]], header: dict[str, Any]) -> str:
    """The whole results page."""
    m = header["machine"]
    lines = [
        "# attnprobe benchmarks",
        "",
        f"Written by `python benchmarks/run_all.py` (profile `{header['profile']['name']}`) on "
        f"{header['date']}, from each case's file: a case run on its own (`--cases`) keeps its "
        "own date, machine and load, written under its title.",
        "",
        f"Machine of the last run: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch "
        f"threads, {m['memory_gib']} GiB RAM; Python {m['python']}, torch {m['torch']}, diffusers "
        f"{m['diffusers']}. Peak memory: {header['peak_method']}. Times are medians of the "
        "timed runs; ratios are medians over the baseline's median.",
        "",
    ]
    for case in cases:
        lines += case_markdown(case)
    return "\n".join(lines) + "\n"


def case_markdown(case: dict[str, Any]) -> list[str]:
    """Title, one table per group, targets and notes of one case."""
    lines = [f"## {case['title']}", ""]
    if "measured" in case:
        on = case["measured"]
        lines += [
            f"Measured {on['date']} on {on['cpu']}, {on['torch_threads']} torch threads; load "
            f"average {on['load_before']} as it started, {on['load_after']} as it ended.",
            "",
        ]
    for group in case["groups"]:
        lines += group_table(group)
    if case["targets"]:
        lines += ["Targets:", ""]
        for t in case["targets"]:
            verdict = "met" if t["met"] else "**missed**"
            lines.append(f"- {t['name']}: measured {_fmt(t['measured'])} → {verdict}")
        lines.append("")
    for note in case["notes"]:
        lines.append(f"- {note}")
    lines.append("")
    return lines


def group_table(group: dict[str, Any]) -> list[str]:
    """A markdown table of one comparison."""
    settings = ", ".join(f"{k} {v}" for k, v in group["settings"].items())
    base = group["baseline"]
    lines = [
        f"### {group['label']}",
        "",
        f"Settings: {settings}.",
        "",
        f"| variant | time (s) | time / {base} | peak RSS (MiB) | peak / {base} "
        f"| peak above start (MiB) | above start / {base} | maps kept (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    extra = group.get("extra", {})
    for name, v in group["variants"].items():
        kept = extra.get(name, {}).get("maps_mib", "")
        lines.append(
            f"| {name} | {v['seconds']:.3g} | {_fmt(v['time_ratio'])} | {v['peak_rss_mib']:.0f} "
            f"| {_fmt(v['peak_ratio'])} | {v['peak_delta_mib']:.0f} | {_fmt(v['delta_ratio'])} "
            f"| {kept} |"
        )
    for key, value in group.get("checks", {}).items():
        lines.append(f"\n{key}: {value:.3g}")
    lines.append("")
    return lines


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"
