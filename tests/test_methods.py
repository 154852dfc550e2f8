"""The method registry (one place for every edit method and its options) and the one rule for
step fractions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import editing.methods.registry as registry
from editing.cli.edit import method_arguments
from editing.editor import edit, make_controller
from editing.methods.masactrl import MutualSelfAttention
from editing.methods.p2p import PromptToPrompt
from editing.methods.registry import (
    EditMethod,
    MethodOption,
    get_method,
    method_names,
    parse_weights,
    sweep_kinds,
)
from editing.methods.replace import SelfAttentionReplace
from probe.attention.controller import Controller
from probe.attention.steps import as_step_fraction, fraction_steps, resolve_steps
from probe.cli.main import build_parser, main
from probe.families.unet import unet_layers

DOCS = Path(__file__).parents[1] / "docs" / "editing.md"


# ---- one rule for step fractions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "total", "count"),
    [(0, 4, 0), (1, 4, 4), (1.0, 4, 4), (0.8, 4, 3),
     (0, 7, 0), (1, 7, 7), (1.0, 7, 7), (0.8, 7, 5)],
)  # fmt: skip
def test_step_fraction_edge_cases_agree_everywhere(tiny_pipe, fraction, total, count):
    first = list(range(count))
    assert fraction_steps(fraction, total) == first
    assert fraction_steps(fraction, total, "last") == list(range(total - count, total))
    assert resolve_steps(f"first:{fraction}", total) == first
    assert resolve_steps(f"last:{fraction}", total) == list(range(total - count, total))
    hooks = SimpleNamespace(layers=unet_layers(tiny_pipe.unet), total_steps=total)
    for c in make_controller("fpe", step_fraction=fraction):  # RowEditor, via the registry
        c.on_unet_call(hooks, first=True)
        assert c.steps == frozenset(first)
    cross, selfattn = make_controller("p2p", cross_steps=fraction, self_steps=fraction)
    selfattn.on_unet_call(hooks, first=True)  # self_replace_steps: int(f * N), the same rule
    assert selfattn.steps == frozenset(first)
    # cross_replace_steps: the authors' N + 1 alpha rows, int(f * (N + 1)) of them (0.8 of 4
    # steps is 4 steps, of 7 steps 6); row N is never reached
    cross.prepare(tiny_pipe.tokenizer, "a red car", ["a blue car"])
    cross.on_unet_call(hooks, first=True)
    authors = {(0.8, 4): 4, (0.8, 7): 6}.get((fraction, total), count)
    assert cross.steps == frozenset(range(authors))


def test_bad_step_fractions_are_refused():
    assert as_step_fraction(1) == 1.0 and isinstance(as_step_fraction(1), float)
    for bad in (True, False, 1.5, -0.1, float("nan"), "0.8", None):
        with pytest.raises(ValueError, match="step fraction"):
            as_step_fraction(bad)
    with pytest.raises(ValueError, match="step fraction"):
        make_controller("fpe", step_fraction=True)  # a bool is not a fraction
    with pytest.raises(ValueError, match="not between 0 and 1"):
        resolve_steps("first:1.5", 4)
    with pytest.raises(ValueError, match="is a bool"):
        SelfAttentionReplace("fpe", True)
    with pytest.raises(ValueError, match="total=-1"):
        fraction_steps(0.5, -1)


def test_integer_one_edits_every_step_not_step_one(tiny_pipe):
    kwargs = {"num_steps": 4, "seed": 1}
    one = edit(tiny_pipe, "a red car", ["a blue car"], method="fpe", step_fraction=1, **kwargs)
    all_steps = edit(tiny_pipe, "a red car", ["a blue car"], step_fraction=1.0, **kwargs)
    step_one = edit(tiny_pipe, "a red car", ["a blue car"],
                    controllers=[SelfAttentionReplace("fpe", [1])], **kwargs)  # fmt: skip
    assert torch.equal(one.latents, all_steps.latents)
    assert (one.latents[1] - step_one.latents[1]).abs().max() > 1e-4
    assert one.settings["step_fraction"] == 1.0


# ---- the registry drives edit(), the CLI and the sweep ---------------------------------------


def _edit_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["edit"]


def _groups(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {
        str(g.title): [s for a in g._group_actions for s in a.option_strings]
        for g in parser._action_groups
    }


def test_registry_drives_cli_choices_flags_and_groups(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(EditMethod(
        "probe_only", "a method added in a test", lambda threshold: [], uses_layers=False,
        uses_step_fraction=False,
        options=(MethodOption("threshold", float, 0.5, "a threshold", metavar="T"),),
    ))  # fmt: skip
    parser = _edit_parser()
    method = next(a for a in parser._actions if "--method" in a.option_strings)
    assert tuple(method.choices) == method_names() and "probe_only" in method.choices
    groups = _groups(parser)
    for m in registry.edit_methods():
        assert f"--method {m.name}" in groups
        for opt in m.options:
            assert opt.flag in groups[f"--method {m.name}"]
    help_text = parser.format_help()
    assert "--method masactrl" in help_text and "Takes no --layers" in help_text
    args = parser.parse_args(["--source", "a", "--target", "b", "--out", "o",
                              "--method", "probe_only", "--threshold", "0.25"])  # fmt: skip
    assert method_arguments(args) == {"threshold": 0.25}
    with pytest.raises(ValueError, match="already registered"):
        registry.register(get_method("fpe"))
    with pytest.raises(ValueError, match="shadows a keyword of edit"):
        registry.register(EditMethod("x", "x", lambda **k: [],
                                     options=(MethodOption("seed", int, 0, "s"),)))  # fmt: skip


def test_every_option_reachable_from_the_cli():
    parser = _edit_parser()
    base = ["--source", "a", "--target", "b", "--out", "o"]
    args = parser.parse_args([*base, "--method", "p2p", "--mode", "reweight", "--weights", "car=2",
                              "--weights", "red=0.5,big=3", "--self-steps", "0.3",
                              "--cross-steps", "0.6", "--layers", "2-12"])  # fmt: skip
    cross, selfattn = make_controller(args.method, **method_arguments(args))
    assert isinstance(cross, PromptToPrompt) and cross.mode == "reweight"
    assert cross.weights == {"car": 2.0, "red": 0.5, "big": 3.0}
    assert cross.cross_steps == 0.6 and cross.layer_spec == "2-12"
    assert isinstance(selfattn, SelfAttentionReplace) and selfattn.step_spec == 0.3
    args = parser.parse_args([*base, "--method", "masactrl", "--start-step", "2",
                              "--start-layer", "13"])  # fmt: skip
    (mutual,) = make_controller(args.method, **method_arguments(args))
    assert isinstance(mutual, MutualSelfAttention)
    assert (mutual.start_step, mutual.start_layer) == (2, 13)
    every = {o.name for m in registry.edit_methods() for o in m.options}
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--" + n.replace("_", "-") for n in every} <= flags


def test_masactrl_masks_from_the_cli(tmp_path, capsys):
    from PIL import Image

    from editing.methods.masactrl import ImageMask, WordMask

    parser = _edit_parser()
    base = ["--source", "a red car", "--target", "a blue car", "--out", "o", "--method", "masactrl"]
    args = parser.parse_args([*base, "--mask-word", "car", "--mask-target-word", "car",
                              "--mask-threshold", "0.2", "--mask-layers", "res==max"])  # fmt: skip
    (mutual,) = make_controller(args.method, **method_arguments(args))
    assert isinstance(mutual, MutualSelfAttention) and isinstance(mutual.mask, WordMask)
    assert (mutual.mask.word, mutual.mask.threshold, mutual.mask.layer_spec) == (
        "car",
        0.2,
        "res==max",
    )
    png = tmp_path / "object.png"
    Image.new("L", (8, 8), 0).save(png)
    (mutual,) = make_controller("masactrl", **method_arguments(parser.parse_args(
        [*base, "--mask", str(png)])))  # fmt: skip
    assert isinstance(mutual.mask, ImageMask) and not bool(mutual.mask.source.any())
    assert mutual.mask.target is mutual.mask.source  # --mask-target defaults to --mask
    edit_cli = ["edit", "--model", "tiny", *base[:4], "--method", "masactrl"]
    missing = str(tmp_path / "missing.png")
    assert main([*edit_cli, "--mask", missing, "--out", str(tmp_path / "never")]) == 2
    assert f"mask={missing!r} is not a file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not both"):
        make_controller("masactrl", mask_word="car", mask=str(png))
    with pytest.raises(ValueError, match="mask_target_word='car' needs mask_word"):
        make_controller("masactrl", mask_target_word="car")
    with pytest.raises(ValueError, match="mask_word='red car': give one word"):
        make_controller("masactrl", mask_word="red car")


def test_unused_option_is_refused_in_python(tiny_pipe):
    with pytest.raises(ValueError, match=r"option 'layers' does not apply to masactrl "
                                         r"\(it takes: start_step, start_layer, mask_word, "
                                         r"mask_target_word, mask_threshold, mask_layers, mask, "
                                         r"mask_target\)"):  # fmt: skip
        make_controller("masactrl", layers="2-12")
    with pytest.raises(ValueError, match="option 'step_fraction' does not apply to masactrl"):
        edit(tiny_pipe, "a red car", ["a blue car"], method="masactrl", step_fraction=0.5)
    with pytest.raises(ValueError, match="option 'mode' does not apply to fpe.*taken by p2p"):
        make_controller("fpe", mode="refine")
    with pytest.raises(ValueError, match="does not apply to none \\(it takes none\\)"):
        make_controller("none", step_fraction=0.8)
    with pytest.raises(ValueError, match="controllers= replaces layers"):
        edit(tiny_pipe, "a red car", ["a blue car"], controllers=[], layers="2-12")
    with pytest.raises(ValueError, match="mode='swap': use one of replace, refine, reweight"):
        make_controller("p2p", mode="swap")
    with pytest.raises(ValueError, match="start_step=-1: use an integer >= 0"):
        make_controller("masactrl", start_step=-1)


def test_unused_option_is_refused_on_the_cli(tmp_path, capsys):
    base = ["edit", "--model", "tiny", "--source", "a", "--target", "b"]
    out = tmp_path / "never"
    cases = {
        ("--method", "masactrl", "--layers", "2-12"):
            "--layers does not apply to --method masactrl (it takes: --start-step, --start-layer, "
            "--mask-word, --mask-target-word, --mask-threshold, --mask-layers, --mask, "
            "--mask-target)",
        ("--method", "masactrl", "--step-fraction", "0.5"):
            "--step-fraction does not apply to --method masactrl",
        ("--start-step", "3"): "--start-step does not apply to --method fpe "
                               "(it takes: --layers, --step-fraction); --start-step is taken by "
                               "masactrl",
        ("--method", "none", "--weights", "car=2"): "--weights does not apply to --method none",
        ("--method", "p2p", "--weights", "car"): "weights: car='' is not word=number",
    }  # fmt: skip
    for flags, message in cases.items():
        assert main([*base, *flags, "--out", str(out)]) == 2, flags
        assert message in capsys.readouterr().err, flags
    assert not out.exists()  # refused before any model was loaded


def test_edit_calls_prepare_on_every_controller_and_records_the_method(tiny_pipe):
    class Prepared(Controller):
        seen: tuple = ()

        def prepare(self, tokenizer, source, targets):
            self.seen = (tokenizer is tiny_pipe.tokenizer, source, list(targets))

    assert Controller().prepare(tiny_pipe.tokenizer, "a", ["b"]) is None  # the no-op default
    c = Prepared()
    edit(tiny_pipe, "a red car", ["a blue car"], controllers=[c, Controller()], num_steps=2)
    assert c.seen == (True, "a red car", ["a blue car"])
    r = edit(tiny_pipe, "a red car", ["a blue car"], method="masactrl", num_steps=2)
    assert r.settings["method"] == "masactrl" and r.settings["step_fraction"] is None
    assert r.settings["layers"] is None
    assert r.settings["options"] == {
        "start_step": 4, "start_layer": None, "mask_word": None, "mask_target_word": None,
        "mask_threshold": 0.1, "mask_layers": "res==max/4", "mask": None, "mask_target": None,
    }  # fmt: skip
    # start_layer None is the family's (preset masactrl): 10 of SD's 16, as the authors'
    assert r.settings["controllers"] == [
        "MutualSelfAttention(start_step=4, start_layer=10, mask=None)"
    ]
    json.dumps(r.settings)


def test_sweep_kinds_come_from_the_registry():
    from editing.sweep.run import KIND_METHODS

    assert (
        KIND_METHODS == sweep_kinds() == {"self": "fpe", "cross": "cross", "inject": "stable-flow"}
    )
    for kind, name in KIND_METHODS.items():
        assert get_method(name).sweep_kind == kind and get_method(name).uses_layers
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    kinds = next(a for a in sub.choices["sweep"]._actions if "--kinds" in a.option_strings)
    assert tuple(kinds.choices) == tuple(sweep_kinds())


def test_parse_weights():
    assert parse_weights("car=2,red=0.5") == {"car": 2.0, "red": 0.5}
    assert parse_weights(["car=2", {"red": 1}]) == {"car": 2.0, "red": 1.0}
    with pytest.raises(ValueError, match="'car' given twice"):
        parse_weights(["car=2", "car=3"])
    with pytest.raises(ValueError, match="is not word=number"):
        parse_weights("car=big")


def test_docs_table_lists_every_method_and_option():
    text = DOCS.read_text()
    for m in registry.edit_methods():
        assert f"| `{m.name}` |" in text, m.name
        for opt in m.options:
            assert f"`{opt.flag}`" in text and f"`{opt.name}`" in text, opt.name
