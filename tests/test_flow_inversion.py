"""Flow inversion (inverse Euler, Stable Flow's real-image path) on tiny-sd3 and tiny-flux.

The reference below is written from Stable Flow's code (snap-research/stable-flow:
``run_stable_flow.py`` ``image2latent``/``invert_and_save``, the ``invert_image`` branch of its
``pipeline_flux.py`` and ``step_forward`` of its flow-match scheduler), calling the transformer
and the VAE directly, with its own scheduler and prompt encodings.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from PIL import Image

from editing import edit
from editing.flow_inversion import STABLE_FLOW_NUDGE, FlowInversion, flow_invert
from editing.inversion import ddim_invert, encode_image, reconstruct
from editing.null_text import null_text_invert
from editing.sampling import decode, denoise, encode_prompts
from probe.attention.batch import BatchLayout

SIZE = 128


def scene(size: int = SIZE) -> np.ndarray:
    """A smooth render with a block in it, uint8 ``[size, size, 3]``."""
    yy, xx = np.mgrid[0:size, 0:size] * (256 // size)
    image = np.stack([xx, yy, 255 - (xx + yy) // 2], -1).clip(0, 255).astype(np.uint8)
    image[size // 3 : size * 2 // 3, size // 4 : size * 3 // 4] = (200, 30, 30)
    return image


# -- the reference: its own scheduler, encodings and transformer calls ---------------------------
def ref_schedule(pipe, n: int, latent_side: int = SIZE // 8):
    """(sigmas [n + 1], timesteps [n]) as diffusers' SD3 and Flux pipelines set them."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if isinstance(pipe, FluxPipeline):
        c = scheduler.config
        m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = (latent_side // 2) ** 2 * m + c.base_shift - m * c.base_image_seq_len
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    else:
        scheduler.set_timesteps(n)
    return scheduler.sigmas, scheduler.timesteps


def ref_latent(pipe, image: np.ndarray) -> torch.Tensor:
    """FlowEdit's ``run_script.py`` / Stable Flow's ``image2latent`` without the nudge."""
    pixels = pipe.image_processor.preprocess(Image.fromarray(image))
    mode = pipe.vae.encode(pixels).latent_dist.mode()
    return (mode - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor


_ENCODED: dict[tuple[int, str], tuple] = {}


def _encode(pipe, prompt: str) -> tuple:
    """The pipeline's own prompt encoding (SD3: embeddings, pooled; Flux: and text ids)."""
    key = (id(pipe), prompt)
    if key not in _ENCODED:
        if isinstance(pipe, FluxPipeline):
            _ENCODED[key] = pipe.encode_prompt(
                prompt=prompt, prompt_2=None, max_sequence_length=512
            )
        else:
            emb, _, pooled, _ = pipe.encode_prompt(
                prompt, None, None, do_classifier_free_guidance=False
            )
            _ENCODED[key] = (emb, pooled)
    return _ENCODED[key]


def _call(pipe, x: torch.Tensor, t: torch.Tensor, prompt: str, guidance: float) -> torch.Tensor:
    """One conditional transformer call on latents ``[1, C, h, w]``."""
    if not isinstance(pipe, FluxPipeline):
        emb, pooled = _encode(pipe, prompt)
        return pipe.transformer(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=emb,
                                pooled_projections=pooled, return_dict=False)[0]  # fmt: skip
    emb, pooled, txt_ids = _encode(pipe, prompt)
    _, c, h, w = x.shape
    packed = pipe._pack_latents(x, 1, c, h, w)
    img_ids = pipe._prepare_latent_image_ids(1, h // 2, w // 2, x.device, x.dtype)
    embedded = pipe.transformer.config.guidance_embeds
    out = pipe.transformer(
        hidden_states=packed, timestep=t.expand(1) / 1000, encoder_hidden_states=emb,
        guidance=torch.full([1], guidance) if embedded else None, pooled_projections=pooled,
        txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
    )[0]  # fmt: skip
    return pipe._unpack_latents(out, h * 8, w * 8, 8)


def ref_velocity(pipe, x, t, prompt: str, guidance: float) -> torch.Tensor:
    """The guided velocity: FLUX.1-dev's guidance as an input, else true CFG with ``""``."""
    cond = _call(pipe, x, t, prompt, guidance)
    rows = not (isinstance(pipe, FluxPipeline) and pipe.transformer.config.guidance_embeds)
    if rows and guidance > 1:
        uncond = _call(pipe, x, t, "", guidance)
        return uncond + guidance * (cond - uncond)
    return cond


@torch.no_grad()
def ref_invert(pipe, image, prompt, n, guidance, nudge) -> list[torch.Tensor]:
    """Stable Flow's inversion: ``step_forward`` from the last timestep back to the first."""
    sigmas, timesteps = ref_schedule(pipe, n)
    x = ref_latent(pipe, image) * nudge
    path = [x]
    for k in range(n - 1, -1, -1):
        x = x + (sigmas[k] - sigmas[k + 1]) * ref_velocity(pipe, x, timesteps[k], prompt, guidance)
        path.append(x)
    return path[::-1]


# -- (a) the materialised reference ------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "guidance", "nudge"),
    [("sd3", 1.0, 1.0), ("sd3", 3.0, STABLE_FLOW_NUDGE), ("flux", 1.0, STABLE_FLOW_NUDGE),
     ("flux", 3.5, 1.0), ("cfg_flux", 2.0, 1.0)],
)  # fmt: skip
def test_flow_invert_is_stable_flows_inverse_euler(model, guidance, nudge, request):
    pipe = request.getfixturevalue(model)
    inv = flow_invert(pipe, scene(), "a red car", num_steps=4, guidance_scale=guidance, nudge=nudge)
    ref = ref_invert(pipe, scene(), "a red car", 4, guidance, nudge)
    assert isinstance(inv, FlowInversion) and inv.kind == "euler" and len(inv.trajectory) == 5
    worst = max((a - b).abs().max().item() for a, b in zip(inv.trajectory, ref, strict=True))
    assert worst <= 1e-4, worst
    torch.testing.assert_close(
        inv.trajectory[-1], encode_image(pipe, Image.fromarray(scene())) * nudge
    )


# -- (b) inversion then reconstruction ---------------------------------------------------------
def _round_trip(pipe, n: int) -> tuple[float, float]:
    """(max |reconstruction − image|, max |random noise sampled − image|) in latents, n steps."""
    inv = flow_invert(pipe, scene(), "a red car", num_steps=n)
    cond, layout = encode_prompts(pipe, ["a red car"], False), BatchLayout.for_samples(1, False)
    out = denoise(pipe, cond, inv.trajectory[0].clone(), layout, [], n, 1.0)
    noise = torch.randn(inv.trajectory[0].shape, generator=torch.Generator().manual_seed(0))
    other = denoise(pipe, cond, noise, layout, [], n, 1.0)
    image = inv.trajectory[-1]
    return (out - image).abs().max().item(), (other - image).abs().max().item()


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_reconstruction_converges_at_first_order(model, request):
    """Inverse Euler takes the velocity of the latent one sigma below the one sampling will
    see at that timestep; the mismatch per step is O(Δσ²), so the round trip misses by O(1/N):
    the error halves as the steps double (measured on this scene: SD3 0.42, 0.19, 0.090; Flux
    0.99, 0.57, 0.30 at 4, 8, 16 steps), where a wrong sigma, sign or timestep would not
    converge; at 16 steps it is a small part of the distance from the image of a sample from
    random noise (5.6 on SD3, 4.3 on Flux: 1.6% and 7%)."""
    pipe = request.getfixturevalue(model)
    errors, baseline = zip(*(_round_trip(pipe, n) for n in (4, 8, 16)), strict=True)
    for coarse, fine in itertools.pairwise(errors):
        assert 0.4 <= fine / coarse <= 0.6, errors
    assert errors[-1] < 0.1 * baseline[-1], (errors, baseline)


def test_reconstruct_denoises_a_flow_inversion(sd3, flux):
    """:func:`reconstruct` is the flow's sampler from the inverted noise, nothing forced; on
    FLUX.1-dev its guidance is the transformer's input (no unconditional rows)."""
    for pipe, guidance in ((sd3, 1.0), (flux, 1.0), (flux, 3.5)):
        inv = flow_invert(pipe, scene(), "a red car", num_steps=3)
        cond = encode_prompts(pipe, ["a red car"], False)
        layout = BatchLayout.for_samples(1, False)
        plain = denoise(pipe, cond, inv.trajectory[0].clone(), layout, [], 3, guidance)
        image = np.asarray(reconstruct(pipe, inv, guidance_scale=guidance), dtype=np.int16)
        assert np.abs(image - np.asarray(decode(pipe, plain)[0], dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_edit_starts_from_a_flow_inversion(model, request):
    """The source row follows the stored latents (forced, FPE's default) and ends on the
    encoded image exactly; a free source with the inversion's prompt is the reconstruction."""
    pipe = request.getfixturevalue(model)
    inv = flow_invert(pipe, scene(), "a red car", num_steps=3)
    forced = edit(
        pipe, "a red car", ["a blue car"], method="fpe", inversion=inv, guidance_scale=1.0
    )
    assert torch.equal(forced.latents[0], inv.trajectory[-1][0])
    assert forced.settings["inversion"] == "euler" and forced.settings["num_steps"] == 3
    free = edit(pipe, "a red car", ["a red car"], method="none", inversion=inv, guidance_scale=1.0,
                source_branch="free", source_branch_prompt="source")  # fmt: skip
    cond = encode_prompts(pipe, ["a red car"], False)
    plain = denoise(
        pipe, cond, inv.trajectory[0].clone(), BatchLayout.for_samples(1, False), [], 3, 1.0
    )
    torch.testing.assert_close(free.latents[:1], plain, atol=1e-5, rtol=1e-5)


# -- (d) refusals -------------------------------------------------------------------------------
def test_inversions_go_to_the_families_that_take_them(sd3, tiny_pipe):
    with pytest.raises(NotImplementedError, match=r"flow_invert\(pipe, image\)"):
        ddim_invert(sd3, scene())
    with pytest.raises(NotImplementedError, match=r"SD.*DDIMSampler.*ddim_invert"):
        flow_invert(tiny_pipe, np.zeros((64, 64, 3), dtype=np.uint8))
    inv = flow_invert(sd3, scene(), num_steps=2)
    with pytest.raises(NotImplementedError, match="a flow inversion needs a flow model"):
        edit(tiny_pipe, "a red car", ["a blue car"], inversion=inv)
    with pytest.raises(NotImplementedError, match="null-text inversion optimises"):
        null_text_invert(sd3, inv, "a red car")


def test_bad_images_and_nudges_are_refused(flux):
    with pytest.raises(ValueError, match=r"image is 64x64 px .* 128x128: resize it"):
        flow_invert(flux, scene(64))
    with pytest.raises(ValueError, match=r"divisible by 16 .* image.crop\(\(0, 0, 112, 112\)\)"):
        flow_invert(flux, np.zeros((120, 120, 3), dtype=np.uint8), height=120, width=120)
    with pytest.raises(ValueError, match="nudge=0"):
        flow_invert(flux, scene(), nudge=0)


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "flags"), [("tiny-sd3", []), ("tiny-flux", ["--inversion", "euler"])]
)
def test_cli_edits_a_real_image_on_a_flow_by_inverse_euler(model, flags, tmp_path):
    """``attnprobe edit --image`` on SD3 and Flux inverts by inverse Euler (the default there)."""
    import json

    from probe.cli.main import main

    Image.fromarray(scene()).save(tmp_path / "car.png")
    out = tmp_path / "out"
    assert main(["edit", "--model", model, "--source", "a red car", "--target", "a blue car",
                 "--image", str(tmp_path / "car.png"), *flags, "--nudge", "1.15", "--guidance",
                 "1", "--num-steps", "2", "--out", str(out)]) == 0  # fmt: skip
    settings = json.loads((out / "settings.json").read_text())
    assert settings["inversion"] == "euler" and settings["source_branch"] == "forced"
    assert (out / "target_0.png").is_file()


def test_cli_refuses_a_nudge_on_ddim(tmp_path, capsys):
    from probe.cli.main import main

    Image.fromarray(scene(64)).save(tmp_path / "car.png")
    assert main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a blue car",
                 "--image", str(tmp_path / "car.png"), "--nudge", "1.15",
                 "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "--nudge only applies to --inversion euler" in capsys.readouterr().err
