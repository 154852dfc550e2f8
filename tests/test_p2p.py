"""Prompt-to-Prompt's pieces on the tiny model: word spans, the word-aware swap mapper, the
refinement alignment, the cross-replace schedule, reweighting the source's maps, LocalBlend's
mask, the after-step hook, and the registry / command line. (Images against a reference of the
published method: tests/test_p2p_reference.py.)"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch

from editing.cli.edit import method_arguments
from editing.editor import edit, make_controller
from editing.methods.local_blend import LocalBlend
from editing.methods.p2p import PromptToPrompt, ThresholdSelfReplace, prompt_to_prompt
from editing.methods.p2p_align import (
    cross_alphas,
    global_alignment,
    refinement_mapper,
    replacement_mapper,
    word_positions,
    word_spans,
)
from editing.methods.p2p_options import parse_cross_steps, parse_words
from probe.attention.batch import BatchLayout
from probe.attention.controller import AttentionCall, Controller
from probe.cli.main import build_parser, main
from probe.families.unet import unet_layers

L = 77


@pytest.fixture(scope="module")
def tok(tiny_pipe):
    tokenizer = tiny_pipe.tokenizer
    assert tokenizer.tokenize("teal") == ["t", "e", "a", "l</w>"]  # a word it splits
    assert tokenizer.tokenize("red car") == ["red</w>", "car</w>"]
    return tokenizer


def entries(mapper: torch.Tensor, upto: int) -> dict[tuple[int, int], float]:
    nz = mapper[:upto].nonzero().tolist()
    return {(w, n): round(float(mapper[w, n]), 4) for w, n in nz if n < upto}


# ---- words and token maps ------------------------------------------------------------------


def test_words_own_the_tokens_that_spell_them(tok):
    assert word_spans(tok, "a teal car on the road.") == [
        ("a", [1]), ("teal", [2, 3, 4, 5]), ("car", [6]), ("on", [7]), ("the", [8]),
        ("road.", [9, 10, 11, 12, 13]),
    ]  # fmt: skip
    assert word_positions(tok, "a red car. a car", "car") == [3, 6]  # every one, "." left out
    assert word_positions(tok, "a red car. a car", "car.") == [3, 4]
    assert word_positions(tok, "a red car", "Red") == [2]
    assert word_positions(tok, "a red car", "blue") == []


def test_word_swap_shares_a_word_among_its_tokens(tok):
    # one source token -> four target tokens: each reads 1/4 of it
    m = replacement_mapper(tok, "a red car", "a teal car")
    assert entries(m, 8) == {(0, 0): 1, (1, 1): 1, (2, 2): 0.25, (2, 3): 0.25, (2, 4): 0.25,
                             (2, 5): 0.25, (6, 6): 1, (7, 7): 1}  # fmt: skip
    # four source tokens -> one target token: it reads all four (1/1 each)
    m = replacement_mapper(tok, "a teal car", "a red car")
    assert {k: v for k, v in entries(m, 8).items() if k[1] == 2} == {
        (2, 2): 1, (3, 2): 1, (4, 2): 1, (5, 2): 1}  # fmt: skip
    # after the last swap the authors map position j to j ("car" at 3 reads source 3, an "e")
    assert m[3, 3] == 1 and m[6, 3] == 0
    shifted = replacement_mapper(tok, "a teal car", "a red car", tail="shifted")
    assert shifted[6, 3] == 1 and shifted[3, 3] == 0  # "car" reads "car"
    # before a later swap the words in between line up in both rules
    m = replacement_mapper(tok, "a teal car red", "a red car blue")
    assert m[6, 3] == 1 and m[7, 4] == 1
    same = replacement_mapper(tok, "a red car", "a blue car")
    assert torch.equal(same, torch.eye(L))
    with pytest.raises(ValueError, match="same number of words.*has 3, 'a big blue car' has 4"):
        replacement_mapper(tok, "a red car", "a big blue car")


def test_refinement_aligns_globally_and_new_tokens_keep_their_maps(tok):
    gather, keep = refinement_mapper(tok, "a car", "a red car")
    assert gather[:6].tolist() == [0, 1, -1, 2, 3, 5] and gather[-1] == L - 1
    assert keep[:6].tolist() == [1, 1, 0, 1, 1, 1]
    # match 1, mismatch -1, gap 0: a changed word is a deletion plus an insertion
    assert global_alignment("abxd", "abyd") == [0, 1, -1, 3]
    # on a tie the trace drops a source token before it takes the diagonal: "aa" -> "a"
    # keeps the first "a"
    assert global_alignment("aa", "a") == [0]
    assert global_alignment("", "ab") == [-1, -1]


def test_cross_steps_are_read_over_n_plus_one_rows():
    alphas = cross_alphas(0.8, 4, lambda w: [], L)
    assert alphas[:, 5].tolist() == [1, 1, 1, 1, 0]  # int(0.8 * 5) = 4 rows: all 4 steps
    assert cross_alphas(0.8, 50, lambda w: [], L)[:, 0].sum() == 40
    window = cross_alphas((0.2, 0.8), 9, lambda w: [], L)[:, 0]  # rows int(2.0) to int(8.0)
    assert window.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    words = {"default_": 1.0, "lion": 0.4}
    alphas = cross_alphas(words, 4, lambda w: [2] if w == "lion" else [], L)
    assert alphas[:, 2].tolist() == [1, 1, 0, 0, 0] and alphas[:, 3].tolist() == [1] * 5
    # no default_: every other token is replaced at every step (the authors' (0, 1))
    alphas = cross_alphas({"lion": (0.2, 0.6)}, 4, lambda w: [2], L)
    assert alphas[:, 0].tolist() == [1] * 5 and alphas[:, 2].tolist() == [0, 1, 1, 0, 0]


def test_cross_steps_and_words_parse_from_python_and_the_command_line():
    assert parse_cross_steps("0.8") == 0.8 and parse_cross_steps(1) == 1.0
    assert parse_cross_steps("0.2,0.8") == (0.2, 0.8) == parse_cross_steps([0.2, 0.8])
    assert parse_cross_steps("default_=1.0,lion=0.4") == {"default_": 1.0, "lion": 0.4}
    assert parse_cross_steps({"lion": "0.2:0.6"}) == {"lion": (0.2, 0.6)}
    for bad, message in [("1.5", "between 0 and 1"), ("0.8,0.2", "start 0.8 is after end"),
                         ("lion=0.4,lion=0.5", "'lion' is given twice"), ("a,b", "use a fraction"),
                         ("lion=0.4,x", "word=window"), ((0.1, 0.2, 0.3), "two fractions")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_cross_steps(bad)
    assert parse_words(["car", "red,car"]) == ["car", "red"]
    with pytest.raises(ValueError, match="names no word"):
        parse_words(" , ")


# ---- the controllers ------------------------------------------------------------------------


def _call(tiny_pipe, layer: int, step: int = 0) -> AttentionCall:
    info = unet_layers(tiny_pipe.unet)[layer]
    layout = BatchLayout.for_edit(1, guidance=True)
    return AttentionCall(info, "cross", step, 0.0, layout, info.resolution, L)


def test_reweight_scales_the_sources_maps_not_the_targets(tiny_pipe, tok):
    c = PromptToPrompt("reweight", cross_steps=0.5, weights={"red": 2.0})
    c.prepare(tok, "a red car", ["a red car"])
    c.on_unet_call(SimpleNamespace(layers=unet_layers(tiny_pipe.unet), total_steps=4), True)
    assert c.steps == frozenset({0, 1})  # int(0.5 * 5) = 2 rows
    probs = torch.rand(4, 2, 16, L).softmax(-1)  # [uncond src, uncond tgt, cond src, cond tgt]
    out = c.edit_probs(_call(tiny_pipe, 0), probs)
    expected = probs[2].clone()
    expected[..., 2] *= 2.0
    assert torch.allclose(out[3], expected) and torch.equal(out[:3], probs[:3])
    late = c.edit_probs(_call(tiny_pipe, 0, step=2), probs)  # outside the window: its own maps
    assert torch.equal(late, probs)


def test_self_attention_threshold_is_absolute(tiny_pipe):
    layers = unet_layers(tiny_pipe.unet)  # tiny: 8x8 latents, maps 8x8 down to 1x1
    every = ThresholdSelfReplace(16)
    every.bind(layers)
    assert every.layers == frozenset(range(16))
    coarse = ThresholdSelfReplace(2)
    coarse.bind(layers)
    assert coarse.layers == frozenset(i for i, x in enumerate(layers) if x.positions <= 4)
    with pytest.raises(ValueError, match="self_threshold=0"):
        ThresholdSelfReplace(0)


def test_local_blend_mask_pools_unites_and_subtracts(tiny_pipe, tok):
    blend = LocalBlend(["car"], subtract=["red"], threshold=0.5, start=0.5, layers="res==max")
    blend.prepare(tok, "a red car", ["a blue car"])
    hooks = SimpleNamespace(layers=unet_layers(tiny_pipe.unet), total_steps=4)
    blend.on_unet_call(hooks, True)
    assert blend.first_step == 2
    probs = torch.full((4, 2, 64, L), 1e-3)
    probs[2, :, 9, 3] = 1.0  # the source's "car" at (1, 1)
    probs[3, :, 54, 3] = 1.0  # the target's "car" at (6, 6)
    probs[2, :, 0, 2] = 1.0  # the source's "red" at (0, 0)
    blend.observe(_call(tiny_pipe, 0), probs)
    x = torch.stack([torch.zeros(4, 8, 8), torch.ones(4, 8, 8)])
    layout = BatchLayout.for_edit(1, guidance=True)
    assert blend.after_step(1, x, layout) is x  # before the start step
    out = blend.after_step(2, x, layout)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:3, 0:3] = True  # the source's car, max-pooled 3x3
    expected[5:8, 5:8] = True  # the target's car
    expected[0, 0] = False  # minus "red" (not pooled)
    assert blend.masks is not None and torch.equal(blend.masks[0], expected)
    assert torch.equal(out[1], expected.float().expand(4, 8, 8)) and torch.equal(out[0], x[0])


def test_after_step_is_called_after_every_scheduler_step(tiny_pipe):
    class ZeroAtStepTwo(Controller):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def after_step(self, step, latents, layout):
            self.steps.append(step)
            return latents * 0 if step == 2 else latents

    c = ZeroAtStepTwo()
    out = edit(tiny_pipe, "a red car", ["a blue car"], controllers=[c], num_steps=3)
    assert c.steps == [0, 1, 2] and torch.equal(out.latents, torch.zeros_like(out.latents))
    x = torch.ones(2, 4, 8, 8)
    assert Controller().after_step(0, x, BatchLayout.for_edit(1, True)) is x  # the no-op


# ---- through edit() and the command line -----------------------------------------------------


def test_word_swap_of_different_token_counts_runs(tiny_pipe):
    plain = edit(tiny_pipe, "a red car", ["a teal car"], method="none", num_steps=3)
    swap = edit(tiny_pipe, "a red car", ["a teal car"], method="p2p", num_steps=3)
    assert (swap.latents[1] - plain.latents[1]).abs().max() > 1e-3
    assert swap.settings["options"]["cross_steps"] == 0.8


def test_several_targets_equal_one_at_a_time(tiny_pipe):
    kw = {"method": "p2p", "num_steps": 3, "seed": 1, "blend": ["car"], "blend_threshold": 0.6,
          "blend_layers": "res==max"}  # fmt: skip
    both = edit(tiny_pipe, "a red car", ["a blue car", "a teal car"], **kw)
    for k, target in enumerate(["a blue car", "a teal car"]):
        alone = edit(tiny_pipe, "a red car", [target], **kw)
        assert (both.latents[k + 1] - alone.latents[1]).abs().max() <= 1e-4


def test_bad_p2p_inputs_are_refused(tiny_pipe):
    with pytest.raises(ValueError, match="give weights"):
        make_controller("p2p", mode="reweight")
    with pytest.raises(ValueError, match="blend_subtract needs blend words"):
        make_controller("p2p", blend_subtract=["red"])
    with pytest.raises(ValueError, match="option 'step_fraction' does not apply to p2p"):
        make_controller("p2p", step_fraction=0.5)
    with pytest.raises(KeyError, match="blend word 'dog' is in none of the prompts"):
        edit(tiny_pipe, "a red car", ["a blue car"], method="p2p", blend=["dog"], num_steps=2)
    with pytest.raises(KeyError, match="cross_steps: word 'dog' is in no target"):
        edit(tiny_pipe, "a red car", ["a blue car"], method="p2p",
             cross_steps={"dog": 0.3}, num_steps=2)  # fmt: skip
    with pytest.raises(ValueError, match="one resolution.*gives 1x1, 2x2"):
        edit(tiny_pipe, "a red car", ["a blue car"], method="p2p", blend=["car"],
             blend_layers="res<=2", num_steps=2)  # fmt: skip
    with pytest.raises(ValueError, match="blend_threshold=1.5"):
        make_controller("p2p", blend=["car"], blend_threshold=1.5)


def _edit_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["edit"]


def test_every_p2p_option_reaches_the_controllers_from_the_cli():
    base = ["--source", "a", "--target", "b", "--out", "o", "--method", "p2p"]
    args = _edit_parser().parse_args([
        *base, "--mode", "refine", "--blend", "car", "--blend", "lion", "--blend-subtract", "red",
        "--weights", "car=2.0", "--cross-steps", "default_=1.0,lion=0.4", "--self-steps", "0.3",
        "--self-threshold", "32", "--blend-threshold", "0.5", "--blend-start", "0.2",
        "--blend-layers", "res==max", "--swap-tail", "shifted",
    ])  # fmt: skip
    cross, selfattn, blend = make_controller("p2p", **method_arguments(args))
    assert isinstance(cross, PromptToPrompt) and cross.mode == "refine"
    assert cross.cross_steps == {"default_": 1.0, "lion": 0.4} and cross.weights == {"car": 2.0}
    assert cross.swap_tail == "shifted"
    assert isinstance(selfattn, ThresholdSelfReplace) and selfattn.threshold == 32
    assert selfattn.step_spec == 0.3
    assert isinstance(blend, LocalBlend) and blend.words == ["car", "lion"]
    assert (blend.subtract, blend.threshold, blend.start) == (["red"], 0.5, 0.2)
    assert blend.layer_spec == "res==max"
    args = _edit_parser().parse_args([*base, "--cross-steps", "0.2,0.8"])
    (cross, _) = make_controller("p2p", **method_arguments(args))
    assert cross.cross_steps == (0.2, 0.8)


def test_p2p_edit_command_runs_with_local_blend(tmp_path, capsys):
    out = tmp_path / "lb"
    code = main(["edit", "--model", "tiny", "--source", "a red car", "--target", "a teal car",
                 "--method", "p2p", "--blend", "car", "--cross-steps", "0.2,0.8", "--num-steps",
                 "2", "--out", str(out)])  # fmt: skip
    assert code == 0 and (out / "target_0.png").is_file()
    bad = main(["edit", "--model", "tiny", "--source", "a", "--target", "b", "--method", "p2p",
                "--step-fraction", "0.5", "--out", str(tmp_path / "no")])  # fmt: skip
    assert bad == 2 and "--step-fraction does not apply to --method p2p" in capsys.readouterr().err


def test_prompt_to_prompt_builds_the_published_defaults():
    cross, selfattn = prompt_to_prompt()
    assert isinstance(cross, PromptToPrompt) and cross.mode == "replace"
    assert cross.cross_steps == 0.8 and cross.layer_spec == "all"
    assert isinstance(selfattn, ThresholdSelfReplace) and selfattn.threshold == 16
    assert selfattn.step_spec == 0.4
    *_, blend = prompt_to_prompt(blend=["car"])
    assert isinstance(blend, LocalBlend) and blend.threshold == 0.3 and blend.start == 0.0
    assert blend.layer_spec == "res==max/4"
