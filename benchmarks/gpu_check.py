"""One command that measures attnprobe on a GPU: ``make gpu-check``.

    python benchmarks/gpu_check.py --out benchmarks/results          # CUDA: native sizes
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check       # any machine, < 1 min

On CUDA it builds, with random weights in each dtype (float16, bfloat16), the full-size SD 1.5
UNet, the SDXL base UNet (their configs in ``tests/replicas``) and a FLUX.1-dev-shaped
transformer (19 double + 38 single blocks, 3072 wide), and runs one denoiser forward at each
native size (SD 1.5 64x64 latents, SDXL 128x128, Flux 128x128 = 4096 image tokens) on the batch
an FPE edit runs (1 source + 1 target with guidance: 4 rows; Flux 2 rows, its guidance being an
input), four ways:

- ``plain``: no hooks.
- ``record[svd:8]``: every layer recorded (cross per token, self as 8 SVD components).
- ``fpe_fused``: FPE's self-attention replacement as ``SDPA(q_src, k_src, v_tgt)``.
- ``fpe_materialised``: the same edit on materialised probabilities (the official code's way).

Each is timed (median of ``--repeats`` after one warm-up; CUDA synchronised) with its peak
memory: ``torch.cuda.max_memory_allocated`` on CUDA (weights included), the process's peak RSS
on the CPU. A variant that fails is reported with its error, not skipped. Without CUDA (or with
``--tiny``) the same cases run on the ``tiny`` denoisers in float32 and bfloat16: a smoke test
of every path, whose numbers mean nothing. Writes ``<out>/gpu_check.json`` (tiny:
``gpu_check_tiny.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.baselines import InPlaceMaterialisedReplace, MaterialiseEverywhere  # noqa: E402
from benchmarks.rigs import SD15_CONFIG, SDXL_CONFIG  # noqa: E402
from editing.methods.replace import SelfAttentionReplace  # noqa: E402
from probe.attention.batch import BatchLayout  # noqa: E402
from probe.attention.hooks import AttentionHooks  # noqa: E402
from probe.recording.recorder import record_attention  # noqa: E402

FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
"""FLUX.1-dev's transformer config (black-forest-labs/FLUX.1-dev, transformer/config.json)."""

MODELS = ("sd15", "sdxl", "flux")
NATIVE_LATENT = {"sd15": 64, "sdxl": 128, "flux": 128}
TEXT_TOKENS = {"sd15": 77, "sdxl": 77, "flux": 512}


