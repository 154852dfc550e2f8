"""``report.html`` of ``attnprobe reproduce``: one self-contained page (figures embedded as
base64 PNG, no external files, no scripts) built from what the run left in its folder.

    write_report_html(Path("runs/demo"), ReproduceConfig.preset("toy"), {"record": 41.0, ...})
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from editing.experiment.claims import HELD, NOT_HELD, Claim, check_claims
from editing.experiment.html_parts import esc, figure_html, table_html
from editing.experiment.injection import injection_claims, injection_html

CLAIMS = "claims.json"  # the claims' verdicts, next to report.html

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1.2em 0; } figcaption { font-size: .9em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: .85em; margin: .8em 0; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.held { color: #0a7a24; font-weight: bold; } .not { color: #b3261e; font-weight: bold; }
.inc { color: #8a6d00; font-weight: bold; } code, pre { background: #f6f6f6; }
pre { padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def _verdict(verdict: str) -> str:
    cls = "held" if verdict == HELD else "not" if verdict == NOT_HELD else "inc"
    return f'<span class="{cls}">{esc(verdict)}</span>'


def claims_html(claims: Sequence[Claim]) -> str:
    """A summary table, then one paragraph per claim."""
    summary = "".join(
        f'<tr><td class="l">{i}. {esc(c.title)}</td><td class="l">{_verdict(c.verdict)}</td></tr>'
        for i, c in enumerate(claims, start=1)
    )
    paragraphs = "".join(
        f"<h3>{i}. {esc(c.title)}: {_verdict(c.verdict)}</h3><p>{esc(c.text)}</p>"
        for i, c in enumerate(claims, start=1)
    )
    return f'<table><tr><th class="l">claim</th><th class="l">here</th></tr>{summary}</table>' + (
        paragraphs
    )


def probe_layer_rows(results: Any, resolutions: Mapping[int, str]) -> list[dict[str, Any]]:
    """Per layer: mean accuracy over steps of each kind, and the controls."""
    from editing.experiment.claims import _layer_means

    columns = {
        "cross acc": ("cross", "acc_mean"), "cross shuffled": ("cross", "shuffled_acc"),
        "cross random model": ("cross", "random_model_acc"), "self acc": ("self", "acc_mean"),
        "self selectivity": ("self", "selectivity"),
    }  # fmt: skip
    means = {name: _layer_means(results, *spec) for name, spec in columns.items()}
    layers = sorted({r.layer for r in results.rows})
    return [
        {"layer": layer, "resolution": resolutions.get(layer, ""),
         **{name: means[name].get(layer, math.nan) for name in columns}}
        for layer in layers
    ]  # fmt: skip


def _resolutions(out: Path) -> dict[int, str]:
    meta = out / "data" / "colour_car" / "meta.json"
    if not meta.is_file():
        return {}
    from probe.recording.store import AttentionDataset

    maps = AttentionDataset(meta.parent).load(0)
    return {layer.index: "{}x{}".format(*maps.resolution(layer.index)) for layer in maps.layers}


def probe_section(out: Path) -> tuple[str, dict[str, Any]]:
    """HTML of every probed set (figures and per-layer table) and label → ProbeResults."""
    from probe.probing.probes import ProbeResults

    parts, probes = [], {}
    resolutions = _resolutions(out)
    for csv in sorted((out / "probe").glob("*/results.csv")):
        results = ProbeResults.from_csv(csv)
        probes[results.label] = results
        folder, name = csv.parent, csv.parent.name
        parts.append(f"<h3>{esc(name)} (label: {esc(results.label)}, {results.rows[0].n_samples} "
                     f"samples, chance {results.rows[0].chance:.2f})</h3>")  # fmt: skip
        for kind in ("cross", "self"):
            parts.append(
                figure_html(
                    folder / f"heatmap_{kind}.png",
                    f"{kind}-attention probe",
                    "Held-out accuracy per layer (rows) and step (columns).",
                )
            )
        parts.append(figure_html(folder / "accuracy_by_layer.png", "Accuracy by layer",
                                 "Mean over steps; controls dotted (shuffled labels) and dashed "
                                 "(random model)."))  # fmt: skip
        parts.append(figure_html(out / "figures" / f"probe_{name}_by_step.png", "By step", ""))
        rows = probe_layer_rows(results, resolutions)
        parts.append(table_html(rows, list(rows[0]) if rows else ["layer"]))
    return "".join(parts) or "<p>No probes were run.</p>", probes


def selection_html(out: Path) -> tuple[str, str | None]:
    """The selected layers and why; and the sweep's range name for them."""
    path = out / "selection.json"
    if not path.is_file():
        return "<p>No selection was made.</p>", None
    sel = json.loads(path.read_text())
    evidence = sel.get("evidence", {})
    shown = {k: v for k, v in evidence.items() if k != "per_layer"}
    return (
        f"<p>Layers <b>{esc(sel['layers'])}</b> for the first {sel.get('step_fraction', 0.8):g} "
        f"of steps, rule <code>{esc(sel.get('rule'))}</code>. The paper's range is 4-14, the "
        f"official code's (<code>fpe</code>) every layer but the finest resolution.</p>"
        f"<pre>{esc(json.dumps(shown, indent=2))}</pre>" + _animal_selection_html(out),
        path.stem,
    )


