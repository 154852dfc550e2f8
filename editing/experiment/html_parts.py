"""The HTML pieces of the reports (escaping, embedded figures, tables), below both
:mod:`editing.experiment.report` and the report sections that live beside it
(:mod:`editing.experiment.injection`)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value))


def png_data_uri(path: Path) -> str:
    """``data:image/png;base64,...`` of a PNG file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure_html(path: Path, title: str, caption: str = "", explorer: str | None = None) -> str:
    """An embedded figure, or a note when the file is missing; with ``explorer`` (a path from
    report.html), the figure links to the interactive explorer page of its recording."""
    if not path.is_file():
        return f"<p><em>{esc(title)}: not produced ({esc(path.name)} missing).</em></p>"
    img, link = f'<img alt="{esc(title)}" src="{png_data_uri(path)}">', ""
    if explorer:
        img = f'<a href="{esc(explorer)}">{img}</a>'
        link = f' <a href="{esc(explorer)}">Explore these maps</a> (layers, steps, pixels).'
    caption_html = f"<b>{esc(title)}.</b> {esc(caption)}{link}"
    return f"<figure>{img}<figcaption>{caption_html}</figcaption></figure>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.2f}"
    return esc(value)


def table_html(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A table of ``rows`` (dicts) with the given columns; floats to 2 decimals."""

    def cells(tag: str, values: Sequence[Any]) -> str:
        return "".join(
            f'<{tag} class="{"l" if i == 0 else ""}">{_cell(v)}</{tag}>'
            for i, v in enumerate(values)
        )

    body = "".join(f"<tr>{cells('td', [r.get(c, '') for c in columns])}</tr>" for r in rows)
    return f"<table><tr>{cells('th', columns)}</tr>{body}</table>"
