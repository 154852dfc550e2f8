"""The DiT replica folders (``tests/replicas/build.py``: ``sd3-medium``, ``flux-dev``), laid out as
downloaded with every config as shipped: they load offline with the scheduler they ship (SD3
Medium: flow-match Euler, shift 3.0; FLUX.1-dev: dynamic shifting by image size), and a real image
goes through every flow inversion and DiT method on the user's path (``load_pipeline(folder)``
and the Python API, and ``attnprobe edit --image``), at 64 px and 3 steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

from editing import edit, flow_invert
from editing.methods.flowedit import flowedit
from editing.rf_inversion import rf_invert
from editing.rf_solver import solver_invert
from probe.cli.main import main
from probe.families import family_of
from probe.models import layer_table
from probe.recording.recorder import record_attention
from tests.replicas.build import DIT_REPLICAS, HERE, real_config
from tests.test_flow_inversion import scene

SIZE, STEPS = 64, 3
SOURCE, TARGET = "a red car", "a blue car"
SHAPE = {  # (pipeline, blocks, text encoders)
    "sd3-medium": (StableDiffusion3Pipeline, 24, 3),
    "flux-dev": (FluxPipeline, 4, 2),
}
INVERSIONS = {
    "euler": lambda pipe, image: flow_invert(pipe, image, SOURCE, STEPS, height=SIZE, width=SIZE),
    "rf-inversion": lambda pipe, image: rf_invert(
        pipe, image, SOURCE, STEPS, stop=1.0, height=SIZE, width=SIZE
    ),
    "rf-solver": lambda pipe, image: solver_invert(
        pipe, image, SOURCE, STEPS, height=SIZE, width=SIZE
    ),
    "fireflow": lambda pipe, image: solver_invert(
        pipe, image, SOURCE, STEPS, solver="fireflow", height=SIZE, width=SIZE
    ),
}
METHODS_IDENTITY = {"none": {}, "fpe": {"layers": "all", "step_fraction": 1}}
METHODS_AFTER = {  # the methods run after each inversion besides fpe, with their options
    "euler": {"stable-flow": {"layers": "all"}, "masactrl": {"start_step": 0, "start_layer": 0}},
    "rf-solver": {"rf-solver": {}},
}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit_image") / "car.png"
    from PIL import Image

    Image.fromarray(scene(SIZE)).save(path)
    return path


class TransformerCalls:
    """The ``timestep`` of every transformer call while open (a forward pre-hook)."""

    def __init__(self, pipe) -> None:
        self.transformer, self.timesteps = pipe.transformer, []

    def __enter__(self) -> TransformerCalls:
        def seen(module, args, kwargs):
            self.timesteps.append(float(kwargs["timestep"].flatten()[0]))

        self.handle = self.transformer.register_forward_pre_hook(seen, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


# --- the folders as downloaded --------------------------------------------------------------


@pytest.mark.parametrize("name", DIT_REPLICAS)
def test_folder_holds_the_files_of_the_real_one(replica, name):
    folder, spec = replica(name), json.loads((HERE / name / "tiny.json").read_text())
    index = json.loads((folder / "model_index.json").read_text())
    components = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None}
    assert {p.name for p in folder.iterdir() if p.is_dir()} == components
    for component, shards in spec["shards"].items():
        stem = "diffusion_pytorch_model" if index[component][0] == "diffusers" else "model"
        files = {p.name for p in (folder / component).glob("*.safetensors*")}
        assert files == {f"{stem}-{i:05d}-of-{shards:05d}.safetensors" for i in
                         range(1, shards + 1)} | {f"{stem}.safetensors.index.json"}  # fmt: skip
    t5 = [k for k, v in index.items() if v == ["transformers", "T5TokenizerFast"]]
    assert t5 == (["tokenizer_3"] if name == "sd3-medium" else ["tokenizer_2"])
    assert {p.name for p in (folder / t5[0]).iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"
    }  # fmt: skip


@pytest.mark.parametrize("name", DIT_REPLICAS)
def test_replica_loads_offline_with_what_it_ships(replica, loaded, name):
    pipe = loaded(name)
    cls, blocks, encoders = SHAPE[name]
    assert type(pipe) is cls and family_of(pipe).name == name.split("-")[0]
    shipped = real_config(name, "scheduler/scheduler_config.json")
    assert type(pipe.scheduler).__name__ == shipped["_class_name"]
    for key, value in shipped.items():
        if not key.startswith("_"):
            assert pipe.scheduler.config[key] == value, key
    assert pipe.scheduler.config.use_dynamic_shifting is (name == "flux-dev")
    vae = real_config(name, "vae/config.json")
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == (
        vae["scaling_factor"], vae["shift_factor"]
    )  # fmt: skip
    assert pipe.vae.config.latent_channels == 16 == family_of(pipe).latent_channels(pipe)
    assert len(layer_table(replica(name))) == blocks
    text = [getattr(pipe, f"text_encoder{s}") for s in ("", "_2", "_3")[:encoders]]
    assert type(text[-1]).__name__ == "T5EncoderModel"  # SD3's third encoder is really there
    assert {m.dtype for m in (pipe.transformer, pipe.vae, *text)} == {torch.float32}
    if name == "flux-dev":
        assert pipe.transformer.config.guidance_embeds  # FLUX.1-dev: no unconditional rows
        assert not family_of(pipe).guides_with_rows(pipe)
        assert family_of(pipe).text_key_count(pipe) == 512


FULL_SIZE = {  # blocks, last block, width
    "sd3-medium": (24, "transformer_blocks.23", 1536),
    "flux-dev": (57, "single_transformer_blocks.37", 3072),
}


@pytest.mark.parametrize("name", DIT_REPLICAS)
def test_the_committed_config_folder_is_the_full_size_table(name):
    """The replica's configs in the repo are a weightless model folder of the real size: SD3
    Medium's 24 joint blocks, FLUX.1-dev's 19 + 38, 24 heads, 64x64 patches at 1024 px."""
    blocks, last, width = FULL_SIZE[name]
    table = layer_table(HERE / name)
    assert (len(table), table[-1].name) == (blocks, last)
    assert {(lay.heads, lay.channels, lay.resolution) for lay in table} == {(24, width, (64, 64))}


def test_sd3_replica_reads_t5_into_the_joint_text(loaded):
    """With T5 in the folder the 256 T5 positions after the 77 CLIP ones are T5's states, not
    the zeros of a folder without it."""
    pipe = loaded("sd3-medium")
    embeds = pipe.encode_prompt(SOURCE, None, None, do_classifier_free_guidance=False)[0]
    assert embeds.shape[1] == 77 + 256 and embeds[0, 77:].abs().sum() > 0


@pytest.mark.parametrize("name", DIT_REPLICAS)
def test_cli_layers_runs_on_replica(replica, capsys, name):
    assert main(["layers", "--model", str(replica(name))]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert len(rows) == SHAPE[name][1]
    assert "64x64" in rows[0]  # 1024 px: 128x128 latents in 2x2 patches


# --- the schedule the edits run on ----------------------------------------------------------


def reference_timesteps(name: str, n: int) -> list[float]:
    """The transformer's timesteps, from a new scheduler of the shipped config, set as
    diffusers' SD3 pipeline (``set_timesteps(n)``) and Flux pipeline (sigmas
    ``linspace(1, 1/n, n)``, ``mu`` from the image's token count) set them."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = real_config(name, "scheduler/scheduler_config.json")
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    if not config.get("use_dynamic_shifting"):
        scheduler.set_timesteps(n)
        return scheduler.timesteps.tolist()
    tokens = (SIZE // 16) ** 2  # 8x8 latents packed 2x2
    mu = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"],
                         config["base_shift"], config["max_shift"])  # fmt: skip
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return (scheduler.timesteps / 1000).tolist()  # Flux's transformer takes t / 1000


