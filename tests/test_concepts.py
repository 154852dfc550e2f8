"""ConceptAttention's concept maps (probe.recording.concepts) on tiny-flux and tiny-sd3.

Pinned: recording concepts leaves the generation bit-identical; the maps equal a reference
written from the block's weights with every softmax materialised (concept tokens with their own
residual stream, attending to [concepts; image] keys with the rotary embedding of position ids
zero, as the authors' code does; <= 1e-4); bad concept words, single-stream blocks and UNets
are refused with the reason.
"""

from __future__ import annotations

import pytest
import torch

from probe.models import load_pipeline
from probe.recording.concepts import concept_embeddings, concept_map, record_concepts
from tests.dit_reference import rotate, split_heads

PROMPT = "a red car"
CONCEPTS = ["red", "car", "dog"]
STEPS = 2


@pytest.fixture(scope="module", params=["tiny-flux", "tiny-sd3"])
def pipe(request):
    return load_pipeline(request.param)


def _run(pipe, **kwargs):
    gen = torch.Generator().manual_seed(0)
    return pipe(PROMPT, num_inference_steps=STEPS, generator=gen, output_type="latent",
                **kwargs).images  # fmt: skip


def test_recording_concepts_leaves_the_image_unchanged(pipe):
    plain = _run(pipe)
    with record_concepts(pipe, CONCEPTS) as maps:
        recorded = _run(pipe)
    assert torch.equal(plain, recorded)
    joint = [x.index for x in maps.layers if x.place == "joint"]
    assert maps.recorded_layers("concept") == joint
    assert maps.steps == list(range(STEPS))
    m = maps[joint[0], 0, "concept"]
    assert m.shape == (1, len(CONCEPTS), 64)
    torch.testing.assert_close(m.sum(dim=1), torch.ones(1, 64))  # a softmax over concepts
    assert concept_map(maps, "car").shape == (8, 8)


def _inputs(pipe):
    """Every joint block's keyword inputs and the transformer's, for one step."""
    transformer, seen = pipe.transformer, {"blocks": []}

    def top(module, args, kwargs):
        seen["top"] = kwargs

    def block(module, args, kwargs):
        seen["blocks"].append(kwargs)

    handles = [transformer.register_forward_pre_hook(top, with_kwargs=True)]
    handles += [
        b.register_forward_pre_hook(block, with_kwargs=True) for b in transformer.transformer_blocks
    ]
    try:
        _run(pipe)
    finally:
        for h in handles:
            h.remove()
    return seen


def _attend(q, k, v, scale):
    probs = (q @ k.transpose(-1, -2) * scale).softmax(dim=-1)  # materialised
    return probs @ v


