from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from probe.attention.batch import BatchLayout
from probe.attention.controller import AttentionCall, Controller, attention_probs
from probe.attention.hooks import AttentionHooks
from tests.conftest import generate


class Counter(Controller):
    """Observes every call and remembers (step, layer, kind, layout)."""

    def __init__(self) -> None:
        self.calls: list[AttentionCall] = []

    def needs_probs(self, call):
        return True

    def observe(self, call, probs):
        self.calls.append(call)
        assert probs.shape[-2] == call.query_hw[0] * call.query_hw[1]


class Boom(Exception):
    pass


def test_processors_restored_after_exception(tiny_pipe):
    before = dict(tiny_pipe.unet.attn_processors)
    with pytest.raises(Boom), AttentionHooks(tiny_pipe, [Counter()]):
        assert all(
            type(p).__name__ == "HookedAttnProcessor"
            for p in tiny_pipe.unet.attn_processors.values()
        )
        raise Boom
    after = tiny_pipe.unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)
    assert not hasattr(tiny_pipe.unet, "_attnprobe_hooks")
    assert not tiny_pipe.unet._forward_pre_hooks


def test_entering_twice_is_an_error(tiny_pipe):
    hooks = AttentionHooks(tiny_pipe)
    with hooks:
        with pytest.raises(RuntimeError, match="already open"):
            hooks.__enter__()
        with (
            pytest.raises(RuntimeError, match="another AttentionHooks block"),
            AttentionHooks(tiny_pipe),
        ):
            pass
    assert all(
        type(p).__name__ != "HookedAttnProcessor" for p in tiny_pipe.unet.attn_processors.values()
    )


def test_step_clock_and_layout_in_pipeline(tiny_pipe):
    counter = Counter()
    with AttentionHooks(tiny_pipe, [counter]) as hooks:
        generate(tiny_pipe, steps=4, guidance_scale=5.0)
    assert hooks.clock.step == 3
    assert len(hooks.clock.timesteps) == 4
    assert sorted({c.step for c in counter.calls}) == [0, 1, 2, 3]
    assert len(counter.calls) == 4 * 16 * 2
    layout = counter.calls[0].layout
    assert layout == BatchLayout.for_samples(1, guidance=True)
    assert layout.indices(guidance="uncond") == [0]
    # a second generation in the same block starts again at step 0
    counter.calls.clear()
    with AttentionHooks(tiny_pipe, [counter]):
        generate(tiny_pipe, steps=3, guidance_scale=1.0)
        generate(tiny_pipe, steps=3, guidance_scale=1.0)
    assert max(c.step for c in counter.calls) == 2
    assert counter.calls[-1].layout == BatchLayout.for_samples(1, guidance=False)


def test_step_clock_in_hand_written_loop(tiny_pipe):
    """Two UNet calls per step (uncond, then cond) share one step index."""
    unet, sched = tiny_pipe.unet, tiny_pipe.scheduler
    emb = torch.randn(1, 77, unet.config.cross_attention_dim)
    sched.set_timesteps(3)
    counter = Counter()
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), AttentionHooks(unet, [counter]) as hooks:
        for t in sched.timesteps:
            unet(latents, t, encoder_hidden_states=emb)
            unet(latents, t, encoder_hidden_states=emb)
    assert hooks.clock.step == 2
    assert [c.step for c in counter.calls if c.layer.index == 0 and c.kind == "self"] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    assert counter.calls[0].layout == BatchLayout.for_samples(1, guidance=False)


def test_explicit_layout_must_match_batch(tiny_pipe):
    unet = tiny_pipe.unet
    emb = torch.randn(3, 77, unet.config.cross_attention_dim)
    with torch.no_grad(), AttentionHooks(unet, [Counter()], layout=BatchLayout.for_edit(1, True)):
        with pytest.raises(RuntimeError, match="layout has 4 rows but the UNet got a batch of 3"):
            unet(torch.randn(3, 4, 8, 8), 10, encoder_hidden_states=emb)


def test_no_controller_keeps_previous_processors_running(tiny_pipe):
    base = generate(tiny_pipe)
    with AttentionHooks(tiny_pipe):
        assert np.array_equal(generate(tiny_pipe), base)


def test_materialised_attention_equals_fused():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 8, generator=g) for _ in range(3))
    scale = 8**-0.5
    fused = F.scaled_dot_product_attention(q, k, v, scale=scale)
    probs = attention_probs(q, k, scale)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 64), atol=1e-6)
    assert torch.allclose(probs @ v, fused, atol=1e-5)


