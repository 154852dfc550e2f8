"""Recording and editing on top of pipelines as users configure them (issue 30, item 5): fused
QKV projections, an IP-Adapter's processors, attention slicing and the plain processor. In each,
``pipe(...)`` inside ``record_attention`` gives the pipeline's own output (<= 1e-6), maps of the
right shapes whose rows sum to 1, and the user's processors back afterwards.

The IP-Adapters are random, built the way diffusers' own tests build them (an image projection
and per-layer ``to_k_ip`` / ``to_v_ip`` weights in a state dict, loaded by the denoiser's
``_load_ip_adapter_weights``): no download.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from diffusers.models.embeddings import ImageProjection

from editing import edit
from probe.attention.controller import Controller
from probe.attention.hooks import AttentionHooks
from probe.models import load_pipeline
from probe.recording.recorder import record_attention

STEPS = 2
IMAGE_EMBED = 16  # the width of the (random) CLIP image embeddings


def denoiser(pipe):
    return getattr(pipe, "unet", None) or pipe.transformer


def run(pipe, **kwargs) -> torch.Tensor:
    """Final latents of a fixed-seed run of the pipeline as the user calls it."""
    out = pipe(
        "a red car", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
        output_type="latent", **kwargs,
    )  # fmt: skip
    return out.images


def record(pipe, kinds=("cross", "self"), **kwargs):
    """(plain latents, recorded latents, maps): the same run without and inside
    ``record_attention``; the processors are the very same objects afterwards."""
    before = dict(denoiser(pipe).attn_processors)
    plain = run(pipe, **kwargs)
    with record_attention(pipe, kinds=kinds, self_reduce="full", dtype=torch.float32) as maps:
        recorded = run(pipe, **kwargs)
    after = denoiser(pipe).attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    return plain, recorded, maps


def assert_maps(maps, joint: bool) -> None:
    """Every recorded layer and step: ``[1, 1, queries, keys]``, rows summing to 1 (on a DiT
    the image rows of ``self`` and ``cross`` together: one softmax)."""
    assert maps.steps == list(range(STEPS))
    for layer in maps.recorded_layers():
        queries = maps.resolution(layer)[0] * maps.resolution(layer)[1]
        for step in maps.steps:
            self_map, cross = maps[layer, step, "self"], maps[layer, step, "cross"]
            assert self_map.shape == (1, 1, queries, queries)
            assert cross.shape[:3] == (1, 1, queries)
            rows = (
                [self_map.sum(-1) + cross.sum(-1)] if joint else [self_map.sum(-1), cross.sum(-1)]
            )
            assert all((r - 1).abs().max() <= 1e-5 for r in rows)


def assert_same_maps(a, b, tol: float = 1e-5) -> None:
    assert a.data.keys() == b.data.keys()
    assert max((a.data[n] - b.data[n]).abs().max().item() for n in a.data) <= tol


# -- fused QKV projections -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "tiny-xl", "tiny-sd3", "tiny-flux"])
def test_recording_on_fused_qkv_projections(name):
    pipe = load_pipeline(name)
    _, _, unfused_maps = record(pipe)
    fuse = getattr(pipe, "fuse_qkv_projections", None) or denoiser(pipe).fuse_qkv_projections
    fuse()
    plain, recorded, maps = record(pipe)
    assert (recorded - plain).abs().max() <= 1e-6
    assert_maps(maps, joint=name in ("tiny-sd3", "tiny-flux"))
    assert_same_maps(maps, unfused_maps)  # the same attention, read from the fused weights


def test_fpe_on_fused_qkv_equals_the_unfused_edit():
    pipe = load_pipeline("tiny")
    kwargs = {"method": "fpe", "num_steps": 4, "seed": 3}
    unfused = edit(pipe, "a red car", ["a blue car"], **kwargs)
    plain = edit(pipe, "a red car", ["a blue car"], **{**kwargs, "method": "none"})
    pipe.fuse_qkv_projections()
    fused = edit(pipe, "a red car", ["a blue car"], **kwargs)
    assert (fused.latents - unfused.latents).abs().max() <= 1e-5
    assert (fused.latents[1:] - plain.latents[1:]).abs().max() > 1e-2  # the edit did something


# -- IP-Adapter ----------------------------------------------------------------------------------
def unet_ip_adapter(unet, seed: int = 0) -> dict:
    """A random IP-Adapter state dict for ``unet``, as diffusers' tests build one."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    weights = {}
    key_id = 1
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        width = unet.get_submodule(name[: -len(".processor")]).to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):
            weights[f"{key_id}.{part}.weight"] = torch.randn(width, cross, generator=g) * 0.2
        key_id += 2
    return {"image_proj": image_projection(cross, g), "ip_adapter": weights}


