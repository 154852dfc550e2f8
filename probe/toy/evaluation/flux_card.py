"""Write the toy Flux's model card (``toy-flux``) from its exported folder and an evaluation.

    python -m probe.toy.evaluation.flux_card --model runs/toy_flux \\
        --evaluation runs/toy_flux_eval --out docs/toy_flux

reads the ``FluxPipeline`` folder (``MODEL/model`` of a run, or the model folder itself: its
configs, safetensors, ``attnprobe.json`` and ``training/``) and ``EVAL/evaluation.md``,
``EVAL/evaluation.csv`` and ``EVAL/grid.png`` (``attnprobe toy evaluate``), and writes
``OUT/toy_flux_card.md`` with ``OUT/images/loss_curves.png`` and ``OUT/images/grid.png``.

Every number of the toy is read from those files. FLUX.1-dev's are not on this machine (its
repository is gated): :data:`FLUX1_DEV` pins its published configs, and its sizes are computed
from them on the meta device.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from probe.families.flux import FLUX_NATIVE_LATENT, FLUX_T5_TOKENS
from probe.families.sampler import flow_shift
from probe.toy.evaluation.model_card import ZERO_SHOT, _minutes, _text_panel, _training_record

FLUX1_DEV: dict[str, dict[str, Any]] = {
    "transformer": {
        "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
    },
    "text_encoder": {  # CLIP ViT-L/14's text tower
        "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
        "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    },
    "text_encoder_2": {  # T5 v1.1 XXL's encoder
        "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
        "num_heads": 64, "feed_forward_proj": "gated-gelu",
    },
    "vae": {"latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
            "scaling_factor": 0.3611, "shift_factor": 0.1159},
}  # fmt: skip
"""FLUX.1-dev's published ``config.json`` values (black-forest-labs/FLUX.1-dev, gated; as
``tests/test_flux.py`` pins the transformer's)."""

FLUX_PANELS = ("t5", "transformer")
"""The stages of the toy Flux's loss log that have a curve (``latents`` and ``export`` none)."""
T5_ACCURACIES = ZERO_SHOT | {"retrieval": "in-batch retrieval (training)"}
UNET_ONLY = {"vae_minutes", "vae_batch", "vae_lr", "unet_minutes", "max_vae_steps",
             "max_unet_steps", "judge_examples", "judge_epochs", "extra"}  # fmt: skip
"""Settings of :class:`~probe.toy.training.train_config.TrainConfig` the Flux run ignores."""


def flux_loss_curves(lines: list[dict[str, Any]]) -> Figure:
    """The toy Flux's loss curves: the T5 stage's InfoNCE with its in-batch retrieval and
    held-out zero-shot accuracies, and the transformer's rectified-flow MSE (log step axis).

    Args:
        lines: the run's ``loss.jsonl`` lines.

    Raises:
        ValueError: the log has neither stage.

    Example:
        >>> _, lines = _training_record(Path("runs/toy_flux"))
        >>> flux_loss_curves(lines).savefig("loss_curves.png")
    """
    stages = [s for s in FLUX_PANELS if any(x["stage"] == s for x in lines)]
    if not stages:
        found = sorted({x["stage"] for x in lines})
        raise ValueError(f"no t5 or transformer lines in the log (stages {found}): not a Flux run")
    fig = Figure(figsize=(4.8 * len(stages), 3.2))
    for ax, stage in zip(fig.subplots(1, len(stages), squeeze=False)[0], stages, strict=True):
        rows = [x for x in lines if x["stage"] == stage]
        if stage == "t5":
            _text_panel(ax, rows, T5_ACCURACIES, ylabel="accuracy")
            ax.set(title="T5 text encoder (contrastive, then frozen)")
        else:
            ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], lw=1)
            ax.set(title="Transformer (rectified flow)", xscale="log", ylabel="velocity MSE")
        ax.set(xlabel="step")
    fig.tight_layout()
    return fig


def _json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def model_folder(path: Path) -> Path:
    """The ``FluxPipeline`` folder: ``path`` itself or a run's ``path/model``."""
    for folder in (path, path / "model"):
        if (folder / "model_index.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{path} holds no model_index.json: pass a toy Flux folder or its run folder "
        "(attnprobe toy train --arch flux --out RUN writes RUN/model)"
    )