class Shifter(Controller):
    """An editor that changes probabilities: uniform attention in one layer."""

    def claims(self, layer, kind):
        return layer.index == 3 and kind == "self"

    def edits_probs(self, call):
        return True

    def edit_probs(self, call, probs):
        return torch.full_like(probs, 1.0 / probs.shape[-1])


def test_editor_changes_output_and_only_while_open(tiny_pipe):
    base = generate(tiny_pipe)
    with AttentionHooks(tiny_pipe, [Shifter()]):
        edited = generate(tiny_pipe)
    assert np.abs(edited - base).max() > 1e-3
    assert np.array_equal(generate(tiny_pipe), base)


class Foreign(AttnProcessor):
    """Someone else's processor (plain attention under another name)."""

    calls = 0

    def __call__(self, *args, **kwargs):
        Foreign.calls += 1
        return super().__call__(*args, **kwargs)


def test_foreign_processor_composes_or_refuses(tiny_pipe):
    unet = tiny_pipe.unet
    saved = dict(unet.attn_processors)
    name = "up_blocks.3.attentions.2.transformer_blocks.0.attn1.processor"
    try:
        procs = {k: AttnProcessor2_0() for k in saved}
        procs[name] = Foreign()
        unet.set_attn_processor(procs)

        class OnlyLayer0(Counter):
            def claims(self, layer, kind):
                return layer.index == 0

        Foreign.calls = 0
        with AttentionHooks(tiny_pipe, [OnlyLayer0()]):
            generate(tiny_pipe, steps=2)
        assert Foreign.calls == 2  # still runs where no controller acts
        with (
            pytest.raises(
                RuntimeError, match=r"layer 15 \(self\) runs a processor installed by someone"
            ),
            AttentionHooks(tiny_pipe, [Counter()]),
        ):
            pass
        assert type(unet.attn_processors[name]) is Foreign
        with AttentionHooks(tiny_pipe, [Counter()], replace_foreign=True):
            Foreign.calls = 0
            generate(tiny_pipe, steps=2)
        assert Foreign.calls == 0
        assert type(unet.attn_processors[name]) is Foreign
    finally:
        unet.set_attn_processor(dict(saved))


class Keeper(Controller):
    """Observes self-attention in one layer; reads ``rows`` (``None``: every row)."""

    def __init__(self, rows=None) -> None:
        self.rows = rows
        self.seen: list[torch.Tensor] = []

    def claims(self, layer, kind):
        return layer.index == 1 and kind == "self"

    def needs_probs(self, call):
        return True

    def observed_rows(self, call):
        return self.rows

    def observe(self, call, probs):
        self.seen.append(probs.clone())


class RowBias(Controller):
    """A per-row score bias, so that the mask differs between batch rows."""

    def claims(self, layer, kind):
        return layer.index == 1 and kind == "self"

    def score_bias(self, call, q, k):
        bias = torch.zeros(q.shape[0], 1, q.shape[2], k.shape[2])
        bias[1:, :, :, : k.shape[2] // 2] = -2.0
        return bias


@pytest.mark.parametrize("bias", [False, True])
def test_observers_get_their_rows_and_only_those_are_materialised(tiny_pipe, monkeypatch, bias):
    from probe.attention import processor

    sizes: list[int] = []

    def counting(q, k, scale, mask=None):
        sizes.append(q.shape[0])
        return attention_probs(q, k, scale, mask)

    monkeypatch.setattr(processor, "attention_probs", counting)
    extra = [RowBias()] if bias else []
    every, last = Keeper(), Keeper([3])
    with AttentionHooks(tiny_pipe, [*extra, every, last]):
        generate(tiny_pipe, prompt=["a red car", "a blue car"], steps=2)
    assert sizes and set(sizes) == {4}  # the batch: 2 prompts x (uncond, cond)
    assert len(last.seen) == len(every.seen) == 2
    for full, mine in zip(every.seen, last.seen, strict=True):
        assert mine.shape[0] == 1
        assert torch.equal(mine, full[[3]])

    sizes.clear()
    alone, pair = Keeper([3]), Keeper([1, 3])
    with AttentionHooks(tiny_pipe, [*extra, alone, pair]):
        images = generate(tiny_pipe, prompt=["a red car", "a blue car"], steps=2)
    assert set(sizes) == {2}  # only rows 1 and 3 are materialised
    for full, mine, both in zip(every.seen, alone.seen, pair.seen, strict=True):
        assert torch.allclose(mine, full[[3]], atol=1e-6)
        assert torch.allclose(both, full[[1, 3]], atol=1e-6)
    with AttentionHooks(tiny_pipe, extra):
        assert np.array_equal(
            images, generate(tiny_pipe, prompt=["a red car", "a blue car"], steps=2)
        )