def image_projection(width: int, g: torch.Generator) -> dict:
    proj = ImageProjection(
        image_embed_dim=IMAGE_EMBED, cross_attention_dim=width, num_image_text_embeds=4
    )
    for p in proj.parameters():
        p.data = torch.randn(p.shape, generator=g) * 0.2
    return {k.replace("image_embeds", "proj"): v for k, v in proj.state_dict().items()}


def image_embeds(rows: int) -> list[torch.Tensor]:
    return [torch.randn(rows, 1, IMAGE_EMBED, generator=torch.Generator().manual_seed(7))]


@pytest.fixture(scope="module")
def ip_unet_pipe():
    pipe = load_pipeline("tiny")
    pipe.unet._load_ip_adapter_weights([unet_ip_adapter(pipe.unet)])
    return pipe


class SameQueries(Controller):
    """An editor of cross-attention that gives new queries of the same values: the text
    attention is then edited (by nothing), and the image prompt's is added as the
    IP-Adapter adds it."""

    def claims(self, layer, kind):
        return kind == "cross"

    def edit_qkv(self, call, q, k, v):
        return q.clone(), k, v


def test_recording_on_an_ip_adapter_unet(ip_unet_pipe):
    pipe = ip_unet_pipe
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {
        "AttnProcessor2_0", "IPAdapterAttnProcessor2_0",
    }  # fmt: skip
    embeds = image_embeds(2)  # guided: the negative image's row, then the image's
    without = run(pipe, ip_adapter_image_embeds=[torch.zeros_like(embeds[0])])
    plain, recorded, maps = record(pipe, ip_adapter_image_embeds=embeds)
    assert (plain - without).abs().max() > 1e-3  # the image prompt is live
    assert (recorded - plain).abs().max() <= 1e-6
    assert_maps(maps, joint=False)  # cross: the text tokens only
    assert maps[0, 0, "cross"].shape[-1] == pipe.tokenizer.model_max_length
    with AttentionHooks(pipe, [SameQueries()]):
        edited = run(pipe, ip_adapter_image_embeds=embeds)
    assert (edited - plain).abs().max() <= 1e-6  # the image prompt's attention is kept


def test_ip_adapter_scale_and_masks_are_kept(ip_unet_pipe):
    pipe = ip_unet_pipe
    pipe.set_ip_adapter_scale(0.4)
    try:
        embeds = image_embeds(2)
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., :32, :] = 1  # the image prompt on the top half only
        kwargs = {"ip_adapter_image_embeds": embeds,
                  "cross_attention_kwargs": {"ip_adapter_masks": [mask]}}  # fmt: skip
        plain, recorded, _ = record(pipe, kinds=("cross",), **kwargs)
        assert (recorded - plain).abs().max() <= 1e-6
        with AttentionHooks(pipe, [SameQueries()]):
            edited = run(pipe, **kwargs)
        assert (edited - plain).abs().max() <= 1e-6
        assert (plain - run(pipe, ip_adapter_image_embeds=embeds)).abs().max() > 1e-4
    finally:
        pipe.set_ip_adapter_scale(1.0)


