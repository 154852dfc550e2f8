"""A layer table on disk: the JSON every recording, probe result, selection and sweep stores.

save_layer_table("runs/sweep/layers.json", hooks.layers)
load_layer_table("runs/sweep/layers.json")    # [LayerInfo(index=0, ...), ...]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from probe.attention.layer_info import LayerInfo


def layers_to_json(layers: Sequence[LayerInfo]) -> list[dict[str, Any]]:
    """A layer table as a JSON-ready list (see :meth:`LayerInfo.to_json`)."""
    return [layer.to_json() for layer in layers]


def layers_from_json(rows: Sequence[dict[str, Any]]) -> list[LayerInfo]:
    """Read a list written by :func:`layers_to_json`."""
    return [LayerInfo.from_json(row) for row in rows]


def save_layer_table(path: str | Path, layers: Sequence[LayerInfo]) -> Path:
    """Write a run's layer table as JSON ``{"layer_table": [...]}`` (next to its artefacts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"layer_table": layers_to_json(layers)}, indent=1) + "\n")
    return path


def load_layer_table(path: str | Path) -> list[LayerInfo]:
    """Read a file written by :func:`save_layer_table`.

    Raises:
        ValueError: the file is missing or is not a layer table.
    """
    path = Path(path)
    try:
        return layers_from_json(json.loads(path.read_text())["layer_table"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path} is not a layer table (JSON with a 'layer_table' list): {err}; rerun the "
            "command that wrote it"
        ) from err
