"""``attnprobe view``: a recording's interactive explorer, one self-contained HTML page.

attnprobe record --prompt "a red car" --out runs/red_car
attnprobe view runs/red_car --out runs/red_car/explorer.html
attnprobe view runs/colour_car --sample 3 --out sample3.html     # one sample of a dataset
attnprobe view runs/colour_car --sample 0 --sample 5 --out two.html   # two, and a selector
attnprobe view runs/sweep --out sweep.html                        # a sweep's edit grid

A dataset probed by ``attnprobe probe --data DATASET`` (``DATASET/probe/results.csv``) adds its
probe grid to the page, each cell a click to that layer and step's maps of the chosen sample;
without ``--sample`` the page then holds the first sample of each class of the probed label.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def read_run(run: Path, sample: int = 0) -> tuple[Any, Any, int]:
    """The maps, the image (or ``None``) and the sample index to show, from what ``run`` is:

    - a folder of ``attnprobe record --prompt`` or ``attnprobe demo`` (``maps.safetensors``,
      ``image.png``);
    - a ``.safetensors`` file written by :meth:`AttentionMaps.save`.

    A recorded dataset (``index.jsonl``) is read by :func:`dataset_views`.

    Raises:
        FileNotFoundError: ``run`` is none of these.
    """
    from probe.recording.maps import AttentionMaps

    if run.is_file():
        return AttentionMaps.load(run), _picture(run.with_name("image.png")), sample
    if (run / "maps.safetensors").is_file():
        return AttentionMaps.load(run / "maps.safetensors"), _picture(run / "image.png"), sample
    raise FileNotFoundError(
        f"{run} is not a recording: pass a folder of `attnprobe record --prompt` (with "
        "maps.safetensors), a dataset folder (with index.jsonl) or a .safetensors file"
    )


MAX_CLASSES = 8  # samples a probed dataset's page holds by default: one per class, at most


def dataset_views(run: Path, samples: list[int] | None, label: str | None) -> list[Any]:
    """The :class:`~probe.viz.explorer.SampleView` of each of a dataset's ``samples`` (default:
    the first sample of each class of ``label``, at most :data:`MAX_CLASSES`, else sample 0),
    captioned with its label, prompt and seed; it shows the word of ``label`` first.

    Raises:
        ValueError: a sample the dataset does not have.
    """
    from probe.recording.store import AttentionDataset
    from probe.viz.explorer import SampleView

    ds = AttentionDataset(run)
    probed = label if ds.entries and label in ds.entries[0]["labels"] else None
    if samples is None and probed:
        values = ds.labels(probed)
        samples = [values.index(c) for c in ds.classes(probed)][:MAX_CLASSES]
    samples = samples or [0]
    for sample in samples:
        if not 0 <= sample < len(ds):
            raise ValueError(f"--sample {sample}: {run} has samples 0-{len(ds) - 1}")
    views = []
    for sample in samples:
        entry, maps = ds.entries[sample], ds.load(sample)
        word = entry["label_words"].get(probed) if probed else None
        about = f"{probed}={entry['labels'][probed]} · " if probed else ""
        views.append(
            SampleView(
                maps,
                _picture(run / entry["image"]) if "image" in entry else None,
                caption=f"sample {sample} · {about}{entry['prompt']} (seed {entry['seed']})",
                token=_last_position(maps, word) if word else None,
            )
        )
    return views


def _last_position(maps: Any, word: str) -> int | None:
    """The position of ``word``'s last token in the prompt, or ``None`` where it is not there."""
    try:
        return int(maps.word_positions(word, occurrence="all")[-1])
    except (KeyError, ValueError, IndexError):
        return None


def _picture(path: Path) -> Any:
    from PIL import Image

    return Image.open(path).convert("RGB") if path.is_file() else None


def _cmd_view(args: argparse.Namespace) -> int:
    from probe.probing.results import ProbeResults
    from probe.recording.store import INDEX
    from probe.viz.explorer import explorer_page, samples_page
    from probe.viz.explorer.grids import find_probe_results
    from probe.viz.explorer.sweep_page import sweep_page

    run = Path(args.run)
    found = find_probe_results(run) if run.is_dir() else None
    probe = ProbeResults.from_csv(found) if found is not None else None
    max_bytes = int(args.max_mb * 1e6)
    if run.is_dir() and any((run / f).is_file() for f in ("sweep.json", "sweep.csv")):
        page = sweep_page(run)
    elif run.is_dir() and (run / INDEX).is_file():
        views = dataset_views(run, args.sample, probe.label if probe is not None else None)
        title = None if len(views) == 1 else f"dataset {run.name}"
        page = samples_page(views, title, max_bytes, probe)
    else:
        if args.sample and len(args.sample) > 1:
            raise ValueError(
                f"several --sample need a dataset folder; {run} is one recording (in Python, "
                "probe.viz.explorer.samples_page shows several samples of one recording)"
            )
        maps, image, sample = read_run(run, args.sample[0] if args.sample else 0)
        page = explorer_page(maps, image, sample=sample, max_bytes=max_bytes, probe=probe)
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
    p.add_argument(
        "--sample",
        type=int,
        action="append",
        help="which recorded sample (default 0); repeat it for a dataset's page of several, with "
        "a selector (a probed dataset's default: the first sample of each class)",
    )
    p.add_argument(
        "--max-mb",
        type=float,
        default=5.0,
        help="the page's size budget in MB (default 5); what does not fit is named on the page",
    )
    p.set_defaults(func=_cmd_view)
