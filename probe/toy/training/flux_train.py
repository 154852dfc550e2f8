"""Train the toy Flux (``toy-flux``) on world v2, on a CPU: FLUX.1's topology at toy scale.

Stages, in order, each resumable from its checkpoint in ``OUT/work`` (rerun the same command
after an interruption), each with a progress bar and lines in ``OUT/work/loss.jsonl``:

1. the base: toy-v2's frozen CLIP text encoder, its closed tokenizer and its VAE, loaded from
   ``cfg.base`` (toy-v2's folder): its CLIP was trained contrastively on world v2 as FLUX.1's
   CLIP-L was on the web, and its VAE encodes the same 64 px scenes;
2. ``t5``: a T5 encoder trained contrastively on world v2, then frozen
   (:func:`~probe.toy.training.flux_stages.train_t5`); its tokenizer holds the base's words;
3. ``latents``: the scene pool encoded by the base VAE (the scaling factor measured on it);
4. ``transformer``: the ``FluxTransformer2DModel`` by rectified flow
   (:mod:`probe.toy.training.flux_stages`; settings and architecture:
   :mod:`probe.toy.training.flux_config`).

The EMA transformer, both text encoders, the VAE (``shift_factor`` 0.0) and FLUX.1-dev's
scheduler config are exported as a ``FluxPipeline`` folder in ``OUT/model`` with
``attnprobe.json`` (sampling defaults, ``world`` v2, ``max_sequence_length``) and ``training/``.
``python -m probe.toy.training.flux_train --batch 48`` prints the parameter table and times a
transformer step. The toy is not guidance-distilled: sample it with true classifier-free guidance::

    from probe.toy.training.flux_train import FluxTrainConfig, train_flux
    folder = train_flux(FluxTrainConfig(out="runs/toy_flux"))   # ~2 h 50 min on 2 cores
    pipe = FluxPipeline.from_pretrained(folder)
    pipe("a red dog", true_cfg_scale=4.0, negative_prompt="", max_sequence_length=16,
         height=64, width=64, num_inference_steps=20)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from torch import nn
from transformers import CLIPTextModel

from probe.models.clip_tokenizer import load_clip_tokenizer
from probe.models.tiny_dit import flux_dev_scheduler
from probe.models.vocabulary import known_words
from probe.toy.training.flux_config import FluxTrainConfig as FluxTrainConfig
from probe.toy.training.flux_config import toy_flux_transformer, toy_t5_encoder
from probe.toy.training.flux_stages import (
    FluxText,
    flow_loss,
    toy_t5_tokenizer,
    train_t5,
    train_transformer,
)
from probe.toy.training.train import keep_record, sampling_defaults, save_settings, toy_words
from probe.toy.training.train_common import log_line
from probe.toy.training.train_stages import encode_pool
from probe.toy.world.world import get_world, world_of

TRUE_CFG = (
    "true classifier-free guidance (no guidance input): FluxPipeline(prompt, "
    "true_cfg_scale={scale}, negative_prompt='', max_sequence_length={tokens})"
)
"""How the toy Flux is sampled (``attnprobe.json``, key ``guidance``)."""


def load_base(cfg: FluxTrainConfig) -> tuple[Any, CLIPTextModel, AutoencoderKL]:
    """The base folder's CLIP tokenizer, CLIP text encoder and VAE, frozen.

    Raises:
        FileNotFoundError: ``cfg.base`` is not a model folder.
        ValueError: the base was trained on another world than ``cfg.world``.
    """
    base = Path(cfg.base)
    if not (base / "model_index.json").is_file():
        raise FileNotFoundError(
            f"base {base} is not a model folder: the toy Flux reuses toy-v2's CLIP and VAE; "
            "pass base= a toy-v2 folder (probe/toy/models/toy_v2, or a run's OUT/model)"
        )
    world = world_of(base).name
    if world != get_world(cfg.world).name:
        raise ValueError(
            f"base {base} was trained on world {world}, not {cfg.world}: pass a base of world "
            f"{cfg.world} (toy-v2's folder is world v2's)"
        )
    tokenizer = load_clip_tokenizer(base / "tokenizer")
    clip = CLIPTextModel.from_pretrained(str(base / "text_encoder"), local_files_only=True)
    vae = AutoencoderKL.from_pretrained(str(base / "vae"), local_files_only=True)
    return tokenizer, clip.eval().requires_grad_(False), vae.eval().requires_grad_(False)


def export_flux(
    cfg: FluxTrainConfig,
    out: Path,
    text: FluxText,
    vae: AutoencoderKL,
    transformer: FluxTransformer2DModel,
    scaling: float,
) -> Path:
    """Save the ``FluxPipeline`` folder ``out/model`` with its ``attnprobe.json``."""
    vae.register_to_config(scaling_factor=scaling, shift_factor=0.0)
    pipe = FluxPipeline(
        scheduler=flux_dev_scheduler(), vae=vae, text_encoder=text.text_encoder,
        tokenizer=text.tokenizer, text_encoder_2=text.text_encoder_2,
        tokenizer_2=text.tokenizer_2, transformer=transformer,
    )  # fmt: skip
    folder = out / "model"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    defaults = {
        **sampling_defaults(cfg),
        "max_sequence_length": cfg.text_tokens,
        "guidance": TRUE_CFG.format(scale=cfg.guidance_scale, tokens=cfg.text_tokens),
        "text_encoder": f"CLIP: {Path(cfg.base).name}'s, frozen; T5: contrastive, frozen "
        "(probe.toy.training.flux_stages)",
    }
    (folder / "attnprobe.json").write_text(json.dumps(defaults, indent=2) + "\n")
    return folder


def parameter_table(parts: dict[str, nn.Module]) -> str:
    """Parameters and float32 megabytes of each part, and their total, as a markdown table."""
    rows = ["| part | parameters | MB |", "|---|---:|---:|"]
    total = 0
    for name, module in parts.items():
        n = sum(p.numel() for p in module.parameters())
        total += n
        rows.append(f"| {name} | {n:,} | {n * 4 / 2**20:.1f} |")
    rows.append(f"| total | {total:,} | {total * 4 / 2**20:.1f} |")
    return "\n".join(rows)


def step_seconds(cfg: FluxTrainConfig, batch: int, steps: int = 3) -> float:
    """Mean seconds of one transformer training step (forward, backward, AdamW) on random
    inputs of the run's shapes, after one warm-up step."""
    torch.manual_seed(0)
    transformer = toy_flux_transformer(cfg)
    opt = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    x0 = torch.randn(batch, 4, cfg.latent_size, cfg.latent_size)
    states, pooled = torch.randn(batch, cfg.text_tokens, cfg.text_dim), torch.randn(batch, 64)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = flow_loss(transformer, x0, torch.randn_like(x0), torch.rand(batch), states, pooled)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return float(np.mean(times))


