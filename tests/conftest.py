"""Shared fixtures: the tiny pipeline and the replica folders, built once, and deterministic
generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# OMP_NUM_THREADS, where set, wins: two threads on a busy two-core machine run ten times slower
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))

REPLICAS = Path(__file__).parent / "replicas"  # real checkpoints' configs, see replicas/build.py


@pytest.fixture(scope="session")
def tiny_pipe():
    from probe.models import load_pipeline

    return load_pipeline("tiny")


@pytest.fixture(scope="session")
def replica(tmp_path_factory):
    """``replica(name)``: the folder of a replica checkpoint (``sd15``, ``sd21-base``, ``sd21``,
    ``sdxl-base``, ``sd3-medium``, ``flux-dev``, ``toy-sd15``; see ``tests/replicas/build.py``),
    built once per session into a temporary folder. Tests must not change it: copy it first."""
    from tests.replicas.build import build_replica

    root = tmp_path_factory.mktemp("replicas")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_replica(name, root)
        return built[name]

    return get


@pytest.fixture(scope="module")
def loaded(replica):
    """``loaded(name)``: the replica through ``load_pipeline``, loaded once per module."""
    from probe.models import load_pipeline

    pipes: dict = {}

    def get(name: str):
        if name not in pipes:
            pipes[name] = load_pipeline(replica(name))
        return pipes[name]

    return get


@pytest.fixture(scope="module")
def sd3():
    """tiny-sd3, random: SD3's topology."""
    from probe.models import load_pipeline

    return load_pipeline("tiny-sd3")


@pytest.fixture(scope="module")
def flux():
    """tiny-flux, random, with a guidance embedding (guided as FLUX.1-dev is)."""
    from probe.models import load_pipeline

    return load_pipeline("tiny-flux")


@pytest.fixture(scope="module")
def cfg_flux(flux):
    """tiny-flux without a guidance embedding: guided by unconditional rows (true CFG)."""
    from tests.test_flux import true_cfg_flux

    return true_cfg_flux(flux)


@pytest.fixture(scope="module")
def two_colours(tmp_path_factory):
    """A template of two prompts, "a red car" and "a blue car"."""
    from probe.prompts.templates import load_template

    path = tmp_path_factory.mktemp("tpl") / "two_colours.yaml"
    path.write_text('name: two_colours\nprompt: "a {colour} car"\nslots:\n  colour: [red, blue]\n')
    return load_template(path)


def assert_same_edit(pipe, ours: torch.Tensor, ref: torch.Tensor, tol: float = 1e-4) -> None:
    """Our edit's final latents and decoded images equal the reference's within ``tol``."""

    def decoded(latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample

    assert (ours - ref).abs().max() <= tol
    assert (decoded(ours) - decoded(ref)).abs().max() <= tol


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
    """The real, full-size ``unet/config.json`` of replica ``name`` (``sd15``, ``sd21``, ...), as
    ``UNet2DConditionModel`` keyword arguments (its ``_`` keys dropped)."""
    cfg = json.loads((REPLICAS / name / "unet" / "config.json").read_text())
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def empty_unet(name: str):
    """A full-size UNet from a real config, without allocating weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        return UNet2DConditionModel(**unet_config(name))
