from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.models import TOY_DIR, build_tiny_pipeline, load_pipeline
from probe.models.clip_tokenizer import learn_merges, load_clip_tokenizer, write_clip_tokenizer
from tests.conftest import generate


def test_tiny_is_deterministic_and_sd_topology(tiny_pipe):
    other = build_tiny_pipeline()
    for a, b in zip(tiny_pipe.unet.parameters(), other.unet.parameters(), strict=True):
        assert torch.equal(a, b)
    assert len(tiny_pipe.unet.attn_processors) == 32
    assert tiny_pipe.safety_checker is None
    assert tiny_pipe.text_encoder.config.hidden_size == tiny_pipe.unet.config.cross_attention_dim
    assert tiny_pipe.tokenizer.model_max_length == 77


def test_tiny_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_every_template_word_is_one_token(tiny_pipe):
    from probe.prompts.templates import template_words

    words = template_words()
    assert words, "templates define no words"
    for word in words:
        assert len(tiny_pipe.tokenizer.tokenize(word)) == 1, word


def test_bpe_merges_rebuild_each_word(tmp_path):
    # 'rabbit' and 'giraffe' share the pair (r, a): greedy per-word merges would split one of them
    words = ["giraffe", "rabbit", "tiger", "leopard", "red", "green", "car", "cat"]
    assert learn_merges(words)
    tok = load_clip_tokenizer(write_clip_tokenizer(words, tmp_path))
    for word in words:
        assert tok.tokenize(word) == [word + "</w>"]
    assert tok.tokenize("A Red, zebra")[:2] == [
        "a</w>",
        "red</w>",
    ]  # lower-cases, still tokenizes unknowns


def test_saved_folder_loads_offline_and_bit_exact(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "sd")
    loaded = load_pipeline(tmp_path / "sd")
    assert np.array_equal(generate(loaded), generate(tiny_pipe))


def test_missing_or_wrong_model_folder(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match="is not 'toy', 'toy-v2', 'toy-flux', 'tiny', 'tiny-xl', 'tiny-pixart', 'tiny-sd3', 'tiny-flux' or a "
            "folder on disk.*"
        "never downloads",
    ):
        load_pipeline("runwayml/stable-diffusion-v1-5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path / "empty")


@pytest.mark.skipif((TOY_DIR / "model_index.json").is_file(), reason="toy weights are shipped")
def test_toy_without_weights_says_how_to_get_them():
    with pytest.raises(FileNotFoundError, match="attnprobe toy train"):
        load_pipeline("toy")


def test_dtype_and_device_are_applied():
    pipe = load_pipeline("tiny", device="cpu", dtype=torch.float64)
    assert next(pipe.unet.parameters()).dtype == torch.float64
