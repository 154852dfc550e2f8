"""Loading in the dtype asked (a folder's fp16 variant, no float32 copy), half-precision
numerics (probabilities in float32, bfloat16 and float16 maps against float32), and recording
and FPE editing under CPU offload equal to the plain run (issue 30, items 1-2)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from probe.attention.controller import attention_probs
from probe.models import load_pipeline
from probe.models.placement import execution_device, parse_dtype, pretrained_options
from probe.recording.recorder import record_attention

PROMPT = "a red car in the park"


def _record_and_edit(pipe, seed: int = 0):
    """Maps of a 2-step recording (whole self maps) and the latents of a 2-step FPE edit."""
    from editing.editor import edit

    with record_attention(pipe, self_reduce="full") as maps:
        pipe(PROMPT, num_inference_steps=2, output_type="latent",
             generator=torch.Generator().manual_seed(seed))  # fmt: skip
    result = edit(pipe, PROMPT, ["a blue car in the park"], method="fpe", num_steps=2, seed=seed)
    return maps, result.latents


def _max_diff(a, b) -> dict[str, float]:
    """Largest |a - b| over the maps of each kind."""
    worst: dict[str, float] = {}
    for name, t in a.data.items():
        kind = name.split("/")[0]
        diff = (t.float() - b.data[name].float()).abs().max().item()
        worst[kind] = max(worst.get(kind, 0.0), diff)
    return worst


@pytest.fixture(scope="module")
def float32_run():
    return _record_and_edit(load_pipeline("tiny"))


# -- loading ------------------------------------------------------------------------------------
def test_half_precision_load_reads_the_fp16_variant_files(replica, tmp_path):
    folder = shutil.copytree(replica("sd15"), tmp_path / "sd15")
    variant = folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    state = load_file(variant)
    state["conv_in.weight"] = torch.full_like(state["conv_in.weight"], 0.125)  # only there
    save_file(state, variant, {"format": "pt"})
    for dtype in (torch.float16, torch.bfloat16):
        pipe = load_pipeline(folder, dtype=dtype)
        assert pipe.unet.conv_in.weight.dtype == dtype
        assert torch.all(pipe.unet.conv_in.weight == 0.125)
        for name in ("unet", "vae", "text_encoder"):
            assert {p.dtype for p in getattr(pipe, name).parameters()} == {dtype}, name
    plain = load_pipeline(folder)  # float32: the plain files
    assert plain.unet.conv_in.weight.dtype == torch.float32
    assert not torch.all(plain.unet.conv_in.weight == 0.125)


def test_variant_only_where_the_folder_has_one(replica, tmp_path):
    folder = replica("sd15")
    assert pretrained_options(folder, torch.float16) == {"dtype": torch.float16, "variant": "fp16"}
    assert pretrained_options(folder, None) == {"dtype": torch.float32}
    bare = tmp_path / "bare"
    (bare / "unet").mkdir(parents=True)
    assert pretrained_options(bare, torch.bfloat16) == {"dtype": torch.bfloat16}


def test_built_in_models_load_in_the_dtype_asked():
    pipe = load_pipeline("tiny", dtype="bfloat16")
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.bfloat16}
    assert parse_dtype("torch.float16") is torch.float16


def test_unknown_dtype_and_offload_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="float32, float16, bfloat16"):
        load_pipeline("tiny", dtype="float8")
    with pytest.raises(ValueError, match="none, model, sequential"):
        load_pipeline("tiny", offload="disk")


def test_sequential_offload_onto_the_cpu_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match="--offload none on a CPU"):
        load_pipeline("tiny", device="cpu", offload="sequential")


# -- offload ------------------------------------------------------------------------------------
def test_recording_and_fpe_under_model_offload_equal_the_plain_run(float32_run):
    pipe = load_pipeline("tiny", device="cpu", offload="model")
    assert getattr(pipe.unet, "_hf_hook", None) is not None  # diffusers' offload hooks are on
    assert execution_device(pipe).type == "cpu"
    maps, latents = _record_and_edit(pipe)
    plain_maps, plain_latents = float32_run
    assert set(maps.data) == set(plain_maps.data)
    assert max(_max_diff(maps, plain_maps).values()) <= 1e-6
    assert (latents - plain_latents).abs().max().item() <= 1e-6
    assert getattr(pipe.unet, "_hf_hook", None) is not None  # the hooks left them in place


def test_recording_and_fpe_with_weights_streamed_by_accelerate_equal_the_plain_run(float32_run):
    """accelerate's ``cpu_offload`` (what sequential offload puts on every submodule): the
    UNet's weights wait on the meta device and reach each layer only for its forward."""
    from accelerate import cpu_offload

    pipe = load_pipeline("tiny")
    cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
    assert pipe.unet.conv_in.weight.device.type == "meta"
    maps, latents = _record_and_edit(pipe)
    plain_maps, plain_latents = float32_run
    assert max(_max_diff(maps, plain_maps).values()) <= 1e-6
    assert (latents - plain_latents).abs().max().item() <= 1e-6