def _reference_maps(pipe, embeds):
    """The concept maps of the last step's transformer call, from the weights."""
    transformer = pipe.transformer
    seen = _inputs(pipe)
    top = seen["top"]
    blocks = seen["blocks"][-len(transformer.transformer_blocks) :]  # the last step's
    flux = hasattr(transformer, "single_transformer_blocks")
    t = top["timestep"] * (1000 if flux else 1)
    pooled = torch.zeros_like(top["pooled_projections"])
    if flux and top.get("guidance") is not None:
        temb = transformer.time_text_embed(t, top["guidance"] * 1000, pooled)
    else:
        temb = transformer.time_text_embed(t, pooled)
    c = transformer.context_embedder(embeds)[None]
    zero_rope = None
    if flux:
        ids = torch.cat([torch.zeros(len(embeds), 3), top["img_ids"]])
        zero_rope = transformer.pos_embed(ids)  # concept ids zero, as the authors'
    out = []
    for b, kw in zip(transformer.transformer_blocks, blocks, strict=True):
        pre_only = getattr(b, "context_pre_only", False)
        attn, d = b.attn, b.attn.head_dim if flux else b.attn.inner_dim // b.attn.heads
        x = b.norm1(kw["hidden_states"], emb=kw["temb"])[0]
        ehs = kw["encoder_hidden_states"]
        if pre_only:
            txt = b.norm1_context(ehs, kw["temb"])
        else:
            txt = b.norm1_context(ehs, emb=kw["temb"])[0]
        iq, ik, iv = (split_heads(f(x), d) for f in (attn.to_q, attn.to_k, attn.to_v))
        tq, tk, tv = (split_heads(f(txt), d) for f in
                      (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))  # fmt: skip
        if attn.norm_q is not None:
            iq, ik = attn.norm_q(iq), attn.norm_k(ik)
        if attn.norm_added_q is not None:
            tq, tk = attn.norm_added_q(tq), attn.norm_added_k(tk)
        q, k, v = (torch.cat(p, dim=2) for p in ((tq, iq), (tk, ik), (tv, iv)))  # text first
        if flux:
            q, k = rotate(q, kw["image_rotary_emb"]), rotate(k, kw["image_rotary_emb"])
        n_text, scale = tq.shape[2], d**-0.5
        image_out = _attend(q, k, v, scale)[:, :, n_text:]
        image_v = v[:, :, n_text:]
        # the concept tokens
        if pre_only:
            cn = b.norm1_context(c, temb)
        else:
            cn, g1, sh, sc, g2 = b.norm1_context(c, emb=temb)
        cq, ck, cv = (split_heads(f(cn), d) for f in
                      (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))  # fmt: skip
        if attn.norm_added_q is not None:
            cq, ck = attn.norm_added_q(cq), attn.norm_added_k(ck)
        jq, jk = torch.cat([cq, iq], dim=2), torch.cat([ck, ik], dim=2)  # before any rotation
        if flux:  # [concepts; image] turned by ids (0, 0, 0) for the concepts, as the authors'
            jq, jk = rotate(jq, zero_rope), rotate(jk, zero_rope)
        joint = _attend(jq, jk, torch.cat([cv, image_v], dim=2), scale)
        concept_out = joint[:, :, : len(embeds)].transpose(1, 2).flatten(2)
        image_vec = image_out.transpose(1, 2).flatten(2)
        out.append((concept_out @ image_vec.transpose(1, 2)).softmax(dim=1))
        if not pre_only:
            c = c + g1[:, None] * attn.to_add_out(concept_out)
            c = c + g2[:, None] * b.ff_context(b.norm2_context(c) * (1 + sc[:, None]) + sh[:, None])
    return out


def test_concept_maps_equal_a_materialised_reference(pipe):
    with torch.no_grad():
        embeds = concept_embeddings(pipe, CONCEPTS)
        reference = _reference_maps(pipe, embeds)
        with record_concepts(pipe, CONCEPTS, steps=STEPS - 1) as maps:
            _run(pipe)
    for layer, ref in enumerate(reference):
        ours = maps[layer, STEPS - 1, "concept"]  # the conditional row (SD3: the last)
        assert ours.shape == ref[-1:].shape
        assert (ours - ref[-1:]).abs().max() <= 1e-4
    assert not torch.allclose(reference[0], reference[-1])  # the maps are not trivial


def test_concept_tokens_are_the_first_token_of_each_word(pipe):
    family_embeds = concept_embeddings(pipe, ["car"])
    assert family_embeds.shape[0] == 1
    assert not torch.equal(family_embeds, concept_embeddings(pipe, ["dog"]))


@pytest.mark.parametrize(
    ("concepts", "said"),
    [([], "no concepts"), (["red car"], "not one word"), (["car", "Car"], "twice"),
     ([""], "not one word")],
)  # fmt: skip
def test_bad_concept_words_are_refused(concepts, said):
    pipe = load_pipeline("tiny-flux")
    with pytest.raises(ValueError, match=said), record_concepts(pipe, concepts):
        pass


def test_single_stream_blocks_and_unets_are_refused():
    flux = load_pipeline("tiny-flux")
    with (
        pytest.raises(ValueError, match="not double-stream"),
        record_concepts(flux, ["car"], layers="single"),
    ):
        pass
    with (
        pytest.raises(ValueError, match="joint attention"),
        record_concepts(load_pipeline("tiny"), ["car"]),
    ):
        pass


def test_an_unknown_word_of_a_closed_vocabulary_is_refused():
    from probe.models.vocabulary import UnknownWordError

    pipe = load_pipeline("toy-flux")
    with pytest.raises(UnknownWordError), record_concepts(pipe, ["car", "xylophone"]):
        pass
