"""Long jobs in shards: the group and its barriers, a sweep split over shards, and ``sweep`` and
``reproduce`` run by two torchrun processes (gloo) or two hand-started shards equal to one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from editing.sweep.run import sweep
from editing.sweep.table import read_rows, row_key
from probe.prompts.templates import load_edit_pairs
from probe.shards import ShardGroup

BIN = Path(sys.executable).parent
CLI = shutil.which("attnprobe", path=str(BIN)) or "attnprobe"
TORCHRUN = shutil.which("torchrun", path=str(BIN))
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


def test_a_shard_takes_every_nth_job_and_names_its_files():
    group = ShardGroup((1, 3))
    assert group.take(list(range(8))) == [1, 4, 7] and group.suffix == ".1-of-3"
    assert not group.main and group.sharded
    assert ShardGroup().take([1, 2]) == [1, 2] and ShardGroup().suffix == ""
    with pytest.raises(ValueError, match="3/3: give 0 <= i < n"):
        ShardGroup((3, 3))
    ShardGroup().barrier("anything")  # unsharded: returns at once, writes nothing


def test_hand_started_shards_meet_through_marker_files(tmp_path, monkeypatch):
    for name in ("MASTER_ADDR", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    order = []

    def shard(i):
        ShardGroup((i, 2), tmp_path, poll_seconds=0.01).barrier("stage")
        order.append(i)

    late = threading.Thread(target=shard, args=(1,))
    late.start()
    late.join(0.2)
    assert late.is_alive() and not order  # shard 1 waits for shard 0
    shard(0)
    late.join(5)
    assert sorted(order) == [0, 1]
    assert sorted(p.name for p in (tmp_path / ".shards" / "stage").iterdir()) == [
        "0-of-2", "1-of-2"]  # fmt: skip
    ShardGroup((1, 2), tmp_path).barrier("stage")  # kept: a resumed shard passes at once
    with pytest.raises(TimeoutError, match=r"shard\(s\) \[1\] of 2 did not reach 'next'.*--shard"):
        ShardGroup((0, 2), tmp_path, poll_seconds=0.01, wait_hours=1e-6).barrier("next")
    with pytest.raises(ValueError, match="output folder"):
        ShardGroup((0, 2)).barrier("stage")


class _NoWait(ShardGroup):
    """A shard whose barriers pass at once: the shards of one test process run one by one."""

    def barrier(self, name: str) -> None:
        self.met = [*getattr(self, "met", []), name]


def test_a_sweep_in_shards_writes_the_table_of_one(tiny_pipe, tmp_path):
    pairs = load_edit_pairs("colour_edits").pairs[:2]  # one source: a shard per seed
    args = {"ranges": ["none", "fpe", "0-3"], "kinds": ["self"], "seeds": [0, 1],
            "num_steps": 2, "progress": False}  # fmt: skip
    one = sweep(tiny_pipe, pairs, out=tmp_path / "one", **args)
    two = tmp_path / "two"
    late = _NoWait((1, 2), two)
    shard_rows = sweep(tiny_pipe, pairs, out=two, group=late, **args)
    assert shard_rows == [] and (two / "sweep.1-of-2.csv").is_file()  # no merge: not shard 0
    assert len(late.met) == 2 and late.met[0].endswith("-edited")
    mine = {row_key(r) for r in read_rows(two / "sweep.1-of-2.csv")}
    first = _NoWait((0, 2), two)
    merged = sweep(tiny_pipe, pairs, out=two, group=first, **args)
    assert first.met == late.met  # both shards meet at the same barriers
    assert not list(two.glob("sweep.*-of-*.csv")) and (two / "summary.json").is_file()
    assert [row_key(r) for r in merged] == [row_key(r) for r in one]  # plan order kept
    assert merged == read_rows(tmp_path / "one" / "sweep.csv")
    assert mine and mine < {row_key(r) for r in merged}
    again = sweep(tiny_pipe, pairs, out=two, **args)  # unsharded rerun: nothing left to do
    assert again == merged


def test_an_unsharded_run_resumes_a_sharded_one(tiny_pipe, tmp_path):
    pairs = load_edit_pairs("colour_edits").pairs[:2]
    args = {"ranges": ["none", "fpe"], "kinds": ["self"], "num_steps": 2, "progress": False}
    args |= {"seeds": [0, 1]}
    sweep(tiny_pipe, pairs, out=tmp_path, group=_NoWait((1, 2), tmp_path), **args)
    done = read_rows(tmp_path / "sweep.1-of-2.csv")
    rows = sweep(tiny_pipe, pairs, out=tmp_path, **args)  # does shard 0's part, folds shard 1's
    assert len(rows) == 8 and not (tmp_path / "sweep.1-of-2.csv").exists()
    assert all(r in rows for r in done)
    with pytest.raises(ValueError, match="needs out="):
        sweep(tiny_pipe, pairs, group=ShardGroup((0, 2)), **args)


def _sweep_cmd(out: Path, *extra: str) -> list[str]:
    return [CLI, "sweep", "--model", "tiny", "--max-pairs", "3", "--ranges", "none", "fpe",
            "--kinds", "self", "--num-steps", "2", "--seeds", "0-1", "--out", str(out),
            *extra]  # fmt: skip


@pytest.mark.slow
def test_sweep_by_torchrun_and_by_hand_started_shards_equals_one_process(tmp_path):
    subprocess.run(_sweep_cmd(tmp_path / "one"), check=True, env=ENV, capture_output=True)
    one = (tmp_path / "one" / "sweep.csv").read_text()
    by_hand = [subprocess.Popen(_sweep_cmd(tmp_path / "hand", "--shard", f"{i}/2"), env=ENV,
                                stdout=subprocess.PIPE) for i in (0, 1)]  # fmt: skip
    printed = [p.communicate()[0].decode() for p in by_hand]
    assert [p.returncode for p in by_hand] == [0, 0]
    assert "fpe" in printed[0] and printed[1] == ""  # shard 0 prints the whole table
    assert (tmp_path / "hand" / "sweep.csv").read_text() == one
    assert (tmp_path / "hand" / ".shards").is_dir()
    if TORCHRUN is None:
        pytest.skip("torchrun is not installed beside this Python")
    launch = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "--no-python"]
    subprocess.run([*launch, *_sweep_cmd(tmp_path / "two")], check=True, env=ENV)
    assert (tmp_path / "two" / "sweep.csv").read_text() == one
    assert not (tmp_path / "two" / ".shards").exists()  # met through gloo, not files


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed beside this Python")
def test_reproduce_by_two_torchrun_processes_equals_one(tmp_path):
    run = [CLI, "reproduce", "--model", "tiny", "--quick", "--no-progress", "--out"]
    subprocess.run([*run, str(tmp_path / "one")], check=True, env=ENV, capture_output=True)
    launch = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "--no-python"]
    done = subprocess.run([*launch, *run, str(tmp_path / "two")], check=True, env=ENV,
                          capture_output=True, text=True)  # fmt: skip
    said = done.stdout.splitlines()
    assert sum(line.startswith("report: ") for line in said) == 1  # shard 0 speaks for all
    assert sum(line == "[1/7] record ..." for line in said) == 1
    one, two = tmp_path / "one", tmp_path / "two"
    for name in ("sweep/sweep.csv", "selection.json", "claims.json",
                 "probe/colour_car/results.csv"):  # fmt: skip
        assert (two / name).read_text() == (one / name).read_text(), name
    ids = [sorted(json.loads(line)["id"] for line in
                  (d / "data" / "colour_car" / "index.jsonl").read_text().splitlines())
           for d in (one, two)]  # fmt: skip
    assert ids[0] == ids[1] and ids[0]
    assert (two / "report.html").is_file() and not list((two / "sweep").glob("sweep.*-of-*"))
