"""What every resumable output folder shares: atomic writes, appended lines, a settings guard.

    check_folder_settings(out, "sweep.json", settings, "a sweep run")   # refuse other settings
    write_atomic(out / "meta.json", data)      # temporary name, fsync, rename
    append_line(out / "index.jsonl", record)   # one O_APPEND write, then fsync

A recorded dataset (:mod:`probe.recording.store`), a sweep (:mod:`editing.sweep.run`) and a
``reproduce`` run (:mod:`editing.experiment.reproduction`) each resume in their folder, and each
refuses, through :func:`check_folder_settings`, to resume one made with other settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class SettingsMismatchError(ValueError):
    """An output folder (dataset, sweep, reproduce run) made with other settings."""


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` (``O_APPEND``) and ``fsync``."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_folder_settings(
    folder: str | Path,
    name: str,
    settings: dict[str, Any],
    what: str,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Write the settings file ``folder/name``, or refuse a folder made with other settings.

    The one guard of every resumable output folder (a dataset's ``meta.json``, a sweep's
    ``sweep.json``, a reproduce run's ``reproduce.json``): a rerun into the same folder resumes
    it only when it asks for the same settings, so one folder never mixes two runs.

    Args:
        folder: the output folder (created if missing).
        name: the settings file inside it.
        settings: this run's settings, JSON-ready (a tuple equals a list, as in JSON).
        what: what the folder holds, for the message (``"a sweep run"``).
        defaults: values for keys that a file written by an older version lacks; such a file
            is rewritten with today's keys when the rest agrees.

    Raises:
        SettingsMismatchError: the file holds other settings; the message names every key
            that differs (saved → now) and the ways out.

    Example:
        >>> check_folder_settings("runs/sweep", "sweep.json", {"num_steps": 20}, "a sweep run")
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    wanted = json.loads(json.dumps(settings))
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is not None:
        have = {**(defaults or {}), **saved}
        diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
        if diff:
            shown = ", ".join(f"{k}: {have.get(k)!r} → {wanted.get(k)!r}" for k in diff)
            raise SettingsMismatchError(
                f"{folder} holds {what} with other settings (saved → now: {shown}): write to "
                f"another --out folder, delete {folder} to start again, or rerun with the "
                f"settings in {path}"
            )
    if saved != wanted:
        write_atomic(path, (json.dumps(wanted, indent=2, sort_keys=True) + "\n").encode())
