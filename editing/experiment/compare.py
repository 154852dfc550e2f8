"""The paper's claims side by side across reproduce runs (toy v1 and v2, two checkpoints).

Every ``attnprobe reproduce`` folder holds ``claims.json``: each claim's key, title, verdict and
paragraph. :func:`compare_claims` lines several runs up, one row per claim, and writes the
paragraphs under it, run by run, so that a findings page can show them together.

    print(compare_claims({"toy v1": Path("runs/findings_v1"), "toy v2": Path("runs/findings_v2")}))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from editing.experiment.report import CLAIMS


def read_claims(run: Path) -> list[dict[str, Any]]:
    """The claims of one reproduce folder, in its order.

    Raises:
        FileNotFoundError: the folder has no claims.json (the run did not reach its report).
        ValueError: the file is not a list of claims.
    """
    path = Path(run) / CLAIMS
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {run} is not a finished reproduce run; run "
            f"`attnprobe reproduce --out {run}` (it resumes) and compare again"
        )
    try:
        claims = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rerun the report") from err
    if not isinstance(claims, list) or not all(
        isinstance(c, dict) and {"key", "title", "verdict", "text"} <= set(c) for c in claims
    ):
        raise ValueError(f"{path} is not a list of claims with key, title, verdict and text")
    return claims


def compare_claims(runs: Mapping[str, Path]) -> str:
    """A Markdown table of every claim's verdict in each run, then each claim's paragraphs.

    Args:
        runs: a name for each run (the column's heading) and its reproduce folder.

    Returns:
        Markdown. A claim missing from a run (e.g. no animal sweep there) reads ``—``.

    Raises:
        ValueError: no runs.
    """
    if not runs:
        raise ValueError("compare_claims needs at least one run folder")
    by_run = {name: {c["key"]: c for c in read_claims(path)} for name, path in runs.items()}
    keys: dict[str, str] = {}  # key → title, in first-seen order over the runs
    for claims in by_run.values():
        for key, c in claims.items():
            keys.setdefault(key, c["title"])
    names = list(by_run)
    lines = ["| claim | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, title in keys.items():
        verdicts = [by_run[n][key]["verdict"] if key in by_run[n] else "—" for n in names]
        lines.append(f"| {title} | " + " | ".join(verdicts) + " |")
    for key, title in keys.items():
        lines += ["", f"**{title}**", ""]
        lines += [f"- {n}: {by_run[n][key]['text']}" for n in names if key in by_run[n]]
    return "\n".join(lines) + "\n"
