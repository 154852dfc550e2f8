"""Real checkpoints' schedulers: a step is one loop iteration for every diffusers scheduler, and
editing always runs DDIM from the model's own scheduler config, whatever the folder ships."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)

from editing import edit
from editing.inversion import ddim_invert
from editing.null_text import null_text_invert
from probe.attention.batch import BatchLayout
from probe.attention.controller import Controller
from probe.attention.hooks import AttentionHooks
from probe.families.sampler import ddim_scheduler as editing_scheduler
from probe.models.schedulers import loop_length
from probe.recording.recorder import record_attention

# the scheduler_config.json of the folders as downloaded
SD15_PNDM = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
SD21_EULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SCHEDULERS = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "lcm": LCMScheduler,
}


def with_scheduler(tiny_pipe, scheduler):
    return StableDiffusionPipeline(**{**tiny_pipe.components, "scheduler": scheduler})


def hand_ddim(prediction_type: str = "epsilon") -> DDIMScheduler:
    """DDIM as the official FPE / P2P code builds it, with the folders' steps_offset 1."""
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )  # fmt: skip


def scheduler_state(sched) -> tuple:
    timesteps = None if sched.timesteps is None else sched.timesteps.tolist()
    return id(sched), type(sched), sched.num_inference_steps, timesteps


class StepLog(Controller):
    """Remembers the clock's step at every UNet call (no probabilities needed)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def claims(self, layer, kind):
        return False

    def on_unet_call(self, hooks, first):
        self.steps.append(hooks.clock.step)


# -- A: the step clock --------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_recorded_steps_are_the_pipeline_loop_iterations(tiny_pipe, name):
    sched = SCHEDULERS[name].from_config({k: v for k, v in SD15_PNDM.items() if k[0] != "_"})
    pipe = with_scheduler(tiny_pipe, sched)
    calls: list[float] = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(float(a[1])))
    try:
        with record_attention(pipe, layers="0", kinds=("cross",)) as maps:
            pipe("a red car", num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    iterations = len(sched.timesteps)
    assert iterations == {"pndm": 5, "heun": 7}.get(name, 4)  # PNDM N+1, Heun 2N-1
    assert len(calls) == iterations == loop_length(sched, 4)  # one UNet call per iteration
    assert maps.steps == list(range(iterations))
    assert [maps.timesteps[s] for s in maps.steps] == [float(t) for t in sched.timesteps]
    assert "step" not in vars(sched) and "set_timesteps" not in vars(sched)  # unwrapped


def test_step_fraction_counts_the_loop_iterations(tiny_pipe):
    """PNDM at 4 inference steps runs 5 iterations: 'first:0.6' is int(0.6 * 5) = 3 steps."""
    pipe = with_scheduler(tiny_pipe, PNDMScheduler.from_config(SD15_PNDM))
    with record_attention(pipe, layers="0", kinds=("cross",), steps="first:0.6") as maps:
        pipe("a red car", num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    assert maps.steps == [0, 1, 2]


def test_guidance_loop_calling_the_unet_twice_per_iteration_on_pndm(tiny_pipe):
    """uncond then cond at one timestep is one step, and PNDM's repeated 961 is two steps."""
    pipe = with_scheduler(tiny_pipe, PNDMScheduler.from_config(SD15_PNDM))
    unet, sched, log = pipe.unet, pipe.scheduler, StepLog()
    emb = torch.randn(
        1, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(0)
    )
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    layout = BatchLayout.for_samples(1, False)
    with torch.no_grad(), AttentionHooks(pipe, [log], layout=layout) as hooks:
        sched.set_timesteps(4)
        assert sched.timesteps.tolist() == [751, 501, 501, 251, 1]
        for t in sched.timesteps:
            uncond = unet(x, t, encoder_hidden_states=emb * 0).sample
            cond = unet(x, t, encoder_hidden_states=emb).sample
            x = sched.step(uncond + 2.0 * (cond - uncond), t, x).prev_sample
        assert hooks.total_steps == 5
    assert log.steps == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_a_second_generation_in_one_block_starts_at_step_0(tiny_pipe):
    pipe = with_scheduler(tiny_pipe, PNDMScheduler.from_config(SD15_PNDM))
    log = StepLog()
    with AttentionHooks(pipe, [log]):
        for _ in range(2):
            pipe("a red car", num_inference_steps=3, guidance_scale=1.0)
    assert log.steps == [0, 1, 2, 3] * 2


