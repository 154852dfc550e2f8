"""Dataset folders: atomic samples, resume, corruption, shards across processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from probe.prompts.templates import load_template
from probe.recording.dataset import parse_bytes, record_dataset
from probe.recording.folders import SettingsMismatchError, check_folder_settings
from probe.recording.recorder import BudgetError
from probe.recording.store import (
    INDEX,
    AttentionDataset,
    CorruptSampleError,
    parse_seeds,
    parse_shard,
    read_index,
    sample_specs,
    shard_specs,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"layers": "0,6,13", "num_steps": 3, "batch_size": 2, "progress": False, "model": "tiny"}


@pytest.fixture(scope="module")
def two_colours(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "two_colours.yaml"
    path.write_text('name: two_colours\nprompt: "a {colour} car"\nslots:\n  colour: [red, blue]\n')
    return path


def _cli_env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _record_cmd(template: Path, out: Path, seeds: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "probe.cli.main", "record", "--model", "tiny", "--template",
        str(template), "--seeds", seeds, "--num-steps", "3", "--layers", "0,6,13",
        "--batch-size", "1", "--out", str(out), *extra,
    ]  # fmt: skip


def test_seeds_shards_and_sizes(monkeypatch):
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(ValueError, match="low-high"):
        parse_seeds("5-2")
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("2/2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    assert parse_shard(None) == (2, 3)  # accelerate launch / torchrun
    specs = sample_specs(load_template("colour_car").items, range(5))
    shards = [shard_specs(specs, (i, 3)) for i in range(3)]
    assert sorted(s.id for part in shards for s in part) == sorted(s.id for s in specs)
    assert len({s.id for s in specs}) == 50
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30) and parse_bytes("500MB") == 500 * 2**20


def test_one_settings_guard_for_every_output_folder(tmp_path):
    check_folder_settings(tmp_path / "run", "run.json", {"steps": 3, "layers": (1, 2)}, "a run")
    check_folder_settings(tmp_path / "run", "run.json", {"steps": 3, "layers": [1, 2]}, "a run")
    with pytest.raises(SettingsMismatchError) as err:
        check_folder_settings(tmp_path / "run", "run.json", {"steps": 4, "seed": 1}, "a run")
    message = str(err.value)
    assert "holds a run with other settings" in message
    assert "seed: None → 1" in message and "steps: 3 → 4" in message and "layers" in message
    assert "another --out" in message and f"delete {tmp_path / 'run'}" in message
    # a file from an older version lacks a key: its default applies, and the file is upgraded
    (tmp_path / "run" / "run.json").write_text('{"steps": 3}')
    check_folder_settings(tmp_path / "run", "run.json", {"steps": 3, "scorer": "judges"}, "a run",
                          {"scorer": "judges"})  # fmt: skip
    assert json.loads((tmp_path / "run" / "run.json").read_text())["scorer"] == "judges"
    with pytest.raises(SettingsMismatchError, match="scorer: 'judges' → 'clip'"):
        check_folder_settings(tmp_path / "run", "run.json", {"steps": 3, "scorer": "clip"}, "a run")


def test_one_seed_parser_sorts_and_refuses_repeats():
    assert parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("1,5") == [1, 5]
    assert parse_seeds(7) == [7] and parse_seeds([3, 2]) == [2, 3]
    assert parse_seeds(" 9, 0 - 1") == [0, 1, 9] and parse_seeds(range(2)) == [0, 1]
    with pytest.raises(ValueError, match="'a-b' is not a seed or a range"):
        parse_seeds("a-b")
    with pytest.raises(ValueError, match="runs backwards.*'1-3'"):
        parse_seeds("3-1")
    with pytest.raises(ValueError, match="name 16 more than once"):
        parse_seeds("0-31,16")
    with pytest.raises(ValueError, match="name 1, 2 more than once"):
        parse_seeds([1, 2, 2, 1])
    with pytest.raises(ValueError, match="seed -1 .* negative"):
        parse_seeds([-1, 0])
    with pytest.raises(ValueError, match="no seeds"):
        parse_seeds(" ")


def test_resume_after_interruption_loses_nothing_and_redoes_truncated(
    tiny_pipe, two_colours, tmp_path
):
    prompts, out = load_template(two_colours), tmp_path / "ds"
    written = []

    def crash_after_three(entry):
        written.append(entry["id"])
        if len(written) == 3:
            raise KeyboardInterrupt  # interrupted mid-batch

    with pytest.raises(KeyboardInterrupt):
        record_dataset(tiny_pipe, prompts, range(3), out, on_sample=crash_after_three, **SMALL)
    assert len(read_index(out)) == 3
    first = out / read_index(out)[written[0]]["file"]
    first.write_bytes(first.read_bytes()[:1000])  # a partial file
    report = record_dataset(tiny_pipe, prompts, range(3), out, **SMALL)
    assert (report.skipped, report.recorded) == (2, 4)
    ds = AttentionDataset(out)
    assert len(ds) == 6 and ds.check() == {}
    assert sorted(ds.labels("colour")) == ["blue"] * 3 + ["red"] * 3
    maps = ds.load(0)
    assert maps.recorded_layers() == [0, 6, 13] and maps.steps == [0, 1, 2]
    assert maps[13, 2, "cross"].shape == (1, 1, 64, 5)  # trimmed to [BOS, a, red, car, EOS]
    assert not list(out.rglob("*.tmp"))


def test_corrupt_file_is_detected_not_read(tiny_pipe, two_colours, tmp_path):
    out = tmp_path / "ds"
    record_dataset(tiny_pipe, load_template(two_colours), [0], out, **SMALL)
    ds = AttentionDataset(out)
    path = out / ds.entries[1]["file"]
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSampleError, match="checksum.*rerun"):
        AttentionDataset(out).load(1)
    assert list(AttentionDataset(out).check()) == [ds.entries[1]["id"]]
    report = record_dataset(tiny_pipe, load_template(two_colours), [0], out, **SMALL)
    assert report.recorded == 1 and AttentionDataset(out).check() == {}


def test_torn_index_line_and_other_settings(tiny_pipe, two_colours, tmp_path):
    out = tmp_path / "ds"
    record_dataset(tiny_pipe, load_template(two_colours), [0], out, **SMALL)
    with open(out / INDEX, "a") as f:
        f.write('{"id": "p0000-a_red_car-s0009", "fi')  # a crash while appending
    assert len(AttentionDataset(out)) == 2
    with pytest.raises(SettingsMismatchError, match="num_inference_steps.*another --out"):
        record_dataset(tiny_pipe, load_template(two_colours), [0], out, **SMALL | {"num_steps": 4})


def test_budget_and_disk_checked_before_generating(tiny_pipe, two_colours, tmp_path):
    calls = []
    handle = tiny_pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(BudgetError, match="--max-disk"):
            record_dataset(tiny_pipe, load_template(two_colours), range(4), tmp_path / "a",
                           max_disk=10_000, **SMALL)  # fmt: skip
        with pytest.raises(BudgetError, match="--budget"):
            record_dataset(tiny_pipe, load_template(two_colours), range(4), tmp_path / "b",
                           self_reduce="full", budget_bytes=1000, **SMALL)  # fmt: skip
    finally:
        handle.remove()
    assert calls == []


def test_two_processes_with_shards_give_the_same_samples_as_one(tiny_pipe, two_colours, tmp_path):
    shared = tmp_path / "sharded"
    procs = [
        subprocess.Popen(_record_cmd(two_colours, shared, "0-2", "--shard", f"{i}/2"),
                         env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(2)
    ]  # fmt: skip
    single = tmp_path / "single"
    record_dataset(tiny_pipe, load_template(two_colours), range(3), single, **SMALL)
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err.decode()[-2000:]
    a, b = AttentionDataset(shared), AttentionDataset(single)
    assert [e["id"] for e in a.entries] == [e["id"] for e in b.entries]
    assert a.check() == {} and len(a) == 6
    for i in (0, 5):
        ma, mb = a.load(i), b.load(i)
        assert ma.tokens == mb.tokens and set(ma.data) == set(mb.data)
        for name in ma.data:  # batched vs unbatched: equal up to float rounding
            torch.testing.assert_close(ma.data[name], mb.data[name], atol=2e-3, rtol=0)


def test_killed_run_resumes_complete(tiny_pipe, two_colours, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_record_cmd(two_colours, out, "0-5"), env=_cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600  # generous: a loaded CI machine
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / INDEX).is_file() and len((out / INDEX).read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(read_index(out))
    assert 2 <= before < 12, "the run should have been killed midway"
    report = record_dataset(tiny_pipe, load_template(two_colours), range(6), out,
                            **SMALL | {"batch_size": 1})  # fmt: skip
    assert report.skipped == before
    ds = AttentionDataset(out)
    assert len(ds) == 12 and ds.check() == {}
    assert json.loads((out / "meta.json").read_text())["layers"] == [0, 6, 13]
