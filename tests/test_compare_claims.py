"""attnprobe compare: the claims of several reproduce runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editing.experiment.compare import compare_claims, read_claims


def _run(folder: Path, claims: list[tuple[str, str, str]]) -> Path:
    folder.mkdir(parents=True)
    rows = [{"key": k, "title": f"claim {k}", "verdict": v, "text": t} for k, v, t in claims]
    (folder / "claims.json").write_text(json.dumps(rows))
    return folder


def test_claims_of_two_runs_line_up_by_key(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", [("x", "held", "x in a"), ("y", "did not hold", "y in a")])
    b = _run(tmp_path / "b", [("y", "held", "y in b")])  # no x here
    text = compare_claims({"v1": a, "v2": b})
    lines = text.splitlines()
    assert lines[0] == "| claim | v1 | v2 |"
    assert "| claim x | held | — |" in lines
    assert "| claim y | did not hold | held |" in lines
    assert "- v1: y in a" in lines and "- v2: y in b" in lines
    assert "- v2: x" not in text


def test_a_run_without_claims_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a finished reproduce run"):
        read_claims(tmp_path)
    (tmp_path / "claims.json").write_text('{"key": 1}')
    with pytest.raises(ValueError, match="not a list of claims"):
        read_claims(tmp_path)


def test_the_cli_writes_the_table(tmp_path: Path) -> None:
    from probe.cli.main import main

    a = _run(tmp_path / "a", [("x", "held", "x in a")])
    out = tmp_path / "cmp.md"
    assert main(["compare", str(a), "--name", "toy v1", "--out", str(out)]) == 0
    assert "| claim x | held |" in out.read_text()
    with pytest.raises(SystemExit):
        main(["compare", str(a), "--name", "p", "--name", "q"])