def _animal_selection_html(out: Path) -> str:
    """The animal sweep's own selection (DiTs), if the run made one."""
    path = out / "selection_animal.json"
    if not path.is_file():
        return ""
    sel = json.loads(path.read_text())
    why = sel.get("evidence", {}).get("threshold_rule", "")
    return (f"<p>Animal edits (a DiT, from the animal probes): blocks <b>{esc(sel['layers'])}</b>"
            f", rule <code>{esc(sel.get('rule'))}</code>{', threshold ' + esc(why) if why else ''}"
            ".</p>")  # fmt: skip


def sweep_section(
    out: Path, folder: str = "sweep", what: str = "colour edits"
) -> tuple[str, list[dict[str, Any]]]:
    """The trade-off figures and the summary table of ``out/<folder>``; and the summary rows."""
    path = out / folder / "summary.json"
    if not path.is_file():
        return f"<p>No sweep of {esc(what)} was run.</p>", []
    raw = json.loads(path.read_text())
    summary = [{k: math.nan if v is None else v for k, v in s.items()} for s in raw]
    for s in summary:
        s["n"] = int(s["n"])
    cols = ["kind", "range", "layers", "n", "success", "iou", "background_psnr", "found"]
    if any(not math.isnan(float(s.get("source_shift", math.nan))) for s in summary):
        cols.insert(-1, "source_shift")
    body = f"<h3>{esc(what.capitalize())}</h3>" + figure_html(
        out / folder / "tradeoff.png",
        f"Structure vs edit success: {what}",
        "One point per (kind, layer range); stars are presets, the cross is the "
        "probe selection. The paper's finding: a middle range sits top right.",
    )
    if any(s.get("group") == "window" for s in summary):
        body += figure_html(
            out / folder / "windows.png",
            "Sliding windows",
            "Success (solid) and IoU (dashed) when replacing a window of 4 "
            "layers, at the window's centre.",
        )
    body += table_html(summary, cols)
    if "source_shift" in cols:
        body += (
            "<p><code>source_shift</code>: where the edited object's colour sits between the "
            "target's palette colour (0) and the source's (1), a leak before it flips the "
            "judged colour.</p>"
        )
    return body, summary


