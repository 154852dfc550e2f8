"""Words the toy never learned are refused where prompts enter (records, edits, sweeps,
reproduce, the pipeline's own call), before anything is generated or written; tiny and real
checkpoints take any word. Every refusal here happens before a denoising step, so the toy tests
cost a model load (~0.3 s) each module."""

from __future__ import annotations

import json
import shutil

import pytest

from editing import edit
from editing.experiment.reproduction import ReproduceConfig, reproduce
from editing.sweep.run import sweep
from probe.cli.main import main
from probe.models import load_pipeline
from probe.models.clip_tokenizer import WORD_LIST_KEY, load_clip_tokenizer, write_clip_tokenizer
from probe.models.tiny import tiny_words
from probe.models.vocabulary import (
    UnknownWordError,
    allow_unknown_words,
    check_known_words,
    known_words,
    prompt_words,
    unknown_words,
)
from probe.prompts.templates import load_edit_pairs, load_template, template_dir
from probe.recording.dataset import record_dataset
from probe.recording.recorder import record_attention

TOY_COLOURS = "colours: black, blue, brown, cyan, green, orange, pink, purple, red, yellow"


@pytest.fixture(scope="module")
def toy():
    return load_pipeline("toy")


@pytest.fixture(scope="module")
def white(tmp_path_factory):
    """Templates with the word 'white' (not among the toy's ten colours)."""
    folder = tmp_path_factory.mktemp("white")
    probe_set = folder / "white_car.yaml"
    probe_set.write_text(
        'name: white_car\nprompt: "a {colour} car"\nslots:\n  colour: [red, white]\n'
    )
    edits = folder / "white_edits.yaml"
    edits.write_text(
        'name: white_edits\nprompt: "a {colour} car"\nslots:\n  colour: [red, white]\n'
        "edit: colour\n"
    )
    return probe_set, edits


def assert_names_white(err: pytest.ExceptionInfo, prompt: str = "a white car") -> None:
    """The message names the word, the prompt, the words the toy knows, and the way out."""
    message = str(err.value)
    assert "'white'" in message and repr(prompt) in message
    assert TOY_COLOURS in message and "animals: cat, dog, giraffe" in message
    assert "real checkpoint" in message and "allow_unknown_words" in message
    assert err.value.words == {"white": prompt} and "red" in err.value.known


# ---- what a model knows ----------------------------------------------------------------------


def test_the_toy_declares_its_words_and_tiny_takes_any(toy, tiny_pipe):
    assert known_words(toy) == frozenset(tiny_words())  # the words it was trained with
    assert "white" not in known_words(toy) and len(known_words(toy)) == 39
    assert known_words(tiny_pipe) is None  # random weights: no word means anything
    assert unknown_words(toy, "A White car, with a RED dog.") == ["white"]
    assert prompt_words("A red car, in the park.") == ["a", "red", "car", "in", "the", "park"]
    check_known_words(toy, ["A Red car.", "a dog standing in the park", ""])  # case, punctuation
    check_known_words(tiny_pipe, "a teal zebra")


def test_a_closed_tokenizer_keeps_its_words_through_save_pretrained(tmp_path):
    tok = load_clip_tokenizer(
        write_clip_tokenizer(["a", "red", "car"], tmp_path / "t", closed=True)
    )
    assert known_words(tok) == {"a", "red", "car"}
    tok.save_pretrained(str(tmp_path / "saved"))  # what the toy's export does
    saved = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert saved[WORD_LIST_KEY] == ["a", "car", "red"]
    assert known_words(load_clip_tokenizer(tmp_path / "saved")) == {"a", "red", "car"}
    assert known_words(load_clip_tokenizer(write_clip_tokenizer(["a"], tmp_path / "open"))) is None


def test_an_exported_toy_declares_its_words_and_refuses_others(tmp_path):
    from probe.models.tiny import build_tiny_pipeline
    from probe.toy.training.train import TrainConfig, export

    parts = build_tiny_pipeline()  # its own copy: export writes the VAE's scaling into its config
    tok = load_clip_tokenizer(write_clip_tokenizer(tiny_words(), tmp_path / "tok", closed=True))
    cfg = TrainConfig.smoke(tmp_path)
    folder = export(cfg, tmp_path, parts.vae, parts.unet, parts.text_encoder, tok, 1.0)
    pipe = load_pipeline(folder)
    assert known_words(pipe) == frozenset(tiny_words())
    with pytest.raises(UnknownWordError, match="'white'"):
        pipe("a white car", num_inference_steps=1, output_type="latent")