def train_flux(cfg: FluxTrainConfig) -> Path:
    """Run (or resume) every stage and export the model; returns the model folder."""
    out = Path(cfg.out)
    work = save_settings(cfg, out)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.monotonic()
        tokenizer, clip, vae = load_base(cfg)
        words = sorted(known_words(tokenizer) or toy_words(cfg.world))
        t5_tokenizer = toy_t5_tokenizer(words, cfg.text_tokens)
        text = FluxText(tokenizer, clip, t5_tokenizer, train_t5(cfg, work, t5_tokenizer))
        latents, scenes, scaling = encode_pool(cfg, vae, work)
        transformer = train_transformer(cfg, work, text, latents, scenes, scaling)
        folder = export_flux(cfg, out, text, vae, transformer, scaling)
        log_line(work, "export", 0, time.monotonic() - t0, scaling_factor=scaling)
        keep_record(out, folder)
        return folder
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    """Print the toy Flux's parameter table (transformer, toy-v2's CLIP and VAE, the T5) and
    the seconds of one transformer training step at ``--batch``."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--batch", type=int, default=FluxTrainConfig.batch)
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = FluxTrainConfig()
    tokenizer, clip, vae = load_base(cfg)
    words = sorted(known_words(tokenizer) or toy_words(cfg.world))
    t5 = toy_t5_encoder(len(toy_t5_tokenizer(words, cfg.text_tokens)), cfg.text_dim, cfg.t5_layers)
    parts = {"transformer": toy_flux_transformer(cfg), "text_encoder (CLIP)": clip}
    print(parameter_table(parts | {"text_encoder_2 (T5)": t5, "vae": vae}))
    seconds = step_seconds(cfg, args.batch, args.steps)
    print(f"{seconds:.2f} s per transformer step at batch {args.batch}, {args.threads} threads")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
