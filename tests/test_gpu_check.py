"""``make gpu-check`` in tiny mode (what CI runs without a GPU): every model and variant runs,
each row has a time and a peak, and the JSON is written (issue 30, item 3)."""

from __future__ import annotations

import json

import pytest

from benchmarks.gpu_check import MODELS, main

VARIANTS = {"plain", "record[svd:8]", "fpe_fused", "fpe_materialised"}


@pytest.mark.slow
def test_gpu_check_runs_every_case_in_tiny_mode(tmp_path, capsys):
    assert main(["--tiny", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    rows = report["rows"]
    assert {(r["model"], r["dtype"], r["variant"]) for r in rows} == {
        (m, d, v) for m in MODELS for d in ("float32", "bfloat16") for v in VARIANTS
    }
    assert all(r["seconds"] > 0 and r["peak_mib"] > 0 for r in rows)
    assert report["tiny"] and "| fpe_materialised |" in capsys.readouterr().out
