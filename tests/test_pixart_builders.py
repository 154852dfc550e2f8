"""PixArt-Σ builders (``probe/models/tiny_pixart.py``): ``tiny-pixart`` runs and is deterministic,
the mask of T5's padding reaches every ``attn2`` as an additive bias, the replica folder is the
real one's configs with only size keys replaced and loads offline, and the full-size
PixArt-Σ XL transformer has 28 blocks of self- and cross-attention with 16 heads.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file

from probe.models import tiny_pixart
from probe.models.tiny_pixart import (
    PIXART_SIGMA_MODEL_INDEX,
    PIXART_SIGMA_SCHEDULER_CONFIG,
    PIXART_SIGMA_XL_CONFIG,
    REAL_CONFIGS,
    REPLICA_SIZES,
    build_tiny_pixart_pipeline,
    pixart_sigma_replica,
    replica_config,
    tiny_pixart_transformer,
)

SHIPPED_SCHEDULER = {k: v for k, v in PIXART_SIGMA_SCHEDULER_CONFIG.items() if k[0] != "_"}
REPLICA_FILES = [
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder/model-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.json", "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json", "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors", "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]  # fmt: skip


def generate(pipe: PixArtSigmaPipeline, prompt: str = "a red car", seed: int = 0) -> torch.Tensor:
    """Images ``[n, 3, 64, 64]`` in [0, 1]: 2 steps at 64 px from a fixed seed."""
    return pipe(
        prompt, num_inference_steps=2, height=64, width=64, use_resolution_binning=False,
        clean_caption=False, output_type="pt", generator=torch.Generator().manual_seed(seed),
    ).images  # fmt: skip


@pytest.fixture(scope="module")
def pipe() -> PixArtSigmaPipeline:
    return build_tiny_pixart_pipeline()


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return pixart_sigma_replica(tmp_path_factory.mktemp("replicas") / "pixart-sigma")


# --- tiny-pixart ----------------------------------------------------------------------------


def test_tiny_pixart_has_pixart_sigma_topology(pipe):
    transformer = pipe.transformer
    assert type(pipe) is PixArtSigmaPipeline and type(transformer) is PixArtTransformer2DModel
    blocks = transformer.transformer_blocks
    assert len(blocks) == 4 and {(b.attn1.heads, b.attn2.heads) for b in blocks} == {(2, 2)}
    assert not blocks[0].attn1.is_cross_attention and blocks[0].attn2.is_cross_attention
    assert blocks[0].attn2.to_k.in_features == transformer.config.cross_attention_dim == 16
    assert transformer.config.caption_channels == pipe.text_encoder.config.d_model
    assert transformer.config.out_channels == 2 * transformer.config.in_channels  # learned sigma
    assert not transformer.use_additional_conditions and transformer.config.norm_type == (
        "ada_norm_single"
    )
    processors = transformer.attn_processors
    assert len(processors) == 8 and {type(p) for p in processors.values()} == {AttnProcessor2_0}
    assert pipe.tokenizer.tokenize("a red car") == ["\u2581a", "\u2581red", "\u2581car"]
    assert pipe.vae.config.scaling_factor == 0.13025 and pipe.vae_scale_factor == 8


def test_tiny_pixart_ships_pixart_sigmas_scheduler(pipe):
    assert type(pipe.scheduler) is DPMSolverMultistepScheduler
    assert {k: pipe.scheduler.config[k] for k in SHIPPED_SCHEDULER} == SHIPPED_SCHEDULER
    pipe.scheduler.set_timesteps(20)
    assert pipe.scheduler.timesteps[:3].tolist() == [999, 949, 899]


def test_tiny_pixart_generates_deterministically(pipe):
    image = generate(pipe)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    assert image.min() >= 0 and image.max() <= 1
    again = build_tiny_pixart_pipeline(seed=0)
    assert torch.equal(generate(again), image)
    other = build_tiny_pixart_pipeline(seed=1).transformer.state_dict()
    weights = pipe.transformer.state_dict()
    assert not all(torch.equal(other[k], v) for k, v in weights.items())
    assert not torch.equal(generate(pipe, seed=1), image)


def test_transformer_predicts_noise_and_sigma():
    transformer = tiny_pixart_transformer(seed=0)
    out = transformer(
        torch.randn(2, 4, 8, 8), encoder_hidden_states=torch.randn(2, 300, 32),
        timestep=torch.tensor([999, 999]), added_cond_kwargs={"resolution": None,
        "aspect_ratio": None}, encoder_attention_mask=torch.ones(2, 300), return_dict=False,
    )[0]  # fmt: skip
    assert out.shape == (2, 8, 8, 8)  # [noise; variance], the pipeline keeps chunk(2, dim=1)[0]
    again = tiny_pixart_transformer(seed=0).state_dict()
    assert all(torch.equal(again[k], v) for k, v in transformer.state_dict().items())


def test_t5_padding_reaches_attn2_as_an_additive_bias(pipe):
    seen: dict[str, torch.Tensor | None] = {}

    class Spy(AttnProcessor2_0):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
            seen.setdefault(self.name, attention_mask)
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)

    original = pipe.transformer.attn_processors
    pipe.transformer.set_attn_processor({name: Spy(name) for name in original})
    try:
        generate(pipe)
    finally:
        pipe.transformer.set_attn_processor(original)
    assert seen["transformer_blocks.0.attn1.processor"] is None
    bias = seen["transformer_blocks.3.attn2.processor"]
    assert bias is not None and bias.shape == (2, 1, 300)  # [uncond; cond] rows, 300 T5 keys
    assert set(bias.unique().tolist()) == {0.0, -10000.0}
    assert (bias == 0).sum(-1).flatten().tolist() == [1, 4]  # "" -> </s>; a red car </s>


# --- the replica folder ---------------------------------------------------------------------


def test_replica_is_the_real_folder_with_only_size_keys_replaced(replica):
    files = sorted(p.relative_to(replica).as_posix() for p in replica.rglob("*") if p.is_file())
    assert files == sorted(REPLICA_FILES)
    tokenizer = json.loads((replica / "tokenizer" / "tokenizer.json").read_text())
    for rel, real in REAL_CONFIGS.items():
        written = json.loads((replica / rel).read_text())
        assert list(written) == list(real), rel  # same keys, same order
        changed = {k for k in real if written[k] != real[k]}
        extra = {"vocab_size"} if rel.startswith("text_encoder/") else set()
        assert changed <= set(REPLICA_SIZES.get(rel, {})) | extra, rel
    assert json.loads((replica / "model_index.json").read_text()) == PIXART_SIGMA_MODEL_INDEX
    text_encoder = json.loads((replica / "text_encoder" / "config.json").read_text())
    assert text_encoder["vocab_size"] == len(tokenizer["model"]["vocab"])
    sizes = {rel: (replica / rel).stat().st_size for rel in REPLICA_FILES[:2]}
    assert sizes == {"model_index.json": 400, "scheduler/scheduler_config.json": 655}  # as shipped


def test_replica_loads_offline_and_generates(replica):
    pipe = DiffusionPipeline.from_pretrained(replica, local_files_only=True)
    assert type(pipe) is PixArtSigmaPipeline
    assert type(pipe.transformer) is PixArtTransformer2DModel
    blocks = pipe.transformer.transformer_blocks
    assert len(blocks) == 28 and {(b.attn1.heads, b.attn2.heads) for b in blocks} == {(16, 16)}
    assert pipe.transformer.config.sample_size == 128  # 1024 px by default, binning on
    assert not pipe.transformer.use_additional_conditions
    assert type(pipe.scheduler) is DPMSolverMultistepScheduler
    assert {k: pipe.scheduler.config[k] for k in SHIPPED_SCHEDULER} == SHIPPED_SCHEDULER
    pipe.set_progress_bar_config(disable=True)
    image = generate(pipe)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_replica_weights_are_deterministic_for_a_seed(replica, tmp_path):
    weights = "transformer/diffusion_pytorch_model.safetensors"
    first = load_file(replica / weights)
    same = load_file(pixart_sigma_replica(tmp_path / "again") / weights)
    assert first.keys() == same.keys() and all(torch.equal(first[k], same[k]) for k in first)
    other = load_file(pixart_sigma_replica(tmp_path / "other", seed=1) / weights)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_replica_refuses_a_file_and_a_size_key_the_real_config_lacks(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        pixart_sigma_replica(tmp_path / "file")
    monkeypatch.setitem(tiny_pixart.REPLICA_SIZES, "vae/config.json", {"hidden_size": 8})
    with pytest.raises(KeyError, match="hidden_size"):
        replica_config("vae/config.json", REAL_CONFIGS["vae/config.json"], 0)


# --- the full-size transformer --------------------------------------------------------------


def test_pixart_sigma_xl_on_the_meta_device():
    with torch.device("meta"):
        xl = PixArtTransformer2DModel.from_config(PIXART_SIGMA_XL_CONFIG)
    blocks = xl.transformer_blocks
    assert len(blocks) == 28 and not xl.use_additional_conditions
    for block in blocks:
        assert not block.attn1.is_cross_attention and block.attn2.is_cross_attention
        assert (block.attn1.heads, block.attn2.heads) == (16, 16)
        assert block.attn2.to_q.out_features == 16 * 72 == block.attn2.to_k.in_features
    names = list(xl.attn_processors)
    assert len(names) == 56 and names[:2] == [
        "transformer_blocks.0.attn1.processor", "transformer_blocks.0.attn2.processor",
    ]  # fmt: skip
    assert xl.caption_projection.linear_1.in_features == 4096
    assert xl.pos_embed.pos_embed.shape == (1, 64 * 64, 1152)  # 1024 px: 128 latents, patch 2
    assert sum(p.numel() for p in xl.parameters()) == 610_856_096