# -- half precision -----------------------------------------------------------------------------
def test_probabilities_from_half_inputs_are_computed_in_float32():
    q = torch.zeros(1, 1, 1, 8, dtype=torch.float16)
    q[..., 0], q[..., 1] = 256.0, 1.0
    k = torch.zeros(1, 1, 4096, 8, dtype=torch.float16)
    k[:, :, :2, 0] = 256.0  # scores of 65536: over float16's largest, 65504
    k[:, :, 1, 1] = -20.0  # 20 below: probability e^-20 = 2e-9, under float16's smallest 6e-8
    assert torch.isinf(q[0, 0] @ k[0, 0, 0]).item()  # what a float16 matmul gives
    probs = attention_probs(q, k, scale=1.0)
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()
    assert probs[0, 0, 0, 1].item() == pytest.approx(torch.exp(torch.tensor(-20.0)).item(), 1e-3)
    assert probs.sum(-1).sub(1).abs().max().item() <= 1e-6


@pytest.mark.parametrize(
    ("dtype", "self_tol", "cross_tol", "latent_tol"),
    [("bfloat16", 0.02, 0.005, 0.05), ("float16", 0.005, 0.001, 0.01)],
)
def test_half_precision_maps_and_edits_agree_with_float32(
    float32_run, dtype, self_tol, cross_tol, latent_tol
):
    """Tolerances: bfloat16 keeps 8 significant bits (a rounding of 2^-9 relative at every
    weight, activation and kernel), float16 11 bits; on ``tiny`` the largest map differences
    measured were 0.0037 (self) and 0.0004 (cross) in bfloat16, 0.0010 / 0.00005 in float16,
    and the edit's latents 1.8% / 0.25% of their largest value. The tolerances are about five
    times those; a different seed moves the maps by far more (the last assert)."""
    maps, latents = _record_and_edit(load_pipeline("tiny", dtype=dtype))
    plain_maps, plain_latents = float32_run
    assert {t.dtype for t in maps.data.values()} == {torch.float16}  # stored as in float32
    worst = _max_diff(maps, plain_maps)
    assert worst["self"] <= self_tol and worst["cross"] <= cross_tol, worst
    scale = plain_latents.abs().max().item()
    assert (latents.float() - plain_latents).abs().max().item() <= latent_tol * scale
    other, _ = _record_and_edit(load_pipeline("tiny", dtype=dtype), seed=1)
    assert _max_diff(other, plain_maps)["self"] > 5 * self_tol


# -- command line -------------------------------------------------------------------------------
def test_record_edit_and_sweep_take_dtype_and_offload(tmp_path):
    import json

    from probe.cli.main import main

    half = ["--model", "tiny", "--dtype", "bfloat16", "--num-steps", "2"]
    assert main(["record", *half, "--prompt", "a red car", "--out", str(tmp_path / "r"),
                 "--offload", "model", "--device", "cpu"]) == 0  # fmt: skip
    settings = json.loads((tmp_path / "r" / "settings.json").read_text())
    assert (settings["dtype"], settings["offload"]) == ("bfloat16", "model")
    assert main(["edit", *half, "--source", "a red car", "--target", "a blue car",
                 "--out", str(tmp_path / "e")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "e" / "settings.json").read_text())["dtype"] == "bfloat16"
    assert main(["sweep", *half, "--pairs", "colour_edits", "--out", str(tmp_path / "s"),
                 "--ranges", "fpe", "--kinds", "self", "--max-pairs", "1", "--seeds", "0"]) == 0  # fmt: skip
    assert (tmp_path / "s" / "sweep.csv").is_file()
