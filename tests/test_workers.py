"""Worker processes: a sweep and a recording on a ModelPool give what one process gives."""

from __future__ import annotations

import pytest
import torch

from editing.sweep.run import sweep
from editing.sweep.table import read_rows
from probe.probing.results import ProbeResults
from probe.prompts.templates import load_edit_pairs, load_template
from probe.recording.dataset import record_dataset
from probe.recording.store import AttentionDataset
from probe.workers import ModelPool, cpu_workers

FAST = {"num_steps": 3, "progress": False}
pytestmark = pytest.mark.slow  # worker processes import torch and diffusers (~10 s)


def _device(pipe) -> str:
    return str(pipe.device)


@pytest.fixture(scope="module")
def pool():
    with ModelPool("tiny", workers=2) as p:
        yield p


@pytest.fixture
def one_thread():
    """This process with one torch thread, as the workers run (the same arithmetic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_pool_runs_tasks_on_its_own_model(pool):
    assert cpu_workers(3) == 3 and cpu_workers() >= 1
    assert [pool.submit(_device).result() for _ in range(3)] == ["cpu"] * 3


def test_pooled_sweep_equals_the_serial_one(tiny_pipe, pool, tmp_path, one_thread):
    pairs = load_edit_pairs("colour_edits").pairs[:3]
    ranges = ["none", "fpe", "all"]
    serial = sweep(tiny_pipe, pairs, ranges, seeds=[0, 1], out=tmp_path / "a", **FAST)
    pooled = sweep(tiny_pipe, pairs, ranges, seeds=[0, 1], out=tmp_path / "b", pool=pool, **FAST)
    assert len(pooled) == len(serial) == 2 * 3 * 2 * 3  # kinds x ranges x seeds x pairs
    for a, b in zip(serial, pooled, strict=True):  # the same rows, in the plan's order
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=1e-6, nan_ok=True), k
    key = ("kind", "range", "seed", "target")
    on_disk = [[tuple(r[k] for k in key) for r in read_rows(tmp_path / d / "sweep.csv")]
               for d in ("a", "b")]  # fmt: skip
    assert on_disk[0] == on_disk[1]  # appended in the plan's order, whatever finished first
    again = sweep(tiny_pipe, pairs, ranges, seeds=[0, 1], out=tmp_path / "b", pool=pool, **FAST)
    assert len(again) == len(pooled)  # resumed: nothing new to run


def test_recording_in_shards_on_a_pool_equals_one_process(tiny_pipe, pool, tmp_path, one_thread):
    prompts = load_template("colour_car")
    args = {"model": "tiny", "layers": "0,13", "num_steps": 2, "progress": False}
    record_dataset(tiny_pipe, prompts, [0, 1], tmp_path / "a", **args)
    futures = [
        pool.submit(record_dataset, prompts, [0, 1], tmp_path / "b", shard=(i, 2), **args)
        for i in range(2)
    ]
    for f in futures:
        f.result()
    a, b = AttentionDataset(tmp_path / "a"), AttentionDataset(tmp_path / "b")
    assert [e["id"] for e in a.entries] == [e["id"] for e in b.entries]
    for i in range(len(a)):
        x, y = a.load(i), b.load(i)
        assert x.data.keys() == y.data.keys()
        assert max((x.data[k].float() - y.data[k].float()).abs().max() for k in x.data) < 1e-3


def test_reproduce_on_two_workers_gives_the_serial_run(tmp_path, one_thread):
    import json

    from editing.experiment.reproduction import ReproduceConfig, reproduce

    config = ReproduceConfig.preset("tiny", quick=True)
    reproduce(tmp_path / "serial", config, progress=False, workers=1)
    reproduce(tmp_path / "pooled", config, progress=False, workers=2)

    def read(run: str, name: str) -> object:
        return json.loads((tmp_path / run / name).read_text())

    assert read("pooled", "selection.json")["layers"] == read("serial", "selection.json")["layers"]
    for a, b in zip(read("serial", "sweep/summary.json"), read("pooled", "sweep/summary.json"),
                    strict=True):  # fmt: skip
        assert (a["kind"], a["range"]) == (b["kind"], b["range"])
        assert a["success"] == pytest.approx(b["success"]) and a["iou"] == pytest.approx(b["iou"])
    assert (tmp_path / "pooled" / "figures" / "edit_grid.png").stat().st_size > 0
    # shards batch the samples differently: maps differ by fp16 noise, which can move one
    # held-out prediction of tiny's near-chance probes (20 samples), not more
    a, b = (ProbeResults.from_csv(tmp_path / r / "probe" / "colour_car" / "results.csv").rows
            for r in ("serial", "pooled"))  # fmt: skip
    assert [(r.layer, r.step, r.kind) for r in a] == [(r.layer, r.step, r.kind) for r in b]
    diffs = [abs(x.acc_mean - y.acc_mean) for x, y in zip(a, b, strict=True)]
    assert max(diffs) <= 0.1 and sum(d > 0 for d in diffs) <= len(diffs) // 4


def test_workers_are_as_many_as_the_memory_holds(tiny_pipe, monkeypatch):
    import probe.workers as workers

    monkeypatch.setattr(workers, "cpu_workers", lambda requested=None: requested or 4)
    assert workers.affordable_workers(tiny_pipe) == 4  # a few MiB of weights
    memory = workers.os.sysconf("SC_PHYS_PAGES") * workers.os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(workers, "model_bytes", lambda pipe: memory // 5)  # 2 copies in half
    assert workers.affordable_workers(tiny_pipe) == 1  # the caller's copy and one worker's
    monkeypatch.setattr(workers, "model_bytes", lambda pipe: memory)
    assert workers.affordable_workers(tiny_pipe) == 1
