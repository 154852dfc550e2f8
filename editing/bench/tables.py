"""A bench run's tables: one per edit type and one over all, method × inversion per row.

    write_tables("runs/bench")     # runs/bench/tables.json, runs/bench/tables.md

Scaled as PnP-Inversion's paper prints them: structure distance ×10³, LPIPS ×10³, MSE ×10⁴,
SSIM ×10². A metric without its model folder prints ``missing``; a mean with no non-NaN row
prints ``nan``; ``n`` is the number of items, and a metric averaged over fewer says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from editing.bench.pie_bench import EDIT_TYPES
from editing.bench.run import read_rows, summarise

TABLE_COLUMNS = (
    ("structure_distance", "structure ×10³", 1e3),
    ("psnr_unedit_part", "bg PSNR", 1.0),
    ("lpips_unedit_part", "bg LPIPS ×10³", 1e3),
    ("mse_unedit_part", "bg MSE ×10⁴", 1e4),
    ("ssim_unedit_part", "bg SSIM ×10²", 1e2),
    ("clip_similarity_target_image", "CLIP whole", 1.0),
    ("clip_similarity_target_image_edit_part", "CLIP edited", 1.0),
    ("toy_success", "toy success", 1.0),
    ("toy_kept", "toy kept", 1.0),
    ("toy_iou", "toy IoU", 1.0),
    ("seconds", "s / edit", 1.0),
)


def _cell(summary: dict[str, Any], column: str, scale: float) -> str:
    value = summary.get(column, "absent")
    if value == "absent":
        return ""
    if value is None:
        return "missing"
    if math.isnan(value):
        return "nan"
    count = summary.get(f"n_{column}", summary["n"])
    shown = f"{value * scale:.2f}"
    return shown if count == summary["n"] else f"{shown} ({count})"


def markdown_tables(summaries: list[dict[str, Any]]) -> str:
    """The tables as Markdown, edit types in PIE-Bench's order, then ``all``; columns no row
    has (the toy's on a real benchmark) left out."""
    used = [c for c in TABLE_COLUMNS if any(c[0] in s for s in summaries)]
    kinds = [*sorted({s["editing_type_id"] for s in summaries} - {"all"}), "all"]
    parts = []
    for kind in kinds:
        title = "all edit types" if kind == "all" else f"{kind}: {EDIT_TYPES.get(kind, kind)}"
        head = ["method", "inversion", "n", *[c[1] for c in used]]
        lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]  # fmt: skip
        for s in sorted(
            (s for s in summaries if s["editing_type_id"] == kind),
            key=lambda s: (s["method"], s["inversion"]),
        ):
            cells = [s["method"], s["inversion"], str(s["n"])]
            cells += [_cell(s, column, scale) for column, _, scale in used]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_tables(out: str | Path) -> tuple[Path, Path]:
    """Summarise a run folder's ``rows.jsonl`` into ``tables.json`` and ``tables.md``.

    Returns:
        The two paths.
    """
    root = Path(out)
    summaries = summarise(read_rows(root))
    json_path, md_path = root / "tables.json", root / "tables.md"
    json_path.write_text(json.dumps(summaries, indent=1))
    md_path.write_text(markdown_tables(summaries))
    return json_path, md_path
