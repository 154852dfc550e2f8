"""The interactive explorer: one self-contained HTML page per recording, also inline in Jupyter.

    from probe.viz.explorer import explorer_page
    explorer_page(maps, image).save("explorer.html")     # attnprobe view RUN --out page.html
    maps.explore(image)                                   # in a notebook: the same page inline
    samples_page([SampleView(maps_a), SampleView(maps_b)])  # several samples, a selector

See docs/explorer.md.
"""

from probe.viz.explorer.data import DEFAULT_MAX_BYTES, explorer_data
from probe.viz.explorer.page import (
    ExplorerPage,
    SampleView,
    explorer_page,
    lut_colours,
    samples_page,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ExplorerPage",
    "SampleView",
    "explorer_data",
    "explorer_page",
    "lut_colours",
    "samples_page",
]