def test_inversion_and_null_text_count_one_step_per_ddim_step(tiny_pipe):
    """Null-text's inner optimisation iterations stay in their DDIM step."""
    pipe = with_scheduler(tiny_pipe, PNDMScheduler.from_config(SD15_PNDM))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    log = StepLog()
    with AttentionHooks(pipe, [log]) as hooks:
        pivot = ddim_invert(pipe, image, "a red car", num_steps=3)
        assert log.steps == [0, 1, 2] and hooks.total_steps == 3
        log.steps.clear()
        null_text_invert(pipe, pivot, "a red car", guidance_scale=3.0, inner_steps=2)
    assert sorted(set(log.steps)) == [0, 1, 2]
    assert log.steps == sorted(log.steps) and len(log.steps) > 2 * 3  # several calls per step
    assert pipe.scheduler.num_inference_steps is None  # never run on the folder's PNDM


# -- B: editing runs DDIM from the model's config ----------------------------------------------
FOLDERS = {
    "sd15-pndm": (PNDMScheduler, SD15_PNDM, "epsilon"),
    "sd21-euler": (EulerDiscreteScheduler, SD21_EULER, "v_prediction"),
}


@pytest.mark.parametrize("name", list(FOLDERS))
def test_editing_scheduler_is_ddim_from_the_folder_config(tiny_pipe, name):
    cls, config, prediction = FOLDERS[name]
    pipe = with_scheduler(tiny_pipe, cls.from_config(config))
    ddim = editing_scheduler(pipe)
    hand = hand_ddim(prediction)
    assert type(ddim) is DDIMScheduler and type(pipe.scheduler) is cls
    for key in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "clip_sample",
                "set_alpha_to_one", "steps_offset", "prediction_type", "timestep_spacing"):  # fmt: skip
        assert ddim.config[key] == hand.config[key], key
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == [751, 501, 251, 1]
    assert torch.equal(ddim.alphas_cumprod, hand.alphas_cumprod)
    # a config that does not say clip_sample: not DDIM's default True (latents are not clipped)
    bare = {k: v for k, v in config.items() if k != "clip_sample"}
    assert (
        editing_scheduler(with_scheduler(tiny_pipe, cls.from_config(bare))).config.clip_sample
        is False
    )


@pytest.mark.parametrize("name", list(FOLDERS))
def test_edit_gives_the_images_of_a_hand_built_ddim(tiny_pipe, name):
    """edit() and edit(inversion=) on PNDM / Euler folders equal the same model on DDIM."""
    cls, config, prediction = FOLDERS[name]
    shipped = with_scheduler(tiny_pipe, cls.from_config(config))
    ddim = with_scheduler(tiny_pipe, hand_ddim(prediction))
    before = scheduler_state(shipped.scheduler)
    kw = {"num_steps": 4, "guidance_scale": 5.0, "seed": 1}
    a = edit(shipped, "a red car", ["a blue car"], **kw)
    b = edit(ddim, "a red car", ["a blue car"], **kw)
    assert torch.allclose(a.latents, b.latents, atol=1e-4)
    assert np.array_equal(np.asarray(a.targets[0]), np.asarray(b.targets[0]))
    image = np.asarray(b.source)
    inv_a, inv_b = ddim_invert(shipped, image, num_steps=4), ddim_invert(ddim, image, num_steps=4)
    for za, zb in zip(inv_a.trajectory, inv_b.trajectory, strict=True):
        assert torch.allclose(za, zb, atol=1e-4)
    ra = edit(shipped, "a red car", ["a blue car"], inversion=inv_a, **kw)
    rb = edit(ddim, "a red car", ["a blue car"], inversion=inv_b, **kw)
    assert torch.allclose(ra.latents, rb.latents, atol=1e-4)
    assert scheduler_state(shipped.scheduler) == before  # the folder's scheduler untouched
    said = a.settings["scheduler"]
    assert said["class"] == "DDIMScheduler" and said["eta"] == 0.0
    assert said["built_from"] == cls.__name__
    assert said["config"]["steps_offset"] == 1 and said["config"]["set_alpha_to_one"] is False
    assert said["config"]["prediction_type"] == prediction