def build_denoiser(model: str, tiny: bool, dtype: torch.dtype, device: torch.device) -> Any:
    """The denoiser with random weights, built on the meta device and filled on ``device``
    in ``dtype`` (no float32 copy of a 12 B-parameter transformer)."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from probe.models.placement import cast_pipeline
    from probe.models.tiny import tiny_unet, tiny_xl_unet
    from probe.models.tiny_dit import tiny_flux_transformer

    if tiny:
        builders: dict[str, Any] = {"sd15": tiny_unet, "sdxl": tiny_xl_unet,
                                    "flux": tiny_flux_transformer}  # fmt: skip
        built = builders[model]()
        return cast_pipeline(built, dtype).to(device=device).eval().requires_grad_(False)
    cls: Any = FluxTransformer2DModel
    if model == "flux":
        cls, config = FluxTransformer2DModel, dict(FLUX_DEV)
    else:
        path = SD15_CONFIG if model == "sd15" else SDXL_CONFIG
        cls = UNet2DConditionModel
        config = {k: v for k, v in json.loads(path.read_text()).items() if k[0] != "_"}
    with torch.device("meta"):
        net = cls(**config)
    net = cast_pipeline(net, dtype).to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.normal_(0.0, 0.02, generator=generator)
    return net.eval().requires_grad_(False)


def model_inputs(model: str, net: Any, latent: int) -> tuple[dict[str, Any], BatchLayout]:
    """One forward's random inputs at ``latent`` and the FPE batch layout they hold."""
    device, dtype = net.device, net.dtype
    g = torch.Generator(device=device).manual_seed(1)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    config = net.config
    inputs: dict[str, Any]
    if model == "flux":
        layout = BatchLayout.for_edit(1, False)
        rows, tokens = len(layout), (latent // 2) ** 2
        text = TEXT_TOKENS["flux"] if latent == NATIVE_LATENT["flux"] else 8
        inputs = {
            "hidden_states": rand(rows, tokens, config.in_channels),
            "encoder_hidden_states": rand(rows, text, config.joint_attention_dim),
            "pooled_projections": rand(rows, config.pooled_projection_dim),
            "timestep": torch.full((rows,), 0.5, device=device, dtype=dtype),
            "img_ids": _flux_image_ids(latent // 2, device, dtype),
            "txt_ids": torch.zeros(text, 3, device=device, dtype=dtype),
        }
        if config.guidance_embeds:
            inputs["guidance"] = torch.full((rows,), 3.5, device=device, dtype=torch.float32)
        return inputs, layout
    layout = BatchLayout.for_edit(1, True)
    rows = len(layout)
    inputs = {
        "sample": rand(rows, config.in_channels, latent, latent),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": rand(rows, TEXT_TOKENS[model], config.cross_attention_dim),
    }
    if config.get("addition_embed_type") == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        px = float(latent * 8)
        ids = torch.tensor([[px, px, 0.0, 0.0, px, px]], device=device, dtype=dtype)
        inputs["added_cond_kwargs"] = {"text_embeds": rand(rows, pooled),
                                       "time_ids": ids.repeat(rows, 1)}  # fmt: skip
    return inputs, layout


def _flux_image_ids(side: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    return ids.reshape(side * side, 3).to(device=device, dtype=dtype)


def variants(net: Any, inputs: dict[str, Any], layout: BatchLayout) -> dict[str, Callable]:
    """The four ways of running one forward (see the module)."""

    def forward() -> Any:
        with torch.no_grad():
            return net(**inputs)

    def with_controllers(make: Callable[[], list[Any]]) -> Callable[[], Any]:
        def run() -> Any:
            with AttentionHooks(net, make(), layout=layout):
                return forward()

        return run

    def record() -> Any:
        hooks = AttentionHooks(net, layout=layout)
        with hooks, record_attention(net, self_reduce="svd:8", hooks=hooks):
            return forward()

    return {
        "plain": forward,
        "record[svd:8]": record,
        "fpe_fused": with_controllers(lambda: [SelfAttentionReplace("fpe", "all")]),
        "fpe_materialised": with_controllers(
            lambda: [MaterialiseEverywhere(), InPlaceMaterialisedReplace("fpe", "all")]
        ),
    }


def measure(
    fn: Callable[[], Any], device: torch.device, repeats: int, warmup: bool = True
) -> dict[str, Any]:
    """Median seconds and peak memory (MiB) of ``fn`` after one warm-up, or its error."""
    try:
        if warmup:
            fn()
        seconds, peaks = [], []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize(device)
                seconds.append(time.perf_counter() - t0)
                peaks.append(torch.cuda.max_memory_allocated(device) / 2**20)
            else:
                from benchmarks.measure import measure as measure_cpu

                run = measure_cpu(fn)
                seconds.append(run.seconds)
                peaks.append(run.peak_rss / 2**20)
    except Exception as err:  # a failing variant is a result: report it, run the others
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    return {"seconds": round(statistics.median(seconds), 4),
            "peak_mib": round(statistics.median(peaks), 1)}  # fmt: skip


def run_check(tiny: bool, dtypes: list[str], models: list[str], repeats: int,
              log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Every (model, dtype) case; see the module."""
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    rows = []
    for model in models:
        for name in dtypes:
            dtype = getattr(torch, name)
            net = build_denoiser(model, tiny, dtype, device)
            latent = 8 if tiny else NATIVE_LATENT[model]
            inputs, layout = model_inputs(model, net, latent)
            weights = sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20
            for variant, fn in variants(net, inputs, layout).items():
                result = measure(fn, device, repeats, warmup=not tiny)
                rows.append({"model": model, "dtype": name, "latent": latent,
                             "batch": len(layout), "weights_mib": round(weights, 1),
                             "variant": variant, **result})  # fmt: skip
                log(format_row(rows[-1]))
            del net, inputs
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"device": _device_name(device), "tiny": tiny, "torch": torch.__version__,
            "peak": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS",
            "rows": rows}  # fmt: skip


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


HEADER = "| model | dtype | latent | batch | variant | time (s) | peak (MiB) | weights (MiB) |"


def format_row(r: dict[str, Any]) -> str:
    """One markdown table row."""
    time_s = r.get("seconds", "—")
    peak = r.get("peak_mib", r.get("error", "—"))
    return (f"| {r['model']} | {r['dtype']} | {r['latent']} | {r['batch']} | {r['variant']} "
            f"| {time_s} | {peak} | {r['weights_mib']} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for gpu_check.json")
    p.add_argument("--tiny", action="store_true", help="tiny denoisers on the CPU (smoke test)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {MODELS}")
    p.add_argument("--dtypes", default=None, help="default float16,bfloat16 (tiny: +float32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant")
    args = p.parse_args(argv)
    tiny = args.tiny or not torch.cuda.is_available()
    dtypes = (args.dtypes or ("float32,bfloat16" if tiny else "float16,bfloat16")).split(",")
    print(HEADER + "\n|---|---|---:|---:|---|---:|---:|---:|")
    report = run_check(tiny, dtypes, args.models.split(","), 1 if tiny else args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu_check_tiny.json" if tiny else "gpu_check.json")  # a smoke run never
    path.write_text(json.dumps(report, indent=2) + "\n")  # overwrites a GPU's numbers
    print(f"{report['device']}; peak = {report['peak']}; {path}")
    failed = [r for r in report["rows"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
