"""PixArt-Σ end to end (issue 26): record → probe → select → edit (FPE, Prompt-to-Prompt,
MasaCtrl) on ``tiny-pixart`` and on the PixArt-Σ XL 2 1024 MS replica folder (the real 28 blocks
× 16 heads with small widths, generated at 64 px), and the full-size XL layer table pinned from
its config on the meta device.

The random models' DDIM latents are large (|z| ≈ 700: the first trailing step divides by
√ᾱ₉₉₉ ≈ 0.0064), so latents are compared relative to their scale, where float32 rounding is
~1e-7.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)

from editing import edit
from editing.inversion import ddim_invert
from editing.methods.replace import MaterialisedSelfAttentionReplace, SelfAttentionReplace
from probe.attention.controller import Controller
from probe.attention.hooks import AttentionHooks
from probe.attention.layers import resolve_layers
from probe.attention.processor import HookedAttnProcessor
from probe.cli.main import main
from probe.families import family_of
from probe.models import generation_defaults, layer_table, load_pipeline, run_layer_table
from probe.models.tiny_pixart import (
    PIXART_SIGMA_XL_CONFIG,
    build_tiny_pixart_pipeline,
    pixart_sigma_replica,
)
from probe.probing.probes import ProbeResults
from probe.probing.selection import select_layers
from probe.recording.recorder import record_attention

STEPS = 3
SIZE = {"height": 64, "width": 64}
XL_BLOCKS = [f"transformer_blocks.{i}" for i in range(28)]


@pytest.fixture(scope="module")
def pixart():
    return load_pipeline("tiny-pixart")


@pytest.fixture(scope="module")
def replica_folder(tmp_path_factory):
    return pixart_sigma_replica(tmp_path_factory.mktemp("replicas") / "pixart-sigma")


@pytest.fixture(scope="module")
def replica(replica_folder):
    return load_pipeline(replica_folder)


@pytest.fixture(scope="module")
def colours3(tmp_path_factory):
    path = tmp_path_factory.mktemp("tpl") / "three_colours.yaml"
    path.write_text('name: three_colours\nprompt: "a {colour} car"\nslots:\n'
                    "  colour: [red, blue, green]\n")  # fmt: skip
    return path


def generate(pipe, guidance_scale: float = 4.5, seed: int = 0) -> torch.Tensor:
    """Images ``[1, 3, 64, 64]``: 2 steps of the pipeline's own loop, with the family's
    call keywords (no resolution binning)."""
    return pipe(
        "a red car", num_inference_steps=2, guidance_scale=guidance_scale, output_type="pt",
        generator=torch.Generator().manual_seed(seed), **SIZE, **family_of(pipe).call_kwargs,
    ).images  # fmt: skip


def scale(latents: torch.Tensor) -> float:
    return float(latents.abs().max())


# --- the layer table ------------------------------------------------------------------------


def test_pixart_sigma_xl_table_is_pinned_from_its_config():
    with torch.device("meta"):
        xl = PixArtTransformer2DModel.from_config(PIXART_SIGMA_XL_CONFIG)
    family = family_of(xl)
    assert family.name == "pixart"
    layers = family.layers(xl)
    assert [layer.name for layer in layers] == XL_BLOCKS
    assert [layer.index for layer in layers] == list(range(28))
    assert {(x.place, x.heads, x.channels, x.cross_dim, x.resolution, x.family)
            for x in layers} == {("block", 16, 1152, 1152, (64, 64), "pixart")}  # fmt: skip
    assert layers[0].native_latent == (128, 128)  # 1024 px
    assert family.layers(xl, 64, 64)[0].resolution == (32, 32)  # 512 px
    assert resolve_layers(layers, "fpe") == resolve_layers(layers, "all") == list(range(28))
    for preset in ("paper", "masactrl"):
        with pytest.raises(ValueError, match=rf"'{preset}'.*PixArt-Σ transformer of 28 blocks.*"
                                             r"'fpe'.*start_layer"):  # fmt: skip
            resolve_layers(layers, preset)


def test_layer_table_of_the_replica_folder_has_the_xl_topology(replica_folder):
    table = layer_table(replica_folder)
    assert [layer.name for layer in table] == XL_BLOCKS
    assert {(x.place, x.heads, x.resolution, x.native_latent, x.family) for x in table} == {
        ("block", 16, (64, 64), (128, 128), "pixart")
    }
    assert {(x.channels, x.cross_dim) for x in table} == {(16 * 4, 64)}  # the replica's widths
    assert layer_table(replica_folder, 512, 512)[0].resolution == (32, 32)
    assert resolve_layers(table, "fpe") == list(range(28))


# --- loading --------------------------------------------------------------------------------


def test_tiny_pixart_loads_as_pixart_with_the_built_in_defaults(pixart):
    assert type(pixart) is PixArtSigmaPipeline and family_of(pixart).name == "pixart"
    assert family_of("tiny-pixart").name == "pixart"
    assert generation_defaults(pixart) == {
        "num_inference_steps": 20, "guidance_scale": 7.5, "height": 64, "width": 64,
    }  # fmt: skip
    assert layer_table("tiny-pixart") == run_layer_table(pixart)
    assert len(run_layer_table(pixart)) == 4
    assert run_layer_table(pixart, 128, 128)[0].resolution == (8, 8)


def test_the_replica_folder_loads_as_pixart_sigma(replica, replica_folder):
    assert type(replica) is PixArtSigmaPipeline and family_of(replica).name == "pixart"
    assert family_of(replica_folder).name == "pixart"
    assert type(replica.scheduler) is DPMSolverMultistepScheduler  # as shipped, not swapped
    assert replica.tokenizer.model_max_length == 300  # word look-up sees the encoded context
    assert generation_defaults(replica) == {
        "num_inference_steps": 20, "guidance_scale": 4.5, "height": 1024, "width": 1024,
    }  # fmt: skip
    assert layer_table(replica_folder) == run_layer_table(replica)
    assert run_layer_table(replica, 64, 64)[27].resolution == (4, 4)


# --- hooks and recording --------------------------------------------------------------------


def test_hooks_install_attnprobes_processor_and_restore_the_same_objects(pixart):
    before = dict(pixart.transformer.attn_processors)
    assert len(before) == 8
    with AttentionHooks(pixart) as hooks:
        inside = pixart.transformer.attn_processors
        assert inside.keys() == before.keys()
        assert all(isinstance(p, HookedAttnProcessor) for p in inside.values())
        assert [layer.name for layer in hooks.layers] == [f"transformer_blocks.{i}" for i in
                                                          range(4)]  # fmt: skip
        assert "encode_prompt" in pixart.__dict__  # the guidance watch, while open
    after = pixart.transformer.attn_processors
    assert all(after[name] is proc for name, proc in before.items())
    assert "encode_prompt" not in pixart.__dict__
    with pytest.raises(RuntimeError, match="boom"), AttentionHooks(pixart):
        raise RuntimeError("boom")
    after = pixart.transformer.attn_processors
    assert all(after[name] is proc for name, proc in before.items())
    assert "encode_prompt" not in pixart.__dict__


def test_recording_leaves_the_image_unchanged_and_reads_the_conditional_row(pixart):
    plain = generate(pixart)
    with record_attention(pixart, kinds=("cross", "self"), self_reduce="full",
                          dtype=torch.float32) as maps:  # fmt: skip
        recorded = generate(pixart)
    assert torch.equal(plain, recorded)
    assert "encode_prompt" not in pixart.__dict__
    assert maps.recorded_layers() == [0, 1, 2, 3] and maps.steps == [0, 1]
    assert maps.tokens == [["\u2581a", "\u2581red", "\u2581car", "</s>"]]
    car = maps.word_map("car")
    assert car.shape == (4, 4) and bool(torch.isfinite(car).all())
    for layer in range(4):
        for step in range(2):
            self_map, cross = maps[layer, step, "self"], maps[layer, step, "cross"]
            assert self_map.shape == (1, 1, 16, 16) and cross.shape == (1, 1, 16, 300)
            assert (self_map.sum(-1) - 1).abs().max() <= 1e-5
            # T5's padding is masked: all mass on "a red car </s>"; the conditional row reads
            # the words (the unconditional "" row would put it all on its </s>, key 0)
            assert (cross[..., :4].sum(-1) - 1).abs().max() <= 1e-5
            assert cross[..., 1:4].sum(-1).min() > 1e-3


def test_the_guidance_of_each_call_is_read_from_the_pipeline(pixart):
    """PixArt's pipeline keeps its guidance flag a local of its call: the family's watch reads it
    from ``encode_prompt``. Guided, the unconditional "" row comes first; unguided there is one
    row; either way the recorded conditional row is the one that reads the words."""
    for guidance_scale, rows in ((4.5, 2), (1.0, 1)):
        with record_attention(pixart, kinds=("cross",), rows="all", dtype=torch.float32) as every:
            generate(pixart, guidance_scale=guidance_scale)
        with record_attention(pixart, kinds=("cross",), dtype=torch.float32) as cond:
            generate(pixart, guidance_scale=guidance_scale)
        assert every[0, 0, "cross"].shape[0] == rows and cond[0, 0, "cross"].shape[0] == 1
        assert torch.equal(every[0, 0, "cross"][-1:], cond[0, 0, "cross"])
        assert cond[0, 0, "cross"][..., 1:4].sum(-1).min() > 1e-3
        if rows == 2:  # "" attends to its </s> (key 0) only
            assert (every[0, 0, "cross"][0, ..., 0] - 1).abs().max() <= 1e-5


class LayoutSpy(Controller):
    """A one-off observer: the batch layout of every transformer call."""

    def __init__(self) -> None:
        self.guided: list[bool] = []

    def on_unet_call(self, hooks, first: bool) -> None:
        self.guided.append(hooks.batch_layout.has_guidance)


def test_the_guidance_is_read_anew_for_every_call_in_one_block(pixart):
    spy = LayoutSpy()
    with AttentionHooks(pixart, [spy]):
        for guidance_scale in (4.5, 1.0, 4.5):
            generate(pixart, guidance_scale=guidance_scale)
    assert spy.guided == [True, True, False, False, True, True]  # 2 steps per call


# --- record → probe → select ----------------------------------------------------------------


def _check_results(results: ProbeResults, n_layers: int, chance: float) -> None:
    """Every layer × step × kind probed, accuracies in [0, 1], shuffled labels near chance."""
    assert {r.layer for r in results.rows} == set(range(n_layers))
    assert {r.kind for r in results.rows} == {"cross", "self"}
    assert len(results.rows) == n_layers * 2 * len({r.step for r in results.rows})
    for r in results.rows:
        assert 0.0 <= r.acc_mean <= 1.0 and 0.0 <= r.shuffled_acc <= 1.0
        assert r.chance == pytest.approx(chance)
    shuffled = float(np.mean([r.shuffled_acc for r in results.rows]))
    labels = float(np.mean([r.acc_mean for r in results.rows]))
    assert abs(shuffled - chance) <= 0.15  # the control stays at chance on average
    assert shuffled <= labels + 0.05  # ... and not above the true labels


def test_record_probe_select_commands_on_tiny_pixart(colours3, tmp_path, capsys):
    data, control = tmp_path / "ds", tmp_path / "ds_random"
    record = ["record", "--model", "tiny-pixart", "--template", str(colours3), "--seeds", "0-3",
              "--num-steps", "2", "--self-reduce", "svd:8"]  # fmt: skip
    assert main([*record, "--out", str(data)]) == 0
    assert "12 samples recorded" in capsys.readouterr().out
    meta = json.loads((data / "meta.json").read_text())
    assert meta["height"] == 64 and meta["layers"] == [0, 1, 2, 3] and meta["steps"] == [0, 1]
    assert main([*record, "--out", str(control), "--random-init", "1"]) == 0
    probe_dir = tmp_path / "probe"
    assert main(["probe", "--data", str(data), "--control-data", str(control), "--folds", "2",
                 "--out", str(probe_dir)]) == 0  # fmt: skip
    assert "16 cells probed on 12 samples (colour)" in capsys.readouterr().out
    results = ProbeResults.from_csv(probe_dir / "results.csv")
    _check_results(results, 4, 1 / 3)
    assert all(0.0 <= r.random_model_acc <= 1.0 for r in results.rows)  # the control was read
    table = layer_table("tiny-pixart")
    assert results.layer_table == table
    out = tmp_path / "layers.json"
    assert main(["select", "--probe", str(probe_dir), "--out", str(out), "--threshold", "1.0",
                 "--within", "fpe"]) == 0  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["layers"] == [0, 1, 2, 3] == resolve_layers(table, str(out))
    assert saved["model"] == "tiny-pixart"
    assert select_layers(results, threshold=1.0, within="1-3").layers == [1, 2, 3]
    for preset in ("paper", "masactrl"):
        with pytest.raises(ValueError, match="no meaning on this PixArt-Σ transformer"):
            select_layers(results, within=preset)


def test_record_probe_select_on_the_replica(replica, replica_folder, colours3, tmp_path):
    """The replica's 28 blocks recorded at 64 px: every block's query map is 4×4."""
    from probe.probing.features import build_features
    from probe.probing.probes import ProbeConfig, run_probes
    from probe.prompts.templates import load_template
    from probe.recording.dataset import record_dataset
    from probe.recording.store import AttentionDataset

    record_dataset(replica, load_template(colours3), range(3), tmp_path / "ds",
                   model=str(replica_folder), num_steps=2, steps="0", self_reduce="svd:8",
                   batch_size=9, progress=False, **SIZE)  # fmt: skip
    data = AttentionDataset(tmp_path / "ds")
    assert len(data) == 9 and data.meta["latent_hw"] == [8, 8] and data.meta["steps"] == [0]
    assert type(replica.scheduler) is DPMSolverMultistepScheduler
    features = build_features(data, "colour", steps=[0], progress=False)
    results = run_probes(features, ProbeConfig(folds=2, max_iter=50), progress=False)
    _check_results(results, 28, 1 / 3)
    assert [x.name for x in results.layer_table] == XL_BLOCKS
    assert {x.resolution for x in results.layer_table} == {(4, 4)}
    one_step = {"threshold": 1.0, "step_fraction": 1.0}  # step 0 was probed
    assert select_layers(results, within="fpe", **one_step).layers == list(range(28))
    assert select_layers(results, within="20-27", **one_step).layers == list(range(20, 28))


# --- editing --------------------------------------------------------------------------------


def test_the_edit_loop_is_the_pipelines_on_ddim(pixart):
    """No control: the source row is what diffusers' own PixArt-Σ loop makes on DDIM (trailing
    timesteps, from the folder's betas) from the same noise: the T5 mask, the guidance rows and
    the noise half of the learned-sigma output all line up."""
    ddim = DDIMScheduler.from_config(pixart.scheduler.config, timestep_spacing="trailing",
                                     clip_sample=False)  # fmt: skip
    run = PixArtSigmaPipeline(**{**pixart.components, "scheduler": ddim})
    run.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = run("a red car", num_inference_steps=STEPS, guidance_scale=4.5, latents=noise,
              output_type="latent", **SIZE, **family_of(pixart).call_kwargs).images  # fmt: skip
    ours = edit(pixart, "a red car", ["a blue car"], method="none", num_steps=STEPS, seed=1,
                guidance_scale=4.5)  # fmt: skip
    # measured: 2e-4 at |z| ≈ 600 (3e-7 relative)
    assert (ours.latents[0] - ref[0]).abs().max() <= 1e-5 * scale(ref)


def test_identity_fpe_returns_the_source(pixart):
    r = edit(pixart, "a red car", ["a red car"], method="fpe", num_steps=STEPS)
    assert torch.equal(r.latents[0], r.latents[1])
    assert r.settings["controllers"][0].startswith("SelfAttentionReplace(layers=[0, 1, 2, 3]")
    assert np.array_equal(np.asarray(r.source), np.asarray(r.targets[0]))


def test_fpe_fused_equals_materialised(pixart):
    kwargs = {"num_steps": STEPS, "seed": 1}

    def run(controllers):
        return edit(pixart, "a red car", ["a blue car"], controllers=controllers, **kwargs)

    fused = run([SelfAttentionReplace("fpe", 0.8)])
    materialised = run([MaterialisedSelfAttentionReplace("fpe", 0.8)])
    plain = edit(pixart, "a red car", ["a blue car"], method="none", **kwargs)
    # measured: 4e-4 at |z| ≈ 700, i.e. 6e-7 relative (float32 rounding of the two kernels)
    assert (fused.latents - materialised.latents).abs().max() <= 1e-5 * scale(plain.latents)
    assert torch.equal(fused.latents[0], plain.latents[0])  # the source row is never touched
    assert (fused.latents[1] - plain.latents[1]).abs().max() > 1e-4 * scale(plain.latents)


def test_p2p_and_masactrl_edit_the_target(pixart):
    kwargs = {"num_steps": STEPS, "seed": 1}
    plain = edit(pixart, "a red car", ["a blue car"], method="none", **kwargs)
    z = scale(plain.latents)
    p2p = edit(pixart, "a red car", ["a blue car"], method="p2p", **kwargs)
    assert p2p.settings["controllers"][0].startswith("PromptToPrompt(mode='replace'")
    assert (p2p.latents[1] - plain.latents[1]).abs().max() > 1e-3 * z
    assert (p2p.latents[0] - plain.latents[0]).abs().max() <= 1e-5 * z  # rounding only
    # start_step=1: the authors' 4 is past the 3 steps here, where MasaCtrl would do nothing
    masa = edit(pixart, "a red car", ["a blue car"], method="masactrl", start_layer=2,
                start_step=1, **kwargs)  # fmt: skip
    assert "start_layer=2" in masa.settings["controllers"][0]
    assert torch.equal(masa.latents[0], plain.latents[0])
    # steps 1-2 only: far smaller than the first step's (÷√ᾱ₉₉₉) changes, above rounding
    assert (masa.latents[1] - plain.latents[1]).abs().max() > 1e-5 * z
    earlier = edit(pixart, "a red car", ["a blue car"], method="masactrl", start_layer=0,
                   start_step=1, **kwargs)  # fmt: skip
    assert not torch.equal(earlier.latents[1], masa.latents[1])  # start_layer is honoured
    with pytest.raises(ValueError, match="start_layer"):
        edit(pixart, "a red car", ["a blue car"], method="masactrl", num_steps=2)


def test_real_image_edit_runs_on_trailing_ddim(pixart):
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    inv = ddim_invert(pixart, image, num_steps=STEPS)
    assert len(inv.trajectory) == STEPS + 1
    r = edit(pixart, "a red car", ["a blue car"], method="fpe", inversion=inv)
    scheduler = r.settings["scheduler"]
    assert scheduler["class"] == "DDIMScheduler"
    assert scheduler["config"]["timestep_spacing"] == "trailing"
    assert scheduler["built_from"] == "DPMSolverMultistepScheduler"
    assert r.settings["real_image"] and r.settings["num_steps"] == STEPS
    assert r.settings["source_branch"] == "forced"
    assert torch.equal(r.latents[0], inv.trajectory[-1][0])
    assert type(pixart.scheduler) is DPMSolverMultistepScheduler  # left as it was


def test_ddim_inversion_is_aligned_with_the_edits_sampling():
    """With a transformer that predicts zero noise, DDIM inversion and DDIM sampling are exact
    inverses: a target row denoised freely from the inverted noise ends on z_0 only if the
    inversion's timesteps are the edit's, reversed."""
    pipe = build_tiny_pixart_pipeline()
    torch.nn.init.zeros_(pipe.transformer.proj_out.weight)
    torch.nn.init.zeros_(pipe.transformer.proj_out.bias)
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    inv = ddim_invert(pipe, image, num_steps=STEPS)
    z0 = inv.trajectory[-1][0]
    r = edit(pipe, "a red car", ["a blue car"], method="none", inversion=inv)
    assert (r.latents[1] - z0).abs().max() <= 1e-4 * scale(z0)


def test_fpe_p2p_and_masactrl_on_the_replica(replica):
    kwargs = {"num_steps": 2, "seed": 1, **SIZE}
    same = edit(replica, "a red car", ["a red car"], method="fpe", **kwargs)
    assert torch.equal(same.latents[0], same.latents[1])
    assert same.settings["guidance_scale"] == 4.5  # the folder's default
    assert same.settings["scheduler"]["built_from"] == "DPMSolverMultistepScheduler"
    plain = edit(replica, "a red car", ["a blue car"], method="none", **kwargs)
    z = scale(plain.latents)
    fpe = edit(replica, "a red car", ["a blue car"], method="fpe", **kwargs)
    assert "layers=[0, 1, 2, 3, 4," in fpe.settings["controllers"][0]
    p2p = edit(replica, "a red car", ["a blue car"], method="p2p", **kwargs)
    masa = edit(replica, "a red car", ["a blue car"], method="masactrl", start_layer=14,
                start_step=1, **kwargs)  # fmt: skip
    for result in (fpe, p2p, masa):
        assert (result.latents[0] - plain.latents[0]).abs().max() <= 1e-5 * z
        assert (result.latents[1] - plain.latents[1]).abs().max() > 1e-5 * z
    assert type(replica.scheduler) is DPMSolverMultistepScheduler


# --- the command line -----------------------------------------------------------------------


def test_edit_command_on_tiny_pixart(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["edit", "--model", "tiny-pixart", "--source", "a red car", "--target",
                 "a blue car", "--method", "fpe", "--num-steps", "2", "--out", str(out)]) == 0  # fmt: skip
    assert str(out) in capsys.readouterr().out
    for name in ("source.png", "target_0.png", "grid.png", "settings.json"):
        assert (out / name).is_file(), name
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == "tiny-pixart" and settings["method"] == "fpe"
    assert settings["targets"] == ["a blue car"] and settings["num_steps"] == 2
    assert settings["scheduler"]["class"] == "DDIMScheduler"


def test_layers_command_on_the_replica(replica_folder, capsys):
    assert main(["layers", "--model", "tiny-pixart"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()[2:]) == 4
    assert main(["layers", "--model", str(replica_folder), "--spec", "fpe"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == 28 and "transformer_blocks.27" in rows[-1]
    assert main(["layers", "--model", str(replica_folder), "--spec", "masactrl"]) == 2
    assert "start_layer" in capsys.readouterr().err