@pytest.mark.parametrize("name", DIT_REPLICAS)
def test_generation_and_edits_use_the_folders_shifted_schedule(loaded, image, name):
    pipe = loaded(name)
    expected = reference_timesteps(name, STEPS)
    unshifted = np.linspace(1.0, 1 / STEPS, STEPS)[1:]
    assert not np.allclose(np.array(expected[1:]) / (1000 if name == "sd3-medium" else 1),
                           unshifted)  # fmt: skip
    with TransformerCalls(pipe) as generated:
        pipe(SOURCE, num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="latent")
    with TransformerCalls(pipe) as inverted:
        inv = INVERSIONS["euler"](pipe, image)
    with TransformerCalls(pipe) as edited:
        result = edit(pipe, SOURCE, [TARGET], method="fpe", inversion=inv)
    for seen in (generated.timesteps, inverted.timesteps, edited.timesteps):
        assert sorted(set(seen), reverse=True) == pytest.approx(expected, rel=1e-6)
    said = result.settings["scheduler"]
    assert said["config"]["shift"] == 3.0
    assert said["config"]["use_dynamic_shifting"] is (name == "flux-dev")


def test_flux_settings_say_the_dynamic_shift_it_ran_with(loaded, image):
    """Bug: FLUX.1-dev's settings file said ``shift 3.0, use_dynamic_shifting true`` and not the
    shift that ran (``mu``, from the config's base/max shift and the image's token count)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    flux, sd3 = loaded("flux-dev"), loaded("sd3-medium")
    said = edit(flux, SOURCE, [TARGET], inversion=INVERSIONS["euler"](flux, image)).settings
    said = said["scheduler"]
    shipped = real_config("flux-dev", "scheduler/scheduler_config.json")
    keys = ("base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")
    assert {k: said["config"][k] for k in keys} == {k: shipped[k] for k in keys}
    assert said["mu"] == pytest.approx(calculate_shift((SIZE // 16) ** 2, 256, 4096, 0.5, 1.15))
    other = edit(sd3, SOURCE, [TARGET], inversion=INVERSIONS["euler"](sd3, image)).settings
    assert "mu" not in other["scheduler"] and "base_shift" not in other["scheduler"]["config"]


# --- a real image through every inversion and method ----------------------------------------


def assert_images(result, n: int = 1) -> None:
    assert len(result.targets) == n and result.source.size == (SIZE, SIZE)
    for picture in [result.source, *result.targets]:
        assert picture.size == (SIZE, SIZE) and np.asarray(picture).std() > 0


@pytest.mark.parametrize("name", DIT_REPLICAS)
@pytest.mark.parametrize("inversion", list(INVERSIONS))
def test_every_inversion_edits_and_reconstructs_a_real_image(loaded, image, name, inversion):
    pipe = loaded(name)
    inv = INVERSIONS[inversion](pipe, image)
    assert inv.kind == inversion and len(inv.trajectory) == STEPS + 1
    assert inv.trajectory[-1].shape == (1, 16, SIZE // 8, SIZE // 8)
    edited = edit(pipe, SOURCE, [TARGET], method="fpe", inversion=inv)
    assert_images(edited)
    assert edited.settings["inversion"] == inversion and edited.settings["height"] == SIZE
    for method, options in METHODS_AFTER.get(inversion, {}).items():
        assert_images(edit(pipe, SOURCE, [TARGET], method=method, inversion=inv, **options))
    for method, options in METHODS_IDENTITY.items():
        direct = edit(pipe, SOURCE, [SOURCE], method=method, inversion=inv,
                      source_branch="direct", source_branch_prompt="source", **options)  # fmt: skip
        for row in direct.latents:  # the identity edit returns the inverted image
            torch.testing.assert_close(row, inv.trajectory[-1][0], atol=1e-5, rtol=0)
    fpe = METHODS_IDENTITY["fpe"]  # a free source row: the edited target row is the source row
    free = edit(pipe, SOURCE, [SOURCE], method="fpe", inversion=inv, source_branch="free",
                source_branch_prompt="source", **fpe)  # fmt: skip
    torch.testing.assert_close(free.latents[1], free.latents[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", DIT_REPLICAS)
def test_flowedit_edits_a_real_image(loaded, image, name):
    pipe = loaded(name)
    result = flowedit(pipe, image, SOURCE, TARGET, num_steps=4, n_max=3, height=SIZE, width=SIZE)
    assert result.image.size == (SIZE, SIZE) and np.asarray(result.image).std() > 0
    same = flowedit(pipe, image, SOURCE, SOURCE, num_steps=4, n_max=3, height=SIZE, width=SIZE)
    assert np.abs(np.asarray(same.image, float) - np.asarray(result.image, float)).max() > 0


# --- recording ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIT_REPLICAS)
def test_two_step_recording_on_replica(loaded, name):
    pipe = loaded(name)
    with record_attention(pipe) as maps:
        pipe(SOURCE, num_inference_steps=2, height=SIZE, width=SIZE,
             generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
    assert maps.recorded_layers() == list(range(SHAPE[name][1]))
    assert {"self", "cross"} <= set(maps.kinds)
    assert maps.word_map("car").shape == (SIZE // 16, SIZE // 16)  # 2x2 patches of 8x8 latents
    assert len(maps.steps) == 2


# --- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("name", DIT_REPLICAS)
@pytest.mark.parametrize(
    "flags",
    [["--inversion", "fireflow"], ["--inversion", "rf-solver", "--method", "rf-solver"],
     ["--method", "flowedit"]],
    ids=["fireflow-fpe", "rf-solver", "flowedit"],
)  # fmt: skip
def test_cli_edits_a_real_image_at_its_own_size(replica, image, tmp_path, name, flags):
    """Bug: ``attnprobe edit --image`` read every image at the model's native size (1024 px on
    SD3 Medium and FLUX.1-dev) and refused a 64 px one; flow models now edit it at its own
    size, as FlowEdit's and RF-Solver's scripts do."""
    out = tmp_path / "out"
    assert main(["edit", "--model", str(replica(name)), "--image", str(image), "--source", SOURCE,
                 "--target", TARGET, "--num-steps", str(STEPS), *flags, "--out", str(out)]) == 0  # fmt: skip
    settings = json.loads((out / "settings.json").read_text())
    from PIL import Image

    for picture in ("source.png", "target_0.png"):
        assert Image.open(out / picture).size == (SIZE, SIZE)
    if "flowedit" in flags:
        assert settings["edits"][0]["height"] == SIZE
    else:
        assert (settings["height"], settings["inversion"]) == (SIZE, flags[1])


def test_cli_refuses_an_image_the_patches_do_not_divide(replica, tmp_path, capsys):
    from PIL import Image

    Image.fromarray(scene(SIZE)[:40]).save(tmp_path / "car.png")  # 64x40: 40 % 16 != 0
    assert main(["edit", "--model", str(replica("flux-dev")), "--image", str(tmp_path / "car.png"),
                 "--source", SOURCE, "--target", TARGET, "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "an image of 64x40 px: Flux needs sides divisible by 16" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "steps", "n_max"), [("flux-dev", 3, 3), ("flux-dev", 7, 6),
                                                       ("sd3-medium", 3, 2), ("sd3-medium", 50, 33)])  # fmt: skip
def test_flowedit_keeps_the_authors_share_of_other_step_counts(loaded, image, name, steps, n_max):
    """Bug: ``flowedit(..., num_steps=3)`` (and ``attnprobe edit --method flowedit --num-steps
    3``) kept the authors' ``n_max`` of 24 (Flux) or 33 (SD3) and refused it; at more steps it
    edited a smaller share than theirs. It now keeps their fraction (24 of 28, 33 of 50)."""
    from editing.methods.flowedit import FLOWEDIT_DEFAULTS, authors_n_max

    authors = FLOWEDIT_DEFAULTS[name.split("-")[0]]
    assert authors_n_max(authors, steps) == n_max and authors_n_max(authors, None) == authors.n_max
    if steps <= 7:
        run = flowedit(
            loaded(name), image, SOURCE, TARGET, num_steps=steps, height=SIZE, width=SIZE
        )
        assert run.settings["n_max"] == n_max
