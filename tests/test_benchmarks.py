"""The benchmarks' smoke mode: every case runs on tiny sizes and writes its JSON and markdown.

No timing is asserted here (timings live in benchmarks/results); only that the files exist with
the expected keys, that the memory probe sees an allocation, and that the materialised FPE
baseline computes the same edit as the fused path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CASES = (
    "fpe_sd15", "record_toy", "fpe_overhead", "k_targets", "record_sd15", "real_image",
    "inversion_quality", "null_text", "record_scaling", "probe_grid", "probe_stream",
    "record_sdxl", "fpe_sdxl",
)  # fmt: skip
VARIANT_KEYS = {"seconds", "time_ratio", "peak_rss_mib", "peak_ratio", "peak_delta_mib", "runs"}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--out", str(out)],
        check=True,
        cwd=ROOT,
        env=env,
        timeout=1800,
        capture_output=True,
    )
    return out


def test_quick_run_writes_every_case(quick_results: Path) -> None:
    results = json.loads((quick_results / "results.json").read_text())
    assert {"date", "profile", "machine", "peak_method", "cases"} <= set(results)
    assert results["profile"]["name"] == "quick"
    assert [c["case"] for c in results["cases"]] == list(CASES)
    for case in results["cases"]:
        assert (quick_results / f"{case['case']}.json").is_file()
        assert {"case", "title", "groups", "targets", "notes", "wall_seconds"} <= set(case)
        for group in case["groups"]:
            assert {"label", "model", "settings", "baseline", "variants"} <= set(group)
            assert group["baseline"] in group["variants"]
            for variant in group["variants"].values():
                assert set(variant) >= VARIANT_KEYS
                assert variant["seconds"] > 0
                assert variant["peak_rss_mib"] > 0


def test_quick_run_checks_targets_and_equivalence(quick_results: Path) -> None:
    cases = {
        c["case"]: c for c in json.loads((quick_results / "results.json").read_text())["cases"]
    }
    assert len(cases["k_targets"]["targets"]) == 2  # K = 1, 2 in quick mode
    assert len(cases["fpe_sd15"]["targets"]) == 3
    assert len(cases["record_toy"]["targets"]) == 1
    for target in cases["k_targets"]["targets"]:
        assert {"name", "measured", "limit", "met"} <= set(target)
    diff = cases["fpe_sd15"]["groups"][0]["checks"]["max_abs_diff_final_latents"]
    assert diff < 1e-3  # the materialised baseline computes the same edit as the fused path
    assert set(cases["record_toy"]["groups"][0]["variants"]) == {
        "plain", "record[auto]", "record[svd:8]", "record[pool:8]", "p2p_store",
    }  # fmt: skip
    probing = cases["probe_grid"]["groups"][0]
    assert set(probing["variants"]) == {"per_cell", "span", "span_2_processes"}
    assert probing["checks"]["max_abs_diff_acc_mean"] <= 0.05  # the span probe is the same probe
    assert probing["checks"]["span_2_processes_cells_differing_from_span"] == 0
    stream = cases["probe_stream"]["groups"][0]
    assert set(stream["variants"]) == {"in_memory", "streamed"}
    assert stream["checks"]["same_accuracies"] == 1.0 and stream["settings"]["groups"] > 1
    fpe = cases["fpe_overhead"]
    assert set(fpe["groups"][0]["variants"]) == {"plain", "fpe"} and len(fpe["targets"]) == 1
    assert len(cases["probe_grid"]["targets"]) == 1
    xl = cases["fpe_sdxl"]["groups"][0]  # tiny-xl's UNet stands in for SDXL's in quick mode
    assert xl["checks"]["max_abs_diff_final_latents"] < 1e-3 and xl["settings"]["batch"] == 4
    assert set(cases["record_sdxl"]["groups"][0]["variants"]) == {"plain", "record[svd:8]"}


def test_quick_run_writes_markdown(quick_results: Path) -> None:
    text = (quick_results / "README.md").read_text()
    assert text.startswith("# attnprobe benchmarks")
    assert "| variant | time (s) |" in text
    for title in ("FPE edit", "Recording overhead", "K targets", "Real-image edit"):
        assert title in text


def test_peak_memory_sees_a_torch_allocation() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.measure import measure

    def allocate() -> None:
        x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB of float32, touched
        assert float(x[-1]) == 1.0

    run = measure(allocate)
    assert run.peak_delta > 200 * 2**20
    assert run.seconds > 0
