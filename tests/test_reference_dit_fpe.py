"""The DiT FPE (``editing/methods/joint_fpe.py``) against a reference written from its documented
semantics and from diffusers' own processors and pipelines, not from attnprobe.

The reference installs its own attention processors on every joint attention of the
transformer (Flux: the double-stream ``transformer_blocks.i.attn``, text projected with the
``add_*`` weights, and the single-stream ``single_transformer_blocks.j.attn``, both over
``[text; image]`` with QK RMS-norms and RoPE, as ``FluxAttnProcessor``; SD3: ``[image; text]``,
as ``JointAttnProcessor2_0``). Each writes the joint map out as ``softmax(q kᵀ / √d)`` and, in
the first ``int(0.8 · N)`` steps, gives the *conditional target*'s image-query rows

    P'_ii = P^src_ii                              (image keys: the conditional source's row)
    P'_it = (1 − m_src) · P^tgt_it / (1 − m_tgt)  (text keys: the target's, rescaled)

with ``m`` a row's mass on image keys (``text_mass="source"``, the default); text-query rows and
unconditional rows stay their own. It runs its own flow-match Euler loop (FluxPipeline's and
StableDiffusion3Pipeline's: sigmas, shift, packing, ids and timestep scaling written out here)
from the same noise ``edit`` draws (one ``randn(1, C, h, w)`` for the seed, repeated per sample),
on the batch ``[uncond source, uncond target, cond source, cond target]`` under classifier-free
guidance, ``[source, target]`` without. attnprobe's final latents must match it to 1e-4.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from torch import Tensor

from editing import edit
from editing.methods.joint_fpe import JointSelfAttentionReplace

STEPS, SEED, SIZE = 7, 3, 128  # 7 steps: int(0.8 · 7) = 5 edited (a ceil or round: 6)
FRACTION = 0.8  # RowEditor's default; floored: probe/attention/steps.py fraction_steps
PROMPTS = ["a red car", "a blue car"]
TOL = 1e-4


@pytest.fixture(scope="module")
def flux():
    from probe.models import load_pipeline

    return load_pipeline("tiny-flux")


@pytest.fixture(scope="module")
def true_cfg_flux(flux):
    return without_guidance_embedding(flux)


def without_guidance_embedding(flux):
    """tiny-flux without a guidance embedding (as ``true_cfg_flux`` in tests/test_flux.py):
    guided by unconditional rows (true CFG)."""
    config = {**flux.transformer.config, "guidance_embeds": False}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel.from_config(config)
    pipe = FluxPipeline(**{**flux.components, "transformer": transformer})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sd3():
    from probe.models import load_pipeline

    return load_pipeline("tiny-sd3")


# ---- the edit: materialised joint maps ------------------------------------------------------


class RefJointFPE:
    """Joint attention with the DiT FPE on the conditional target rows. ``step`` is set by the
    loop; ``pairs`` are (source row, target row) of the conditional half."""

    def __init__(self, guided: bool, steps: int = STEPS, fraction: float = FRACTION) -> None:
        self.pairs = [(2, 3)] if guided else [(0, 1)]
        self.edited = int(fraction * steps)
        self.step = 0

    def attend(self, q: Tensor, k: Tensor, v: Tensor, image: slice, text: slice) -> Tensor:
        """``q, k, v`` ``[rows, heads, tokens, dim]``; ``image``/``text``: where those tokens
        are in the joint sequence."""
        probs = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        if self.step >= self.edited:
            return probs @ v
        probs = probs.clone()
        for s, t in self.pairs:
            src, tgt = probs[s, :, image], probs[t, :, image]  # image queries [heads, n, all]
            m_src = src[..., image].sum(-1, keepdim=True)
            m_tgt = tgt[..., image].sum(-1, keepdim=True)
            row = tgt.clone()
            row[..., image] = src[..., image]
            row[..., text] = tgt[..., text] * (1 - m_src) / (1 - m_tgt)
            probs[t, :, image] = row
        return probs @ v


def split_heads(x: Tensor, head_dim: int) -> Tensor:
    """``[rows, tokens, heads · dim]`` → ``[rows, heads, tokens, dim]``."""
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def rotate(x: Tensor, rotary: tuple[Tensor, Tensor]) -> Tensor:
    """Flux's RoPE on ``[rows, heads, tokens, dim]``: channel pairs (2i, 2i+1) turned by the
    angles whose ``cos``/``sin`` ``[tokens, dim]`` the transformer passes in."""
    cos, sin = rotary
    pairs = x.unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + turned * sin


class RefFluxProcessor:
    """A double-stream block (``encoder_hidden_states`` given) or a single-stream one (text and
    image already one sequence, ``n_text`` text tokens first)."""

    def __init__(self, ref: RefJointFPE, n_text: int) -> None:
        self.ref, self.n_text = ref, n_text

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):  # fmt: skip
        assert attention_mask is None and not attn.fused_projections
        d = attn.head_dim
        q, k, v = (split_heads(f(hidden_states), d) for f in (attn.to_q, attn.to_k, attn.to_v))
        q, k = attn.norm_q(q), attn.norm_k(k)
        if encoder_hidden_states is not None:
            added = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
            tq, tk, tv = (split_heads(f(encoder_hidden_states), d) for f in added)
            tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
            q, k, v = torch.cat([tq, q], 2), torch.cat([tk, k], 2), torch.cat([tv, v], 2)
        q, k = rotate(q, image_rotary_emb), rotate(k, image_rotary_emb)
        n = self.n_text
        out = self.ref.attend(q, k, v, image=slice(n, None), text=slice(0, n))
        out = out.transpose(1, 2).flatten(2)
        if encoder_hidden_states is None:
            return out
        return attn.to_out[1](attn.to_out[0](out[:, n:])), attn.to_add_out(out[:, :n])


class RefSD3Processor:
    """An SD3 joint block: ``[image; text]``, the text output dropped by a context-pre-only
    block."""

    def __init__(self, ref: RefJointFPE) -> None:
        self.ref = ref

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 *args, **kwargs):  # fmt: skip
        assert encoder_hidden_states is not None and attention_mask is None
        d = attn.to_q.out_features // attn.heads
        image_qkv = [split_heads(f(hidden_states), d) for f in (attn.to_q, attn.to_k, attn.to_v)]
        added = (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)
        text_qkv = [split_heads(f(encoder_hidden_states), d) for f in added]
        for i, norm, added_norm in ((0, attn.norm_q, attn.norm_added_q),
                                    (1, attn.norm_k, attn.norm_added_k)):  # fmt: skip
            image_qkv[i] = image_qkv[i] if norm is None else norm(image_qkv[i])
            text_qkv[i] = text_qkv[i] if added_norm is None else added_norm(text_qkv[i])
        q, k, v = (torch.cat([a, b], dim=2) for a, b in zip(image_qkv, text_qkv, strict=True))
        n = hidden_states.shape[1]
        out = self.ref.attend(q, k, v, image=slice(0, n), text=slice(n, None))
        out = out.transpose(1, 2).flatten(2)
        image, text = attn.to_out[1](attn.to_out[0](out[:, :n])), out[:, n:]
        return image, (text if attn.context_pre_only else attn.to_add_out(text))


@contextlib.contextmanager
def installed(transformer, processors: dict[str, object]) -> Iterator[None]:
    """``processors`` on every attention of ``transformer`` (the names must be all of them),
    the transformer's own put back afterwards."""
    saved = dict(transformer.attn_processors)
    assert set(processors) == set(saved), sorted(set(saved) ^ set(processors))
    transformer.set_attn_processor(processors)
    try:
        yield
    finally:
        transformer.set_attn_processor(saved)


