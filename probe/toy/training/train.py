"""Train the toy Stable Diffusion from scratch on the toy world, on a CPU, the way SD was built.

Stages, in order, each resumable from its checkpoint in ``OUT/work`` (rerun the same command
after an interruption), each with a progress bar and lines in ``OUT/work/loss.jsonl``:

1. ``tokenizer``: a CLIP-format BPE vocabulary of the world's words (every word one token),
   closed: the exported model refuses other words (:mod:`probe.models.vocabulary`);
2. ``judge``: the category judge of the world (:mod:`probe.toy.training.train_judge`), into
   ``OUT/judge`` (exported with the model, so the model folder judges its own images);
3. ``text``: a small CLIP on rendered scenes and their captions
   (:mod:`probe.toy.training.train_text`); its text encoder is frozen from here on, as SD's CLIP
   text encoder is;
4. ``vae``, ``latents``, ``unet``: the AutoencoderKL, the encoded scene pool (which measures the
   latent scaling factor) and the UNet on the frozen text encoder
   (:mod:`probe.toy.training.train_stages`).

The UNet's EMA weights, the frozen text encoder, the VAE and the tokenizer are exported as a
diffusers folder in ``OUT/model`` with ``attnprobe.json`` (sampling defaults and the world),
``judge/`` and ``training/`` (settings and loss log). Example::

    from probe.toy.training.train import TrainConfig, train
    train(TrainConfig(out="runs/toy_v2"))              # world v2, ~2.5 h on 2 cores
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from probe.models.clip_tokenizer import load_clip_tokenizer, write_clip_tokenizer
from probe.models.tiny import assemble_pipeline, tiny_words
from probe.prompts.templates import template_words
from probe.toy.training import train_judge
from probe.toy.training.train_common import log_line
from probe.toy.training.train_config import TrainConfig as TrainConfig
from probe.toy.training.train_stages import _UNetTrainer as _UNetTrainer
from probe.toy.training.train_stages import encode_pool, train_unet, train_vae
from probe.toy.training.train_stages import render_batch as render_batch
from probe.toy.training.train_stages import toy_vae as toy_vae
from probe.toy.training.train_text import train_text
from probe.toy.world.world import get_world, lists_name


def toy_words(world: str | None = None) -> list[str]:
    """The words of a toy model of ``world``: the tiny vocabulary, every word of the templates
    with the world's lists, and the world's colours and categories."""
    w = get_world(world)
    words = set(tiny_words()) | set(template_words(lists_name(w)))
    return sorted(words | set(w.palette) | set(w.categories))


def train_world_judge(cfg: TrainConfig, out: Path) -> Path:
    """The judge stage: the world's category judge into ``out/judge`` (resumable: examples and
    epochs are kept in ``out/work/judge``); skipped when ``out/judge`` holds one."""
    folder = out / "judge"
    if (folder / "category.json").is_file():
        return folder
    n_val = max(64, cfg.judge_examples // 12)
    size = cfg.image_size
    sizes = (3 * size // 4, size, size, size)
    net, metrics = train_judge.train(
        cfg.judge_examples, n_val, cfg.judge_epochs, cfg.seed, cfg.world, out / "work" / "judge",
        sizes,
    )  # fmt: skip
    train_judge.save(net, folder, metrics, cfg.seed, cfg.world)
    log_line(out / "work", "judge", cfg.judge_epochs, metrics["seconds"], **metrics)
    return folder


def sampling_defaults(cfg: TrainConfig) -> dict[str, Any]:
    """What a toy's ``attnprobe.json`` says it is sampled with: steps, guidance, size, world."""
    return {
        "num_inference_steps": cfg.num_inference_steps,
        "guidance_scale": cfg.guidance_scale,
        "height": cfg.image_size,
        "width": cfg.image_size,
        "world": get_world(cfg.world).name,
    }


def export(
    cfg: TrainConfig,
    out: Path,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    text_encoder: Any,
    tokenizer: Any,
    scaling: float,
) -> Path:
    """Save the pipeline as a diffusers folder with its sampling defaults and its world."""
    vae.register_to_config(scaling_factor=scaling)
    pipe = assemble_pipeline(vae, text_encoder, tokenizer, unet)
    folder = out / "model"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    defaults = {
        **sampling_defaults(cfg),
        "text_encoder": "contrastive, frozen (probe.toy.training.train_text)",
    }
    (folder / "attnprobe.json").write_text(json.dumps(defaults, indent=2) + "\n")
    return folder


def keep_record(out: Path, folder: Path) -> None:
    """Copy the run's settings and loss log (``training/``) and its judge (``judge/``) into the
    model folder."""
    record = folder / "training"
    record.mkdir(exist_ok=True)
    shutil.copy(out / "train_config.json", record / "train_config.json")
    shutil.copy(out / "work" / "loss.jsonl", record / "loss.jsonl")
    if (out / "judge" / "category.json").is_file():
        shutil.copytree(out / "judge", folder / "judge", dirs_exist_ok=True)


def save_settings(cfg: TrainConfig, out: Path) -> Path:
    """Write the run's settings to ``out/train_config.json`` (and make ``out/work``); returns
    the work folder."""
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    (out / "train_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return work


def train(cfg: TrainConfig) -> Path:
    """Run (or resume) every stage and export the model; returns the model folder."""
    out = Path(cfg.out)
    work = save_settings(cfg, out)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0 = time.monotonic()
        # closed: the toy learns these words only, so a prompt with another one is refused
        tok_dir = write_clip_tokenizer(toy_words(cfg.world), work / "tokenizer", closed=True)
        tokenizer = load_clip_tokenizer(tok_dir)
        train_world_judge(cfg, out)
        text_encoder = train_text(cfg, work, tokenizer)
        vae = train_vae(cfg, work).requires_grad_(False)
        latents, scenes, scaling = encode_pool(cfg, vae, work)
        unet = train_unet(cfg, work, tokenizer, text_encoder, latents, scenes, scaling)
        folder = export(cfg, out, vae, unet, text_encoder, tokenizer, scaling)
        log_line(work, "export", 0, time.monotonic() - t0, scaling_factor=scaling)
        keep_record(out, folder)
        return folder
    finally:
        torch.set_num_threads(threads)
