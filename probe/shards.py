"""Long jobs split over processes: the ranks of ``torchrun`` / ``accelerate launch``, or shards
started by hand with ``--shard i/n``.

Every sharded job here works the same way: shard ``i`` of ``n`` takes every n-th piece of the
whole job list from ``i`` (:meth:`ShardGroup.take`) and writes into the one output folder,
which every shard resumes from. ``record`` needs no more (the dataset index takes every
shard's samples); ``sweep``, ``reproduce`` and ``bench run`` then meet at
:meth:`ShardGroup.barrier` before anything reads what all shards wrote (a merged table, the
next stage of ``reproduce``), and shard 0 (:attr:`ShardGroup.main`) writes what is written
once.

The barrier is torch.distributed's, on the gloo backend (CPU or GPU alike: only the barrier
passes through it), when a launcher started the processes (``MASTER_ADDR``, ``RANK`` and
``WORLD_SIZE`` set, as torchrun and accelerate launch set them). Shards started by hand (on
machines sharing a file system) meet through marker files in the output folder instead:
``.shards/<barrier>/<i>-of-<n>``, kept, so a resumed shard passes a barrier the others
already passed.

    with ShardGroup.launched(args.shard, out) as group:
        for job in group.take(jobs): ...
        group.barrier("edits")
        if group.main: write_table(out)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from probe.recording.store import parse_shard

T = TypeVar("T")

BARRIER_HOURS = 48.0  # how long a shard waits for the others at a barrier
MARKERS = ".shards"  # the folder of the file barriers, in the job's output folder


def plan_tag(plan: Any) -> str:
    """A short name for a job list (anything JSON can write): its shards' barriers are named
    by it, so shards of another plan in the same folder never meet them."""
    return hashlib.sha256(json.dumps(plan, default=str).encode()).hexdigest()[:12]


class ShardGroup:
    """The processes of one sharded job, seen from one of them.

    Args:
        shard: ``(i, n)``: this process is shard ``i`` of ``n`` (``(0, 1)``: not sharded).
        folder: the job's output folder (for the file barriers of hand-started shards).
        poll_seconds: how often a file barrier looks for the others' markers.
        wait_hours: how long a barrier waits before giving up.

    Raises:
        ValueError: ``i`` not in ``0 .. n-1``.
    """

    def __init__(
        self, shard: tuple[int, int] = (0, 1), folder: str | Path | None = None,
        poll_seconds: float = 1.0, wait_hours: float = BARRIER_HOURS,
    ) -> None:  # fmt: skip
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard {index}/{count}: give 0 <= i < n, e.g. 0/2 and 1/2")
        self.index, self.count = index, count
        self.folder = None if folder is None else Path(folder)
        self.poll_seconds = poll_seconds
        self.wait_hours = wait_hours
        self._opened = False

    @classmethod
    def launched(cls, spec: str | None, folder: str | Path | None = None) -> ShardGroup:
        """The group of ``--shard spec`` (``"i/n"``), or by default the launcher's ranks
        (:func:`probe.recording.store.parse_shard`)."""
        return cls(parse_shard(spec), folder)

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def main(self) -> bool:
        """Whether this is shard 0, the one that writes what is written once."""
        return self.index == 0

    @property
    def suffix(self) -> str:
        """``".<i>-of-<n>"`` for a shard's own files (``""`` unsharded)."""
        return f".{self.index}-of-{self.count}" if self.sharded else ""

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's part of ``items``: every n-th from ``i``."""
        return list(items[self.index :: self.count])

    def barrier(self, name: str) -> None:
        """Wait until every shard has reached barrier ``name`` (at once when unsharded).

        Raises:
            TimeoutError: a hand-started shard's marker did not appear in ``wait_hours``.
            ValueError: hand-started shards without an output folder to meet in.
        """
        if not self.sharded:
            return
        if self._process_group():
            import torch.distributed as dist

            dist.barrier()
            return
        self._file_barrier(name)

    def _process_group(self) -> bool:
        """torch.distributed's group, opened on gloo at first use when a launcher started
        this process as this shard; ``False`` for shards started by hand."""
        import torch.distributed as dist

        if not dist.is_available():
            return False
        if dist.is_initialized():
            return dist.get_world_size() == self.count and dist.get_rank() == self.index
        env = os.environ
        launched = (
            "MASTER_ADDR" in env and "MASTER_PORT" in env
            and env.get("WORLD_SIZE") == str(self.count) and env.get("RANK") == str(self.index)
        )  # fmt: skip
        if not launched:
            return False
        dist.init_process_group("gloo", timeout=timedelta(hours=self.wait_hours))
        self._opened = True
        return True

    def _file_barrier(self, name: str) -> None:
        if self.folder is None:
            raise ValueError(
                "shards started by hand meet through files in their output folder: give one"
            )
        root = self.folder / MARKERS / name
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{self.index}-of-{self.count}").touch()
        deadline = time.monotonic() + self.wait_hours * 3600
        while True:
            missing = [i for i in range(self.count) if not (root / f"{i}-of-{self.count}").exists()]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"shard(s) {missing} of {self.count} did not reach {name!r} in "
                    f"{self.wait_hours:g} h (no marker in {root}): start them with --shard "
                    f"j/{self.count} on the same --out, then rerun this one to resume"
                )
            time.sleep(self.poll_seconds)

    def close(self) -> None:
        """Close the process group this object opened (if any)."""
        if self._opened:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._opened = False

    def __enter__(self) -> ShardGroup:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardGroup({self.index}/{self.count})"
