"""attnprobe's editing side: FPE, Prompt-to-Prompt, MasaCtrl, inversion, the layer sweep, reproduce.

    from probe import load_pipeline
    from editing import edit

    pipe = load_pipeline("toy")
    result = edit(pipe, "a red car", ["a blue car"], method="fpe")
    result.targets[0].save("blue.png")

The names below are the public face; each loads its module on first use. ``sweep`` is imported
from its module (``editing.sweep.run``): a package attribute named like a submodule (the
``editing.sweep`` package) is overwritten by Python once the submodule is imported. The parts:
:mod:`editing.methods` (the registry and the methods), :mod:`editing.scoring`, :mod:`editing.sweep`,
:mod:`editing.experiment`; ``editor`` (``edit()``), ``sampling``, ``scheduler``, ``inversion``
and ``null_text`` at the top.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "edit": "editing.editor",
    "EditResult": "editing.editor",
    "make_controller": "editing.editor",
    "Inversion": "editing.inversion",
    "ddim_invert": "editing.inversion",
    "load_image": "editing.inversion",
    "null_text_invert": "editing.null_text",
    "FlowInversion": "editing.flow_inversion",
    "flow_invert": "editing.flow_inversion",
    "RFInversion": "editing.rf_inversion",
    "rf_invert": "editing.rf_inversion",
    "flowedit": "editing.methods.flowedit",
    "score_edit": "editing.scoring.toy_metrics",
    "psnr": "editing.scoring.images",
    "read_rows": "editing.sweep.table",
    "summarise_rows": "editing.sweep.table",
    "format_summary": "editing.sweep.table",
    "select_from_sweep": "editing.sweep.leaks",
    "sweep_tradeoff": "editing.sweep.plots",
    "sweep_windows": "editing.sweep.plots",
    "edit_grid": "editing.experiment.edit_figures",
    "ReproduceConfig": "editing.experiment.reproduction",
    "pick_pairs": "editing.sweep.ranges",
    "reproduce": "editing.experiment.reproduction",
}

__all__ = [
    "EditResult",
    "FlowInversion",
    "Inversion",
    "RFInversion",
    "ReproduceConfig",
    "ddim_invert",
    "edit",
    "edit_grid",
    "flow_invert",
    "flowedit",
    "format_summary",
    "load_image",
    "make_controller",
    "null_text_invert",
    "pick_pairs",
    "psnr",
    "read_rows",
    "reproduce",
    "rf_invert",
    "score_edit",
    "select_from_sweep",
    "summarise_rows",
    "sweep_tradeoff",
    "sweep_windows",
]

if TYPE_CHECKING:
    from editing.editor import EditResult, edit, make_controller
    from editing.experiment.edit_figures import edit_grid
    from editing.experiment.reproduction import ReproduceConfig, reproduce
    from editing.flow_inversion import FlowInversion, flow_invert
    from editing.inversion import Inversion, ddim_invert, load_image
    from editing.methods.flowedit import flowedit
    from editing.null_text import null_text_invert
    from editing.rf_inversion import RFInversion, rf_invert
    from editing.scoring.images import psnr
    from editing.scoring.toy_metrics import score_edit
    from editing.sweep.leaks import select_from_sweep
    from editing.sweep.plots import sweep_tradeoff, sweep_windows
    from editing.sweep.ranges import pick_pairs
    from editing.sweep.table import format_summary, read_rows, summarise_rows


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'editing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