def test_null_text_inversion_on_pndm_equals_ddim(tiny_pipe):
    """Two runs of null-text inversion on one pipeline already differ by ~1e-5 (CPU backward
    is not bit-reproducible across threads), hence 1e-4."""
    shipped = with_scheduler(tiny_pipe, PNDMScheduler.from_config(SD15_PNDM))
    ddim = with_scheduler(tiny_pipe, hand_ddim())
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    found = [
        null_text_invert(p, ddim_invert(p, image, "a red car", 2), "a red car", 3.0, inner_steps=1)
        for p in (shipped, ddim)
    ]
    for ea, eb in zip(found[0].null_embeddings, found[1].null_embeddings, strict=True):
        assert torch.allclose(ea, eb, atol=1e-4)


# -- the same checks on the replica folders of real checkpoints (tests/replicas) ------------------
REPLICA_PREDICTION = {"sd15": "epsilon", "sd21-base": "epsilon", "sd21": "v_prediction"}


@pytest.mark.parametrize("name", list(REPLICA_PREDICTION))
def test_replica_records_its_loop_and_edits_on_ddim(replica, tmp_path, name):
    """As downloaded (SD 1.5 / 2.1-base: PNDM, SD 2.1: DDIM v-prediction), at 64 px: recording
    counts the shipped scheduler's loop; edit() and edit(inversion=) equal a hand-built DDIM."""
    import json
    import shutil

    from probe.models import load_pipeline

    folder = tmp_path / name
    shutil.copytree(replica(name), folder)
    (folder / "attnprobe.json").write_text(json.dumps({"height": 64, "width": 64}))
    shipped = load_pipeline(folder)
    ddim = with_scheduler(shipped, hand_ddim(REPLICA_PREDICTION[name]))
    ddim.register_to_config(_name_or_path=str(folder))  # the same defaults (64 px)
    with record_attention(shipped, layers="0", kinds=("cross",)) as maps:
        shipped("a red car", num_inference_steps=3, guidance_scale=5.0, height=64, width=64)
    assert maps.steps == list(range(len(shipped.scheduler.timesteps)))
    assert len(maps.steps) == (4 if name != "sd21" else 3)  # PNDM: N + 1
    before = scheduler_state(shipped.scheduler)
    kw = {"num_steps": 3, "guidance_scale": 5.0, "seed": 2}
    a = edit(shipped, "a red car", ["a blue car"], **kw)
    b = edit(ddim, "a red car", ["a blue car"], **kw)
    assert torch.allclose(a.latents, b.latents, atol=1e-4)
    image = np.asarray(b.source)
    ra = edit(
        shipped,
        "a red car",
        ["a blue car"],
        inversion=ddim_invert(shipped, image, num_steps=3),
        **kw,
    )
    rb = edit(
        ddim, "a red car", ["a blue car"], inversion=ddim_invert(ddim, image, num_steps=3), **kw
    )
    assert torch.allclose(ra.latents, rb.latents, atol=1e-4)
    assert scheduler_state(shipped.scheduler) == before
    assert a.settings["scheduler"]["built_from"] == type(shipped.scheduler).__name__
