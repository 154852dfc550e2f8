"""``attnprobe view``: a recording's interactive explorer, one self-contained HTML page.

attnprobe record --prompt "a red car" --out runs/red_car
attnprobe view runs/red_car --out runs/red_car/explorer.html
attnprobe view runs/colour_car --sample 3 --out sample3.html     # one sample of a dataset
attnprobe view runs/sweep --out sweep.html                        # a sweep's edit grid

A dataset probed by ``attnprobe probe --data DATASET`` (``DATASET/probe/results.csv``) adds its
probe grid to the page, each cell a click to that layer and step's maps.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def read_run(run: Path, sample: int = 0) -> tuple[Any, Any, int]:
    """The maps, the image (or ``None``) and the sample index to show, from what ``run`` is:

    - a folder of ``attnprobe record --prompt`` or ``attnprobe demo`` (``maps.safetensors``,
      ``image.png``);
    - a recorded dataset (``index.jsonl``): its sample ``sample`` (and its image, if saved);
    - a ``.safetensors`` file written by :meth:`AttentionMaps.save`.

    Raises:
        FileNotFoundError: ``run`` is none of these.
    """
    from PIL import Image

    from probe.recording.maps import AttentionMaps
    from probe.recording.store import INDEX, AttentionDataset

    def picture(path: Path) -> Any:
        return Image.open(path).convert("RGB") if path.is_file() else None

    if run.is_file():
        return AttentionMaps.load(run), picture(run.with_name("image.png")), sample
    if (run / "maps.safetensors").is_file():
        return AttentionMaps.load(run / "maps.safetensors"), picture(run / "image.png"), sample
    if (run / INDEX).is_file():
        ds = AttentionDataset(run)
        if not 0 <= sample < len(ds):
            raise ValueError(f"--sample {sample}: {run} has samples 0-{len(ds) - 1}")
        entry = ds.entries[sample]
        image = picture(run / entry["image"]) if "image" in entry else None
        return ds.load(sample), image, 0
    raise FileNotFoundError(
        f"{run} is not a recording: pass a folder of `attnprobe record --prompt` (with "
        "maps.safetensors), a dataset folder (with index.jsonl) or a .safetensors file"
    )


def _cmd_view(args: argparse.Namespace) -> int:
    from probe.probing.results import ProbeResults
    from probe.viz.explorer import explorer_page
    from probe.viz.explorer.grids import find_probe_results
    from probe.viz.explorer.sweep_page import sweep_page

    run = Path(args.run)
    if run.is_dir() and any((run / f).is_file() for f in ("sweep.json", "sweep.csv")):
        page = sweep_page(run)
    else:
        maps, image, sample = read_run(run, args.sample)
        found = find_probe_results(run) if run.is_dir() else None
        probe = ProbeResults.from_csv(found) if found is not None else None
        page = explorer_page(
            maps, image, sample=sample, max_bytes=int(args.max_mb * 1e6), probe=probe
        )
    out = page.save(args.out)
    print(f"explorer: {out} ({page.nbytes / 1e6:.2f} MB)")
    for line in page.left_out:
        print(f"left out: {line}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``view`` to the ``attnprobe`` command line."""
    p = sub.add_parser(
        "view", help="an interactive explorer of a recording: one self-contained HTML page"
    )
    p.add_argument(
        "run",
        help="a record/demo folder, a dataset folder (with its probe grid, if probed), a maps "
        ".safetensors or a sweep's folder (its edit grid)",
    )
    p.add_argument("--out", required=True, help="the HTML page to write")
    p.add_argument("--sample", type=int, default=0, help="which recorded sample (default 0)")
    p.add_argument(
        "--max-mb",
        type=float,
        default=5.0,
        help="the page's size budget in MB (default 5); what does not fit is named on the page",
    )
    p.set_defaults(func=_cmd_view)