def test_the_message_counts_prompts_and_names_each_word_once(tmp_path):
    tok = load_clip_tokenizer(write_clip_tokenizer(["a", "red", "car"], tmp_path, closed=True))
    prompts = ["a red car", "a white car", "a white van", "a red car"]
    with pytest.raises(UnknownWordError) as err:
        check_known_words(tok, prompts)
    message = str(err.value)
    assert message.startswith("2 of 4 prompts have words that are not in this model's vocabulary")
    assert "'white' (in 'a white car'), 'van' (in 'a white van')" in message
    assert "It knows 3 words" in message and "colours: red; other words: a, car. Use" in message
    assert "\n" not in message  # one line, as every CLI error
    assert err.value.words == {"white": "a white car", "van": "a white van"}
    assert isinstance(err.value, ValueError)  # the CLI prints it as an error


def test_allow_unknown_words_opens_the_vocabulary_inside_the_block_only(toy):
    with allow_unknown_words(toy):
        with allow_unknown_words(toy):
            check_known_words(toy, "a teal car")
        check_known_words(toy, "a teal car")  # the inner block restored the outer's state
    with pytest.raises(UnknownWordError, match="'teal'"):
        check_known_words(toy, "a teal car")


def test_a_real_tokenizer_takes_any_word(replica):
    pipe = load_pipeline(replica("sd15"))  # SD 1.5's tokenizer config, a small vocabulary
    assert known_words(pipe) is None
    check_known_words(pipe, "a white zebra on the moon")
    result = edit(pipe, "a red car", ["a white zebra"], method="fpe", num_steps=2, height=64,
                  width=64)  # fmt: skip
    assert len(result.targets) == 1


# ---- where prompts enter ---------------------------------------------------------------------


def test_the_pipeline_call_refuses_an_unknown_word(toy):
    with pytest.raises(UnknownWordError) as err:
        toy("a white car", num_inference_steps=1, output_type="latent")
    assert_names_white(err)
    with allow_unknown_words(toy):
        toy("a white car", num_inference_steps=1, output_type="latent")
    toy("a red car", num_inference_steps=1, output_type="latent")


def test_record_refuses_an_unknown_word_before_writing(toy, white, tmp_path):
    out = tmp_path / "data"
    with pytest.raises(UnknownWordError) as err:
        record_dataset(toy, load_template(white[0]), [0], out, progress=False)
    assert_names_white(err)
    assert not out.exists()
    with pytest.raises(UnknownWordError, match="'white'"):
        with record_attention(toy, prompts=["a white car"]):
            pass
    with pytest.raises(UnknownWordError, match="'white'"):
        with record_attention(toy, kinds=("cross",)) as maps:
            toy("a white car", num_inference_steps=2, output_type="latent")
    assert not maps.data  # refused before the first UNet call


def test_edit_refuses_an_unknown_word_in_the_source_or_any_target(toy):
    with pytest.raises(UnknownWordError) as err:
        edit(toy, "a red car", ["a blue car", "a white car"], num_steps=2)
    assert_names_white(err)
    with pytest.raises(UnknownWordError, match="prompt 'a white car': the word 'white'"):
        edit(toy, "a white car", ["a red car"], num_steps=2)


def test_sweep_refuses_an_unknown_word_before_writing(toy, white, tmp_path):
    out = tmp_path / "sweep"
    pairs = load_edit_pairs(white[1])
    with pytest.raises(UnknownWordError) as err:
        sweep(toy, pairs, ["none"], out=out, num_steps=2, progress=False)
    assert_names_white(err)  # the pair red → white's target, and white → red's source
    assert not out.exists()


def test_reproduce_refuses_templates_with_a_word_the_toy_lacks(tmp_path, monkeypatch):
    templates = tmp_path / "templates"
    shutil.copytree(template_dir(), templates)
    lists = templates / "lists.yaml"
    lists.write_text(lists.read_text().replace("colours: [red,", "colours: [white, red,"))
    monkeypatch.setenv("ATTNPROBE_TEMPLATES", str(templates))
    out = tmp_path / "run"
    with pytest.raises(UnknownWordError) as err:
        reproduce(out, ReproduceConfig.preset("toy", quick=True), progress=False)
    assert "'white'" in str(err.value) and err.value.words == {"white": "a white car"}
    assert not out.exists()


def test_the_command_line_prints_the_error_and_writes_nothing(white, tmp_path, capsys):
    out = tmp_path / "data"
    code = main(["record", "--model", "toy", "--template", str(white[0]), "--seeds", "0",
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "attnprobe record: error: prompt 'a white car': the word 'white' is not in" in err
    assert TOY_COLOURS in err
    code = main(["edit", "--model", "toy", "--source", "a red car", "--target", "a white car",
                 "--out", str(tmp_path / "edit")])  # fmt: skip
    assert code == 2 and not (tmp_path / "edit").exists()
    assert "the word 'white' is not in this model's vocabulary" in capsys.readouterr().err