def component_sizes(model: Path) -> dict[str, tuple[int, int]]:
    """Parameters (tensor elements of the safetensors) and bytes on disk of each component."""
    from safetensors import safe_open

    sizes = {}
    for part in sorted(_json(model / "model_index.json")):
        files = sorted((model / part).glob("*.safetensors")) if not part.startswith("_") else []
        n = 0
        for file in files:
            with safe_open(str(file), framework="np") as f:
                names = f.keys()
                n += sum(math.prod(f.get_slice(k).get_shape()) for k in names)
        if files:
            sizes[part] = (n, sum(f.stat().st_size for f in files))
    return sizes


def _meta_parameters(part: str) -> int:
    """Parameters of FLUX.1-dev's ``part``, built from :data:`FLUX1_DEV` on the meta device."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        if part == "transformer":
            model: Any = FluxTransformer2DModel(**FLUX1_DEV[part])
        elif part == "text_encoder":
            model = CLIPTextModel(CLIPTextConfig(**FLUX1_DEV[part]))
        else:
            model = T5EncoderModel(T5Config(**FLUX1_DEV[part]))
    return sum(p.numel() for p in model.parameters())


def _count(n: float) -> str:
    """``11.9 B``, ``4.47 M``, ``35.2 k``."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return str(int(n))