def test_recording_on_the_non_sdpa_ip_adapter_processor(ip_unet_pipe):
    """``IPAdapterAttnProcessor`` (bmm and softmax): observed beside the user's own call."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor

    pipe, saved = ip_unet_pipe, dict(ip_unet_pipe.unet.attn_processors)
    procs = {}
    for name, proc in saved.items():
        if type(proc).__name__ == "IPAdapterAttnProcessor2_0":
            plain_proc = IPAdapterAttnProcessor(
                proc.hidden_size, proc.cross_attention_dim, proc.num_tokens, proc.scale
            )
            plain_proc.load_state_dict(proc.state_dict())
            procs[name] = plain_proc
        else:
            procs[name] = proc
    pipe.unet.set_attn_processor(procs)
    try:
        embeds = image_embeds(2)
        plain, recorded, maps = record(pipe, kinds=("cross",), ip_adapter_image_embeds=embeds)
        assert (recorded - plain).abs().max() <= 1e-6
        assert maps[0, 0, "cross"].shape[-1] == pipe.tokenizer.model_max_length
        with AttentionHooks(pipe, [SameQueries()]):  # an edit: computed with SDPA
            edited = run(pipe, ip_adapter_image_embeds=embeds)
        assert (edited - plain).abs().max() <= 1e-4
    finally:
        pipe.unet.set_attn_processor(saved)


def flux_ip_adapter(transformer, seed: int = 0) -> dict:
    """A random Flux IP-Adapter state dict (double-stream blocks), as diffusers' tests build."""
    g = torch.Generator().manual_seed(seed)
    joint, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    weights = {}
    for i in range(len(transformer.transformer_blocks)):
        for part in ("to_k_ip", "to_v_ip"):
            weights[f"{i}.{part}.weight"] = torch.randn(inner, joint, generator=g) * 0.2
            weights[f"{i}.{part}.bias"] = torch.randn(inner, generator=g) * 0.2
    return {"image_proj": image_projection(joint, g), "ip_adapter": weights}


def test_recording_on_an_ip_adapter_flux():
    pipe = load_pipeline("tiny-flux")
    pipe.transformer._load_ip_adapter_weights([flux_ip_adapter(pipe.transformer)])
    embeds = image_embeds(1)
    kwargs = {"ip_adapter_image_embeds": embeds,
              "negative_ip_adapter_image_embeds": [torch.zeros_like(embeds[0])]}  # fmt: skip
    plain, recorded, maps = record(pipe, **kwargs)
    without = run(pipe, ip_adapter_image_embeds=[torch.zeros_like(embeds[0])],
                  negative_ip_adapter_image_embeds=kwargs["negative_ip_adapter_image_embeds"])  # fmt: skip
    assert (plain - without).abs().max() > 1e-3  # the image prompt is live
    assert (recorded - plain).abs().max() <= 1e-6
    assert_maps(maps, joint=True)


# -- attention slicing and the plain processor ---------------------------------------------------
@pytest.mark.parametrize("setup", ["slicing", "plain"])
def test_recording_on_sliced_and_plain_attention(setup):
    pipe = load_pipeline("tiny")
    if setup == "slicing":
        pipe.enable_attention_slicing(1)
    else:
        pipe.unet.set_attn_processor(AttnProcessor())
    plain, recorded, maps = record(pipe)
    assert (recorded - plain).abs().max() <= 1e-6
    assert_maps(maps, joint=False)
    with record_attention(pipe, layers="up", kinds=("cross",)):  # the others run the user's
        assert (run(pipe) - plain).abs().max() <= 1e-6


def test_what_cannot_be_observed_is_refused_with_the_reason():
    from diffusers.models.attention_processor import PAGIdentitySelfAttnProcessor2_0

    pipe = load_pipeline("tiny")
    name = "up_blocks.3.attentions.2.transformer_blocks.0.attn1.processor"
    pipe.unet.set_attn_processor(
        {**pipe.unet.attn_processors, name: PAGIdentitySelfAttnProcessor2_0()}
    )
    with pytest.raises(RuntimeError, match="would change what this one computes"):
        with record_attention(pipe):
            pass