# ---- the sampling loops ---------------------------------------------------------------------


def shared_noise(channels: int, side: int, seed: int = SEED) -> Tensor:
    return torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(seed))


def flux_sigmas(config, steps: int, image_tokens: int) -> Tensor:
    """FluxPipeline: ``linspace(1, 1/N, N)``, time-shifted by ``mu`` linear in the token count
    between the config's base and max, then the final 0."""
    slope = (config.max_shift - config.base_shift) / (
        config.max_image_seq_len - config.base_image_seq_len
    )
    mu = config.base_shift + slope * (image_tokens - config.base_image_seq_len)
    s = np.linspace(1.0, 1 / steps, steps)
    s = math.exp(mu) / (math.exp(mu) + (1 / s - 1))
    return torch.tensor([*s, 0.0], dtype=torch.float32)


def sd3_sigmas(config, steps: int) -> Tensor:
    """StableDiffusion3Pipeline (static shift): N sigmas spread linearly between 1 and the
    shifted smallest training sigma, shifted once more (as the scheduler does), then 0."""
    assert not config.use_dynamic_shifting

    def shifted(s):
        return config.shift * s / (1 + (config.shift - 1) * s)

    s = shifted(np.linspace(1.0, shifted(1 / config.num_train_timesteps), steps))
    return torch.tensor([*s, 0.0], dtype=torch.float32)