def sweep_notes(out: Path, settings: Mapping[str, Any]) -> str:
    """What scored the edits, and the range presets the sweeps left out (``paper`` on SDXL)."""
    notes = []
    if settings.get("clip"):
        dino = settings.get("dino")
        structure = f"DINO distance ({dino})" if dino else "not measured"
        notes.append(f"Edits scored by CLIP from <code>{esc(settings['clip'])}</code> (success: "
                     f"closer to the target prompt than the source's; structure: "
                     f"{esc(structure)}; no object masks, so IoU is empty).")  # fmt: skip
    path = out / "skipped_ranges.json"
    skipped = json.loads(path.read_text()) if path.is_file() else {}
    for name, why in skipped.items():
        notes.append(f"Range <code>{esc(name)}</code> left out of {esc(', '.join(why['sweeps']))}"
                     f": {esc(why['reason'])}.")  # fmt: skip
    return "".join(f"<p><b>Note:</b> {note}</p>" for note in notes)


def manifest_figures(out: Path, section: str) -> str:
    path = out / "figures" / "figures.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    return "".join(figure_html(out / "figures" / e["file"], e["title"], e["caption"],
                               e.get("explorer") and f"figures/{e['explorer']}")
                   for e in entries if e["section"] == section)  # fmt: skip


def write_report_html(out: Path, config: Any, timings: Mapping[str, float]) -> Path:
    """Build ``out/report.html`` from the run's files, and ``out/claims.json`` (every claim:
    key, title, verdict, text); returns the page's path."""
    probe_body, probes = probe_section(out)
    sel_body, sel_name = selection_html(out)
    sweep_body, summary = sweep_section(out)
    animal_body, animal_summary = sweep_section(out, "sweep_animal", "animal edits")
    if animal_summary:
        sweep_body += animal_body
    animal_sel = "selection_animal" if (out / "selection_animal.json").is_file() else None
    claims = [*check_claims(probes, summary, sel_name, animal_summary, animal_sel),
              *injection_claims(out)]  # fmt: skip
    settings = config.to_json() if hasattr(config, "to_json") else dict(config)
    sweep_body = sweep_notes(out, settings) + sweep_body
    total = sum(timings.values())
    stages = [{"stage": k, "seconds": float(v)} for k, v in timings.items()]
    flag = " --quick" if settings.get("quick") else ""
    caveat = (
        "<p><b>Note:</b> <code>tiny</code> has random weights: this report checks the pipeline, "
        "its numbers say nothing about the paper. Run it on <code>toy</code> or a real "
        "checkpoint.</p>"
        if settings.get("model") == "tiny"
        else ""
    )
    sections = [
        ("Summary: the paper's claims here", claims_html(claims)),
        ("Attention maps", manifest_figures(out, "attention")),
        ("Probes", probe_body + manifest_figures(out, "probe")),
        ("Selected layers", sel_body),
        ("Layer-range sweep", sweep_body),
        ("Vital blocks: Stable Flow's ablation", injection_html(out)),
        ("Edits", manifest_figures(out, "edit")),
        ("Run", table_html(stages, ["stage", "seconds"])
         + f"<pre>attnprobe reproduce --out {esc(out)} --model {esc(settings.get('model'))}"
         f"{flag}</pre><pre>{esc(json.dumps(settings, indent=2))}</pre>"),
    ]  # fmt: skip
    toc = "".join(f'<li><a href="#s{i}">{esc(t)}</a></li>' for i, (t, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{esc(t)}</h2>{b}' for i, (t, b) in enumerate(sections))
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>attnprobe reproduce: {esc(settings.get('model'))}</title><style>{CSS}</style>"
        f"</head><body><h1>Cross- and self-attention in Stable Diffusion: a reproduction</h1>"
        f"<p>Liu et al., <i>Towards Understanding Cross and Self-Attention in Stable Diffusion "
        f"for Text-Guided Image Editing</i> (CVPR 2024), rerun by <code>attnprobe reproduce</code>"
        f" on model <b>{esc(settings.get('model'))}</b>{' (quick)' if flag else ''}, {when}, "
        f"{total / 60:.1f} min of compute.</p>{caveat}<ul>{toc}</ul>{body}</body></html>"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    verdicts = [asdict(c) for c in claims]  # the verdicts, for comparing runs (toy v1 and v2)
    (out / CLAIMS).write_text(json.dumps(verdicts, indent=2) + "\n", encoding="utf-8")
    return path
