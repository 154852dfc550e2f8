"""Recorded datasets on disk: one safetensors file per sample, an index, and the settings.

A dataset is a folder::

    DIR/meta.json                  the recording settings (model, template, layers, steps, ...)
    DIR/index.jsonl                one JSON line per finished sample (appended, never rewritten)
    DIR/samples/<id>.safetensors   the sample's AttentionMaps (see :mod:`probe.recording.maps`)
    DIR/images/<id>.png            the generated image (``--images`` only)

A sample file is written to a temporary name, flushed to disk and renamed, and only then is its
index line appended (one ``write`` on a file opened for appending, then ``fsync``), so a crash
leaves either a finished sample or none, and several processes may append to one index. Each line
carries the file's size and SHA-256: a truncated or corrupt file is found, reported and redone,
never silently read. When the same sample appears twice, the later line wins.

Example:
    >>> ds = AttentionDataset("runs/colour_car")
    >>> len(ds), ds.labels("colour")[:3]
    (320, ['red', 'red', 'red'])
    >>> maps = ds.load(0)          # AttentionMaps of sample 0, checksum verified
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from probe.recording.folders import append_line, check_folder_settings, write_atomic
from probe.recording.maps import AttentionMaps

log = logging.getLogger(__name__)

META = "meta.json"
INDEX = "index.jsonl"
SAMPLES = "samples"
IMAGES = "images"


class CorruptSampleError(ValueError):
    """A sample file that is missing, truncated or does not match its checksum."""


@dataclass(frozen=True)
class SampleSpec:
    """One sample to generate: a prompt of the set, and the seed of its initial noise."""

    id: str
    prompt: str
    labels: dict[str, str]
    label_words: dict[str, str]
    seed: int

    @property
    def file(self) -> str:
        return f"{SAMPLES}/{self.id}.safetensors"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]


def sample_specs(items: Sequence[Any], seeds: Sequence[int]) -> list[SampleSpec]:
    """Every (prompt, seed) pair, prompt-major, with stable ids ``p0003-a_red_car-s0007``.

    Args:
        items: :class:`probe.prompts.templates.PromptItem` objects (prompt, labels, label_words).
        seeds: seeds of the initial noise; sample ``(p, s)`` starts from the noise of seed ``s``
            whatever its batch, so every prompt of a seed shares one starting point.
    """
    return [
        SampleSpec(
            f"p{i:04d}-{_slug(item.prompt)}-s{seed:04d}",
            item.prompt,
            dict(item.labels),
            dict(item.label_words),
            seed,
        )
        for i, item in enumerate(items)
        for seed in seeds
    ]


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """The one seed parser of every command: ``"0-31"``, ``"0,4,9"``, ``"0-3,10"``, an int or a
    list → sorted seeds.

    A seed names a sample's initial noise, so a seed given twice would be the same sample twice
    (a duplicate file in a dataset, a double weight in a sweep's means): it is refused, not
    silently dropped, since ``"0-31,16"`` is most likely a typo for another range. The order
    does not matter (the seeds come back sorted), so ``"3,1"`` and ``"1,3"`` are one run.

    Args:
        spec: ranges ``a-b`` (both ends included) and single seeds, comma-separated; an int; or
            a sequence of ints. Seeds are integers ``>= 0``.

    Returns:
        The seeds, sorted.

    Raises:
        ValueError: unreadable text, a range that runs backwards, a negative seed, no seeds, or
            a seed given twice; the message names it.

    Example:
        >>> parse_seeds("8-11,0")
        [0, 8, 9, 10, 11]
    """
    if isinstance(spec, int):
        seeds = [spec]
    elif isinstance(spec, str):
        seeds = _seed_text(spec)
    else:
        seeds = [int(s) for s in spec]
    if not seeds:
        raise ValueError(f"no seeds in {spec!r}: write e.g. '0-31' or '0,4,9'")
    if (low := min(seeds)) < 0:
        raise ValueError(f"seed {low} in {spec!r} is negative: seeds are integers >= 0")
    repeated = sorted(s for s, n in Counter(seeds).items() if n > 1)
    if repeated:
        shown = ", ".join(map(str, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
        raise ValueError(
            f"seeds {spec!r} name {shown} more than once: give each seed once "
            "(ranges such as '0-15,16-31' must not overlap)"
        )
    return sorted(seeds)


def _seed_text(spec: str) -> list[int]:
    return [s for part in spec.split(",") for s in _seed_part(part, spec)] if spec.strip() else []


def _seed_part(part: str, spec: str) -> list[int]:
    part = part.strip()
    if m := re.fullmatch(r"([0-9]+)\s*-\s*([0-9]+)", part):
        lo, hi = int(m[1]), int(m[2])
        if lo > hi:
            raise ValueError(f"seed range {part!r} runs backwards: write it low-high, '{hi}-{lo}'")
        return list(range(lo, hi + 1))
    if re.fullmatch(r"[0-9]+", part):
        return [int(part)]
    raise ValueError(
        f"seeds {spec!r}: {part!r} is not a seed or a range; use a range '0-31', a list '0,4,9' "
        "or both"
    )


def parse_shard(spec: str | None) -> tuple[int, int]:
    """``"1/4"`` → ``(1, 4)``; ``None`` → the launcher's rank and world size, else ``(0, 1)``.

    ``accelerate launch`` and ``torchrun`` set ``RANK`` and ``WORLD_SIZE`` for each process, so
    ``accelerate launch --num_processes N attnprobe record ...`` shards without ``--shard``.
    """
    if spec is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
        return (rank, world) if world > 1 else (0, 1)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or not 0 <= int(m[1]) < int(m[2]):
        raise ValueError(f"shard {spec!r}: write it i/n with 0 <= i < n, e.g. '0/2' and '1/2'")
    return int(m[1]), int(m[2])


def shard_specs(specs: Sequence[SampleSpec], shard: tuple[int, int]) -> list[SampleSpec]:
    """Shard ``i`` of ``n`` takes every n-th sample from ``i`` (balanced over prompts)."""
    i, n = shard
    return list(specs[i::n])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_index(root: Path) -> dict[str, dict[str, Any]]:
    """Sample id → its last index entry; a torn last line (a crash while appending) is skipped."""
    path = root / INDEX
    entries: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return entries
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries[entry["id"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d is not a complete index line; ignored", path, n)
    return entries


def verify_file(root: Path, entry: dict[str, Any], data: bytes | None = None) -> str | None:
    """Why the sample file of ``entry`` cannot be trusted, or ``None`` if it is intact."""
    path = root / entry["file"]
    if data is None:
        if not path.is_file():
            return "file missing"
        data = path.read_bytes()
    if len(data) != entry.get("bytes"):
        return f"{len(data)} bytes on disk, {entry.get('bytes')} in the index (truncated?)"
    if sha256(data) != entry.get("sha256"):
        return "checksum differs from the index (corrupt)"
    return None


class DatasetFolder:
    """The writing side of a dataset folder: settings, finished samples, new samples."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def ensure_meta(self, settings: dict[str, Any]) -> None:
        """Write ``meta.json``, or check that an existing one holds the same settings.

        Raises:
            SettingsMismatchError: the folder was recorded with other settings.
        """
        check_folder_settings(self.root, META, settings, what="a dataset recorded")

    def finished(self, specs: Sequence[SampleSpec]) -> set[str]:
        """Ids among ``specs`` whose index entry exists and whose file verifies."""
        entries = read_index(self.root)
        done = set()
        for spec in specs:
            entry = entries.get(spec.id)
            if entry is None:
                continue
            problem = verify_file(self.root, entry)
            if problem is None:
                done.add(spec.id)
            else:
                log.warning("sample %s: %s; it will be recorded again", spec.id, problem)
        return done

    def write_sample(
        self,
        spec: SampleSpec,
        maps: AttentionMaps,
        extra: dict[str, Any] | None = None,
        image: Any = None,
    ) -> dict[str, Any]:
        """Write one sample atomically and append its index line; returns the entry."""
        if image is not None:
            img_path = self.root / IMAGES / f"{spec.id}.png"
            img_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = img_path.with_name(f".{img_path.stem}.{os.getpid()}.tmp.png")
            image.save(tmp)
            os.replace(tmp, img_path)
        data = maps.to_bytes()
        write_atomic(self.root / spec.file, data)
        entry = asdict(spec) | (extra or {})
        entry.update(file=spec.file, bytes=len(data), sha256=sha256(data))
        if image is not None:
            entry["image"] = f"{IMAGES}/{spec.id}.png"
        append_line(self.root / INDEX, entry)
        return entry


class AttentionDataset:
    """A recorded dataset, read lazily: entries from the index, maps loaded one file at a time.

    Args:
        root: the dataset folder.

    Raises:
        FileNotFoundError: no ``index.jsonl`` in ``root``.

    Example:
        >>> ds = AttentionDataset("runs/colour_car")
        >>> for entry, maps in ds:
        ...     maps.word_map(entry["label_words"]["colour"])
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not (self.root / INDEX).is_file():
            raise FileNotFoundError(
                f"{self.root} is not a recorded dataset (no {INDEX}): record one with "
                "`attnprobe record --template NAME --seeds 0-31 --out DIR`"
            )
        meta = self.root / META
        self.meta: dict[str, Any] = json.loads(meta.read_text()) if meta.is_file() else {}
        entries = read_index(self.root)
        self.entries: list[dict[str, Any]] = sorted(entries.values(), key=lambda e: e["id"])

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return (
            f"AttentionDataset({str(self.root)!r}, {len(self)} samples, "
            f"model={self.meta.get('model')!r}, template={self.meta.get('template')!r})"
        )

    def labels(self, name: str) -> list[str]:
        """The value of label ``name`` for every sample, in dataset order."""
        if self.entries and name not in self.entries[0]["labels"]:
            raise KeyError(
                f"label {name!r} is not in {self.root}: its labels are "
                f"{sorted(self.entries[0]['labels'])} (pick one with --label)"
            )
        return [e["labels"][name] for e in self.entries]

    def classes(self, name: str) -> list[str]:
        """The classes of label ``name``: the template's order when known, else sorted."""
        present = set(self.labels(name))
        order = self.meta.get("classes", {}).get(name) or sorted(present)
        return [c for c in order if c in present]

    def load(self, i: int, layers: Iterable[int] | None = None) -> AttentionMaps:
        """The maps of sample ``i``, read once and checked against the index.

        With ``layers``, only those layers' tensors are read and the file is checked by its size
        only (verify it whole once first, e.g. with :meth:`check` or a full :meth:`load`).

        Raises:
            CorruptSampleError: the file is missing, truncated or corrupt.
        """
        entry = self.entries[i]
        path = self.root / entry["file"]
        if not path.is_file():
            raise CorruptSampleError(f"{path} is missing: {self._redo_hint()}")
        if layers is not None:
            size = path.stat().st_size
            if size != entry.get("bytes"):
                why = f"{size} bytes on disk, {entry.get('bytes')} in the index (truncated?)"
                raise CorruptSampleError(f"{path}: {why}; {self._redo_hint()}")
            try:
                return AttentionMaps.load(path, layers)
            except Exception as err:  # safetensors raises its own errors on a bad header
                raise CorruptSampleError(f"{path}: {err}; {self._redo_hint()}") from err
        data = path.read_bytes()
        problem = verify_file(self.root, entry, data)
        if problem is not None:
            raise CorruptSampleError(f"{path}: {problem}; {self._redo_hint()}")
        return AttentionMaps.from_bytes(data, source=str(path))

    def _redo_hint(self) -> str:
        return f"rerun the same `attnprobe record ... --out {self.root}` to record it again"

    def check(self) -> dict[str, str]:
        """Sample id → problem, for every sample whose file does not verify."""
        bad = {}
        for entry in self.entries:
            problem = verify_file(self.root, entry)
            if problem is not None:
                bad[entry["id"]] = problem
        return bad

    def __iter__(self) -> Iterator[tuple[dict[str, Any], AttentionMaps]]:
        for i, entry in enumerate(self.entries):
            yield entry, self.load(i)