def same_as_diffusers(ours: Tensor, config, steps: int, **kwargs) -> None:
    """The sigmas written out above are those of a fresh diffusers scheduler."""
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(steps, **kwargs)
    assert (scheduler.sigmas - ours).abs().max() <= 1e-6


def pack(x: Tensor) -> Tensor:
    """``[rows, C, h, w]`` → ``[rows, h/2 · w/2, 4C]``: 2×2 patches, channel-major."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: Tensor, side: int) -> Tensor:
    b, _, c4 = x.shape
    x = x.reshape(b, side // 2, side // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, side, side)


def euler(ref: RefJointFPE, x: Tensor, sigmas: Tensor, guided: bool, scale: float,
          velocity: Callable[[Tensor, Tensor], Tensor]) -> Tensor:  # fmt: skip
    """The flow-match Euler loop: ``velocity(model input, timestep = 1000 σ)`` on ``[x; x]``
    under guidance (unconditional half first), ``x += (σ_next − σ) · v``."""
    for i in range(len(sigmas) - 1):
        ref.step = i
        model_in = torch.cat([x, x]) if guided else x
        v = velocity(model_in, (sigmas[i] * 1000).expand(model_in.shape[0]))
        if guided:
            uncond, cond = v.chunk(2)
            v = uncond + scale * (cond - uncond)
        x = x + (sigmas[i + 1] - sigmas[i]) * v
    return x


def image_ids(grid: int) -> Tensor:
    """``(0, row, column)`` of every packed token, row-major ``[grid², 3]``."""
    ids = torch.zeros(grid, grid, 3)
    ids[..., 1] += torch.arange(grid)[:, None]
    ids[..., 2] += torch.arange(grid)[None, :]
    return ids.reshape(-1, 3)


@torch.no_grad()
def run_flux_reference(pipe, prompts: list[str], guidance_scale: float,
                       steps: int = STEPS) -> Tensor:  # fmt: skip
    """Final latents ``[samples, 16, h, w]``."""
    transformer = pipe.transformer
    distilled = bool(transformer.config.guidance_embeds)  # guidance is an input, no uncond rows
    guided = not distilled and guidance_scale > 1
    texts = [""] * len(prompts) * guided + prompts  # unconditional rows first
    embeds, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, max_sequence_length=512)
    side = SIZE // pipe.vae_scale_factor
    x = pack(shared_noise(transformer.config.in_channels // 4, side)).repeat(len(prompts), 1, 1)
    ids = {"img_ids": image_ids(side // 2), "txt_ids": torch.zeros(embeds.shape[1], 3)}
    guidance = torch.full([len(texts)], guidance_scale) if distilled else None
    ref = RefJointFPE(guided, steps)
    names = [f"transformer_blocks.{i}" for i in range(transformer.config.num_layers)]
    names += [f"single_transformer_blocks.{j}" for j in range(transformer.config.num_single_layers)]
    processors = {f"{n}.attn.processor": RefFluxProcessor(ref, embeds.shape[1]) for n in names}

    def velocity(model_in: Tensor, t: Tensor) -> Tensor:  # FluxPipeline: timestep / 1000
        return transformer(hidden_states=model_in, timestep=t / 1000, guidance=guidance,
                           pooled_projections=pooled, encoder_hidden_states=embeds,
                           return_dict=False, **ids)[0]  # fmt: skip

    with installed(transformer, processors):
        x = euler(ref, x, flux_sigmas(pipe.scheduler.config, steps, x.shape[1]), guided,
                  guidance_scale, velocity)  # fmt: skip
    return unpack(x, side)


@torch.no_grad()
def run_sd3_reference(pipe, prompts: list[str], guidance_scale: float,
                      steps: int = STEPS) -> Tensor:  # fmt: skip
    """Final latents ``[samples, 16, h, w]``."""
    transformer = pipe.transformer
    guided = guidance_scale > 1
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
        prompt=prompts, prompt_2=None, prompt_3=None, do_classifier_free_guidance=guided
    )
    embeds = torch.cat([uncond, cond]) if guided else cond  # unconditional rows first
    pooled = torch.cat([uncond_pooled, pooled]) if guided else pooled
    side = SIZE // pipe.vae_scale_factor
    x = shared_noise(transformer.config.in_channels, side).repeat(len(prompts), 1, 1, 1)
    ref = RefJointFPE(guided, steps)
    names = [f"transformer_blocks.{i}.attn.processor" for i in range(transformer.config.num_layers)]

    def velocity(model_in: Tensor, t: Tensor) -> Tensor:  # SD3 takes the timestep itself
        return transformer(hidden_states=model_in, timestep=t, encoder_hidden_states=embeds,
                           pooled_projections=pooled, return_dict=False)[0]  # fmt: skip

    with installed(transformer, {n: RefSD3Processor(ref) for n in names}):
        return euler(ref, x, sd3_sigmas(pipe.scheduler.config, steps), guided, guidance_scale,
                     velocity)  # fmt: skip


# ---- the tests ------------------------------------------------------------------------------

CASES = {  # pipeline fixture, guidance scale, reference loop, unconditional rows
    "flux-distilled": ("flux", 3.5, run_flux_reference, False),
    "flux-true-cfg": ("true_cfg_flux", 4.0, run_flux_reference, True),
    "sd3": ("sd3", 4.0, run_sd3_reference, True),
}


def fpe_edit(pipe, guidance_scale: float, prompts=PROMPTS, **kwargs):
    kwargs = kwargs or {"method": "fpe"}
    return edit(pipe, prompts[0], prompts[1:], seed=SEED, num_steps=STEPS,
                guidance_scale=guidance_scale, height=SIZE, width=SIZE, **kwargs)  # fmt: skip


def max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


def test_the_reference_schedules_are_diffusers(flux, sd3):
    """The sigmas written out here are those of diffusers' scheduler, set as FluxPipeline and
    StableDiffusion3Pipeline set it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = flux.scheduler.config
    tokens = (SIZE // flux.vae_scale_factor // 2) ** 2
    mu = calculate_shift(tokens, config.base_image_seq_len, config.max_image_seq_len,
                         config.base_shift, config.max_shift)  # fmt: skip
    linear = np.linspace(1.0, 1 / STEPS, STEPS)
    same_as_diffusers(flux_sigmas(config, STEPS, tokens), config, STEPS, sigmas=linear, mu=mu)
    same_as_diffusers(sd3_sigmas(sd3.scheduler.config, STEPS), sd3.scheduler.config, STEPS)


@pytest.mark.parametrize("case", list(CASES))
def test_dit_fpe_matches_the_reference(case, request):
    name, scale, reference, has_uncond_rows = CASES[case]
    pipe = request.getfixturevalue(name)
    ours = fpe_edit(pipe, scale)
    assert ours.settings["step_fraction"] == FRACTION
    assert ours.settings["controllers"][0].startswith("JointSelfAttentionReplace")
    ref = reference(pipe, PROMPTS, scale)
    assert ours.latents.shape == ref.shape
    assert max_diff(ours.latents, ref) <= TOL, max_diff(ours.latents, ref)
    plain = fpe_edit(pipe, scale, method="none")
    assert max_diff(plain.latents[1], ref[1]) > 10 * TOL  # the edit acts on the target
    if has_uncond_rows:  # the reference tells an edit of the unconditional rows apart
        both = fpe_edit(pipe, scale, controllers=[JointSelfAttentionReplace(guidance="both")])
        assert max_diff(both.latents[1], ref[1]) > 10 * TOL


@pytest.mark.parametrize("case", list(CASES))
def test_identity_edit_matches_the_reference_source(case, request):
    """Source and target the same prompt: the reference's target is its source, and so is
    attnprobe's."""
    name, scale, reference, _ = CASES[case]
    pipe = request.getfixturevalue(name)
    prompts = [PROMPTS[0], PROMPTS[0]]
    ref = reference(pipe, prompts, scale)
    assert max_diff(ref[0], ref[1]) <= TOL
    ours = fpe_edit(pipe, scale, prompts=prompts)
    assert max_diff(ours.latents, ref) <= TOL