def _architecture(model: Path) -> dict[str, Any]:
    """The toy's facts read from its folder's configs."""
    t = _json(model / "transformer" / "config.json")
    vae = _json(model / "vae" / "config.json")
    use = _json(model / "attnprobe.json")
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    tokens = (use["height"] // factor // 2) ** 2  # FluxPipeline packs 2×2 latent patches
    return {
        "t": t, "clip": _json(model / "text_encoder" / "config.json"),
        "t5": _json(model / "text_encoder_2" / "config.json"), "vae": vae, "use": use,
        "factor": factor, "latent": use["height"] // factor, "tokens": tokens,
        "scheduler": _json(model / "scheduler" / "scheduler_config.json"),
    }  # fmt: skip


def _architecture_text(a: dict[str, Any], model: Path) -> str:
    """The architecture section's bullets and the component table."""
    t, clip, t5, vae, use = a["t"], a["clip"], a["t5"], a["vae"], a["use"]
    index = _json(model / "model_index.json")
    rows = ["| component | class | parameters | MB on disk |", "|---|---|---:|---:|"]
    sizes = component_sizes(model)
    for part, (n, size) in sizes.items():
        rows.append(f"| {part} | {index[part][1]} | {n:,} | {size / 2**20:.2f} |")
    total_n, total_b = (sum(v[i] for v in sizes.values()) for i in (0, 1))
    rows.append(f"| weights | | {total_n:,} | {total_b / 2**20:.2f} |")
    folder_mb = sum(f.stat().st_size for f in model.rglob("*") if f.is_file()) / 2**20
    width = t["num_attention_heads"] * t["attention_head_dim"]
    return "\n".join([
        f"- **{index['transformer'][1]}**: {t['num_layers']} double-stream blocks (separate "
        f"image and text weights, one joint softmax) then {t['num_single_layers']} "
        "single-stream blocks (one stream over [text; image] tokens), "
        f"{t['num_attention_heads']} heads × {t['attention_head_dim']} (width {width}), RoPE "
        f"axes {'/'.join(map(str, t['axes_dims_rope']))} over the ids (0, row, col), "
        f"`guidance_embeds` {t['guidance_embeds']}, {_count(sizes['transformer'][0])} "
        "parameters.",
        f"- Latents: {use['height']}×{use['height']} px through a factor-{a['factor']} VAE: "
        f"{a['latent']}×{a['latent']}×{vae['latent_channels']}, packed 2×2 into {a['tokens']} "
        f"image tokens of {t['in_channels']} channels (patch size {t['patch_size']}).",
        f"- Text: a T5-style encoder ({t5['num_layers']} layers, width {t5['d_model']}) whose "
        f"{use['max_sequence_length']} tokens are the joint text sequence, and a CLIP text "
        f"encoder ({clip['num_hidden_layers']} layers, width {clip['hidden_size']}) read for "
        "its pooled output only.",
        "", "\n".join(rows), "",
        f"The folder takes {folder_mb:.1f} MB on disk (weights, configs, tokenizers and the "
        "training record).",
    ])  # fmt: skip


def _stage_rows(cfg: dict[str, Any], lines: list[dict[str, Any]], scaling: float) -> str:
    """Rows of the training table: T5, the latent pool, the transformer."""
    t5 = [x for x in lines if x["stage"] == "t5"]
    evals = [x for x in t5 if "zero_shot_colour" in x]
    flow = [x for x in lines if x["stage"] == "transformer"]
    rows = []
    if t5:
        last = t5[-1]
        zero_shot = (
            f"; zero-shot colour {evals[-1]['zero_shot_colour']:.1%}, category "
            f"{evals[-1]['zero_shot_category']:.1%}" if evals else ""
        )  # fmt: skip
        rows.append(
            f"| T5 text encoder: contrastive (symmetric InfoNCE) against an image CNN, then "
            f"frozen | {_minutes(lines, 't5'):.1f} min | {last['step']} | loss "
            f"{last['loss']:.3f}, in-batch retrieval {last['retrieval']:.1%}{zero_shot} |"
        )
    rows.append(
        f"| latent pool: {cfg['pool']} scenes encoded by {Path(cfg['base']).name}'s VAE | not "
        f"logged | – | scaling factor {scaling:.3f} (1/std of the latents) |"
    )
    if flow:
        rows.append(
            f"| transformer: rectified flow (EMA {cfg['ema_decay']}) | "
            f"{_minutes(lines, 'transformer'):.1f} min | {flow[-1]['step']} | velocity MSE "
            f"{flow[-1]['loss']:.4f} |"
        )
    return "\n".join(rows)


def _training_text(cfg: dict[str, Any], lines: list[dict[str, Any]], scaling: float) -> str:
    """The training section: stage table, recipe and settings."""
    budget = (
        f"{cfg['max_transformer_steps']} steps" if cfg.get("max_transformer_steps")
        else f"{cfg['transformer_minutes']} minutes"
    )  # fmt: skip
    settings = "\n".join(f"| {k} | {v} |" for k, v in cfg.items() if k not in UNET_ONLY)
    return "\n".join([
        "| stage | wall time | steps | final |", "|---|---:|---:|---|",
        _stage_rows(cfg, lines, scaling), "",
        f"The transformer: batch {cfg['batch']}, AdamW at lr {cfg['lr']} ({cfg['warmup']} "
        f"warm-up steps, then cosine decay over a budget of {budget}), gradient clipping, "
        f"captions dropped to \"\" with probability {cfg['caption_dropout']}, t drawn "
        f"logit-normal (mean {cfg['logit_mean']}, std {cfg['logit_std']}), the exported "
        f"weights the EMA (decay {cfg['ema_decay']}). Wall time with {cfg['threads']} torch "
        "thread(s). Settings (`training/train_config.json`):",
        "", "| setting | value |", "|---|---|", settings,
    ])  # fmt: skip


def _evaluation_text(evaluation: Path) -> str:
    """``evaluation.md`` and what ``evaluation.csv`` says about its images."""
    with open(evaluation / "evaluation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    prompts, seeds = {r["prompt"] for r in rows}, {r["seed"] for r in rows}
    return (
        f"{len(rows)} images: {len(prompts)} prompt(s) × {len(seeds)} held-out seed(s) "
        f"(`evaluation.csv`).\n\n{(evaluation / 'evaluation.md').read_text().strip()}"
    )


def _flux1_column() -> dict[str, str]:
    """FLUX.1-dev's cells of the difference table, from :data:`FLUX1_DEV` and diffusers."""
    from diffusers import FluxPipeline

    t, vae = FLUX1_DEV["transformer"], FLUX1_DEV["vae"]
    call = inspect.signature(FluxPipeline.__call__).parameters
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    clip, t5 = FLUX1_DEV["text_encoder"], FLUX1_DEV["text_encoder_2"]
    return {
        "params": _count(_meta_parameters("transformer")),
        "blocks": f"{t['num_layers']} + {t['num_single_layers']}",
        "width": f"{t['num_attention_heads'] * t['attention_head_dim']} = "
        f"{t['num_attention_heads']} heads × {t['attention_head_dim']}",
        "rope": "/".join(map(str, t["axes_dims_rope"])),
        "guidance": f"guidance embedding (`guidance_embeds` {t['guidance_embeds']}), "
        "guidance-distilled from FLUX.1-pro: the scale is an input, one transformer call per "
        f"step (default {call['guidance_scale'].default})",
        "t5": f"T5 v1.1 XXL encoder, {_count(_meta_parameters('text_encoder_2'))} parameters "
        f"({t5['num_layers']} layers, width {t5['d_model']}), {FLUX_T5_TOKENS} tokens",
        "clip": f"CLIP ViT-L/14's text encoder, {_count(_meta_parameters('text_encoder'))} "
        f"parameters ({clip['num_hidden_layers']} layers, width {clip['hidden_size']}), pooled",
        "vae": f"{vae['latent_channels']} channels, factor {factor}, scaling "
        f"{vae['scaling_factor']}, shift {vae['shift_factor']}",
        "size": f"{FLUX_NATIVE_LATENT * factor} px → {(FLUX_NATIVE_LATENT // 2) ** 2} tokens",
        "tokens": str((FLUX_NATIVE_LATENT // 2) ** 2),
        "steps": str(call["num_inference_steps"].default),
    }


Rows = list[tuple[str, str, str]]


def _model_rows(a: dict[str, Any], cfg: dict[str, Any], f1: dict[str, str], n: int) -> Rows:
    """Differences of the components: (aspect, FLUX.1-dev, toy-flux)."""
    t, t5, clip, vae, use = a["t"], a["t5"], a["clip"], a["vae"], a["use"]
    heads, head_dim = t["num_attention_heads"], t["attention_head_dim"]
    base = Path(cfg["base"]).name
    return [
        ("transformer parameters", f1["params"], _count(n)),
        ("double + single-stream blocks", f1["blocks"],
         f"{t['num_layers']} + {t['num_single_layers']}"),
        ("width", f1["width"], f"{heads * head_dim} = {heads} heads × {head_dim}"),
        ("RoPE axes (id, row, col)", f1["rope"], "/".join(map(str, t["axes_dims_rope"]))),
        ("T5 (joint text tokens)", f1["t5"], f"T5-style encoder, {t5['num_layers']} layers, "
         f"width {t5['d_model']}, {use['max_sequence_length']} tokens, trained contrastively "
         "on the toy world, then frozen"),
        ("CLIP (pooled vector)", f1["clip"], f"{base}'s toy CLIP ({clip['num_hidden_layers']} "
         f"layers, width {clip['hidden_size']}), trained contrastively on the toy world, frozen"),
        ("VAE", f1["vae"], f"{base}'s: {vae['latent_channels']} channels, factor {a['factor']}, "
         f"scaling {vae['scaling_factor']:.3f} (measured), shift {vae['shift_factor']}"),
        ("resolution", f1["size"], f"{use['height']} px → {a['tokens']} tokens"),
    ]  # fmt: skip


def _recipe_rows(a: dict[str, Any], cfg: dict[str, Any], f1: dict[str, str]) -> Rows:
    """Differences of training, sampling and data: (aspect, FLUX.1-dev, toy-flux)."""
    from probe.toy.world.world import get_world

    t, use, sched = a["t"], a["use"], a["scheduler"]
    world = get_world(use["world"])
    tokens = (a["tokens"], int(f1["tokens"]))
    mu_toy, mu_f1 = (flow_shift(sched, n, sched["max_shift"]) for n in tokens)
    animals = [c for c in world.categories if c != "car"]
    calls = "one transformer call" if t["guidance_embeds"] else "two transformer calls"
    return [
        ("guidance", f1["guidance"], f"no guidance embedding (`guidance_embeds` "
         f"{t['guidance_embeds']}), not distilled: the unconditional velocity learned from "
         f"captions dropped to \"\" ({cfg['caption_dropout']:.0%}), sampled with true CFG "
         f"{use['guidance_scale']} (`true_cfg_scale`, empty negative prompt): {calls} per step"),
        ("training timesteps", "not published (SD3, its predecessor: logit-normal, shifted "
         "with the resolution)", f"logit-normal (mean {cfg['logit_mean']}, std "
         f"{cfg['logit_std']}), no resolution shift"),
        ("sampling", f"{sched['_class_name']}, dynamic shift: mu {mu_f1:.2f} at "
         f"{f1['tokens']} tokens (shift ×{math.exp(mu_f1):.2f}); {f1['steps']} steps by "
         "default", f"the same scheduler config: mu {mu_toy:.2f} at {a['tokens']} tokens "
         f"(shift ×{math.exp(mu_toy):.2f}); {use['num_inference_steps']} steps"),
        ("data", "billions of web images (undisclosed)", f"the synthetic world {world.name}: "
         f"{len(world.palette)} colours, {len(animals)} animals and the car, "
         f"{' and '.join(world.backgrounds)}"),
    ]  # fmt: skip


def _differences(a: dict[str, Any], cfg: dict[str, Any], toy_params: int) -> str:
    """The table of every difference from FLUX.1-dev."""
    f1 = _flux1_column()
    rows = _model_rows(a, cfg, f1, toy_params) + _recipe_rows(a, cfg, f1)
    head = "| | FLUX.1-dev | toy-flux |\n|---|---|---|\n"
    return head + "\n".join(f"| {x} | {y} | {z} |" for x, y, z in rows)


def write_flux_card(
    run_or_model_folder: str | Path, evaluation_folder: str | Path, out_folder: str | Path
) -> Path:
    """Write ``out/toy_flux_card.md`` with ``out/images/loss_curves.png`` (and ``grid.png``).

    Args:
        run_or_model_folder: the toy Flux's ``FluxPipeline`` folder (with ``training/``), or
            its run folder (``train_config.json``, ``work/loss.jsonl``, ``model/``).
        evaluation_folder: a folder written by ``attnprobe toy evaluate``.
        out_folder: the docs folder.

    Returns:
        The card's path.

    Example:
        >>> write_flux_card("runs/toy_flux", "runs/toy_flux_eval", "docs/toy_flux")
    """
    run, evaluation, out = Path(run_or_model_folder), Path(evaluation_folder), Path(out_folder)
    model = model_folder(run)
    cfg, lines = _training_record(run)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    flux_loss_curves(lines).savefig(images / "loss_curves.png", dpi=100)
    grid = "*No sample grid*: the evaluation folder has no `grid.png`."
    if (evaluation / "grid.png").is_file():
        shutil.copy(evaluation / "grid.png", images / "grid.png")
        grid = "![samples: one image per prompt at the first seed](images/grid.png)"
    a = _architecture(model)
    use = a["use"]
    text = CARD.format(
        architecture=_architecture_text(a, model),
        training=_training_text(cfg, lines, a["vae"]["scaling_factor"]),
        evaluation=_evaluation_text(evaluation),
        grid=grid,
        differences=_differences(a, cfg, component_sizes(model)["transformer"][0]),
        steps=use["num_inference_steps"], cfg=use["guidance_scale"], size=use["height"],
        tokens=use["max_sequence_length"], world=use["world"],
    )  # fmt: skip
    path = out / "toy_flux_card.md"
    path.write_text(text)
    return path


CARD = """# Model card: the toy Flux (`toy-flux`)

FLUX.1's topology at toy scale: a diffusers `FluxPipeline` (FluxTransformer2DModel, T5 and CLIP
text encoders, AutoencoderKL, FlowMatchEulerDiscreteScheduler) trained from scratch by
rectified flow on a CPU on the toy world {world} (`docs/toy_world.md`). Code:
`probe/toy/training/flux_train.py`, `flux_stages.py`, `flux_config.py`. Numbers below are read
from the model folder and its training record.

## Architecture

{architecture}

## Training

{training}

![loss curves](images/loss_curves.png)

## Evaluation

`attnprobe toy evaluate` generates every prompt of the templates on held-out seeds at the
model's sampling settings and judges each image with the toy world's judges (object found,
colour = nearest palette colour, category = the world's silhouette classifier).

{evaluation}

{grid}

## Use

    from probe.models import load_pipeline
    pipe = load_pipeline("toy-flux")
    image = pipe("a red dog standing in the park", num_inference_steps={steps},
                 true_cfg_scale={cfg}, negative_prompt="", height={size}, width={size},
                 max_sequence_length={tokens}).images[0]

The toy is not guidance-distilled: it needs true classifier-free guidance (`true_cfg_scale`
with an empty negative prompt), and the T5 length it was trained with (the padding is part of
what it saw). attnprobe's commands take both from the model (`attnprobe.json`, the T5
tokenizer's length):

    attnprobe toy evaluate --model toy-flux --out runs/toy_flux_eval

## How it differs from FLUX.1

{differences}

## Retrain

    attnprobe toy train --arch flux --out runs/toy_flux     # resumable: rerun after an interruption
    attnprobe toy evaluate --model runs/toy_flux/model --out runs/toy_flux_eval
    python -m probe.toy.evaluation.flux_card --model runs/toy_flux \\
        --evaluation runs/toy_flux_eval --out docs/toy_flux
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m probe.toy.evaluation.flux_card --model DIR --evaluation DIR --out DIR``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="the model folder or its run")
    p.add_argument("--evaluation", type=Path, required=True, help="`attnprobe toy evaluate` out")
    p.add_argument("--out", type=Path, default=Path("docs/toy_flux"))
    args = p.parse_args(argv)
    print(write_flux_card(args.model, args.evaluation, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
