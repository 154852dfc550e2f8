"""Loading a full-size half-precision folder: peak memory against its weights (issue 30).

    python benchmarks/cases_load.py --model sd15 --dir /tmp/loadbench       # SD 1.5
    python benchmarks/cases_load.py --model sdxl-base --dir /tmp/loadbench  # SDXL base

The folder is laid out as downloaded from the hub (``tests/replicas/<name>``'s real, full-size
configs, the tokenizer files, each component's weights as ``*.fp16.safetensors``; SD 1.5 also
its float32 ``*.safetensors`` beside them, as the hub has both) with random weights. A fresh
subprocess imports attnprobe, notes its resident memory, loads the folder with
``load_pipeline(folder, dtype=torch.float16)``, reads every weight once (safetensors are memory
mapped: a weight's pages become resident when first read, as a forward or ``.to("cuda")`` would)
and reports its peak resident memory (``VmHWM``), also as it was right after the load. The
weights are what the loaded pipeline's parameters and buffers take. The case writes
``<out>/load_<model>.json`` and deletes the folder unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.replicas.build import (  # noqa: E402
    HERE,
    WEIGHT_STEM,
    _read,
    _write_json,
    _write_tokenizer_files,
    real_config,
)

LOADED = ("unet", "vae", "text_encoder", "text_encoder_2")  # the safety checker is not loaded

CHILD = r"""
import json, re, sys, time, torch
from probe.models import load_pipeline
def kib(field):
    return int(re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M)[1])
start = kib("VmRSS")
t0 = time.perf_counter()
pipe = load_pipeline(sys.argv[1], dtype=torch.float16)
seconds = time.perf_counter() - t0
loaded_peak = kib("VmHWM")
modules = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
for c in modules:  # read every weight once: mmapped file pages become resident, as on first use
    for t in [*c.parameters(), *c.buffers()]:
        t.sum()
weights = sum(t.numel() * t.element_size() for c in pipe.components.values()
              if isinstance(c, torch.nn.Module) for t in [*c.parameters(), *c.buffers()])
dtypes = sorted({str(p.dtype) for c in pipe.components.values()
                 if isinstance(c, torch.nn.Module) for p in c.parameters()})
print(json.dumps({"start_kib": start, "loaded_peak_kib": loaded_peak, "peak_kib": kib("VmHWM"),
                  "end_kib": kib("VmRSS"),
                  "rss_file_kib": kib("RssFile"), "rss_anon_kib": kib("RssAnon"),
                  "weights_bytes": weights, "seconds": seconds, "dtypes": dtypes}))
"""


def write_folder(name: str, out: Path, float32_too: bool) -> Path:
    """A full-size replica of ``name`` with random float16 weights (see the module)."""
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    for tok in sorted(p.name for p in (HERE / name).glob("tokenizer*")):
        _write_tokenizer_files(folder / tok)
    for src in sorted((HERE / name).rglob("*.json")):
        rel = src.relative_to(HERE / name).as_posix()
        if rel != "tiny.json":
            _write_json(folder / rel, real_config(name, rel))
    index = _read(folder / "model_index.json")
    for component in _read(HERE / name / "tiny.json")["weights"]:
        library, cls = index[component]
        state = _random_half_state(library, cls, folder / component)
        stem = WEIGHT_STEM.get(library, "model")
        save_file(state, folder / component / f"{stem}.fp16.safetensors", {"format": "pt"})
        if float32_too:
            state = {k: v.float() for k, v in state.items()}
            save_file(state, folder / component / f"{stem}.safetensors", {"format": "pt"})
        del state
    return folder


def _random_half_state(library: str, cls: str, folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``cls`` at its config's full size, float16, normal(0, 0.02): built on
    the meta device and filled in place, so no float32 copy is ever made."""
    from tests.replicas.build import _instantiate

    with torch.device("meta"):
        model = _instantiate(library, cls, folder)
    model = model.to(dtype=torch.float16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value.normal_(0.0, 0.02, generator=generator)
        else:
            value.zero_()
        state[key] = value.contiguous()
    return state


def measure_load(folder: Path) -> dict[str, Any]:
    """Peak resident memory of a fresh process loading ``folder`` in float16."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)], capture_output=True, text=True,
        check=True, cwd=ROOT, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                   "TRANSFORMERS_VERBOSITY": "error"},
    )  # fmt: skip
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    mib = 1024
    weights_mib = raw["weights_bytes"] / 2**20
    peak_above = (raw["peak_kib"] - raw["start_kib"]) / mib
    return {
        "weights_mib": round(weights_mib, 1),
        "rss_after_imports_mib": round(raw["start_kib"] / mib, 1),
        "peak_rss_mib_loading_only": round(raw["loaded_peak_kib"] / mib, 1),
        "peak_rss_mib": round(raw["peak_kib"] / mib, 1),
        "peak_above_imports_mib": round(peak_above, 1),
        "peak_above_imports_over_weights": round(peak_above / weights_mib, 3),
        "peak_rss_over_weights": round(raw["peak_kib"] / mib / weights_mib, 3),
        "rss_file_mib_after": round(raw["rss_file_kib"] / mib, 1),
        "rss_anon_mib_after": round(raw["rss_anon_kib"] / mib, 1),
        "seconds": round(raw["seconds"], 2),
        "dtypes": raw["dtypes"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="sd15", help="a replica name: sd15, sdxl-base, ...")
    p.add_argument("--dir", default="/tmp/attnprobe_loadbench", help="where the folder goes")
    p.add_argument("--out", default="benchmarks/results", help="where load_<model>.json goes")
    p.add_argument("--no-float32", action="store_true", help="write the fp16 files only")
    p.add_argument("--keep", action="store_true", help="keep the folder")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    folder = write_folder(args.model, Path(args.dir), not args.no_float32)
    written = time.perf_counter() - t0
    try:
        result = measure_load(folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder)
    result |= {
        "case": f"load_{args.model}",
        "folder": f"{args.model} replica at full size, random weights, fp16 variant files"
        + ("" if args.no_float32 else " beside float32 ones"),
        "write_seconds": round(written, 1),
        "target": "peak_above_imports_over_weights <= 1.3",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"load_{args.model}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
