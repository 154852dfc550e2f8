"""Shared fixtures: the tiny pipeline, built once, and deterministic generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))

CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture(scope="session")
def tiny_pipe():
    from probe.models import load_pipeline

    return load_pipeline("tiny")


def generate(pipe, prompt="a red car", steps=5, seed=0, **kwargs) -> np.ndarray:
    """Images as float arrays ``[n, H, W, 3]`` from a fixed seed."""
    out = pipe(
        prompt,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **kwargs,
    )
    return out.images


def unet_config(name: str) -> dict:
    cfg = json.loads((CONFIGS / f"{name}_unet.json").read_text())
    cfg.pop("_comment")
    return cfg


def empty_unet(name: str):
    """A full-size UNet from a real config, without allocating weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**unet_config(name))
