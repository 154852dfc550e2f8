"""PixArt-Σ: a diffusion transformer with separate self- and cross-attention, T5 text, DDIM edits.

    pipe = load_pipeline("tiny-pixart")           # or a PixArtSigmaPipeline folder
    family_of(pipe).name                          # 'pixart'
    edit(pipe, "a red car", ["a blue car"], method="p2p")   # its own cross-attention

``PixArtTransformer2DModel`` is a stack of ``BasicTransformerBlock``\\ s (AdaLN-single): each
block ``transformer_blocks.i`` is one layer, with ``attn1`` (self-attention over the image
tokens) and ``attn2`` (cross-attention: image queries, T5 keys) run by diffusers'
``AttnProcessor2_0``, the processor SD's UNets run, so attnprobe hooks them with the same
processor and every UNet method (FPE, Prompt-to-Prompt, MasaCtrl) carries over. All blocks see
one query map: the latent divided by the patch (2): 64×64 at 1024 px on PixArt-Σ XL (28 blocks,
16 heads × 72). The text is T5's 300 tokens (no start token: "a red car" is ``▁a ▁red ▁car
</s>``, then padding), projected to the block width before the blocks; the T5 attention mask
reaches ``attn2`` as an additive bias, which the hooked processor applies as diffusers does.
attnprobe sets the tokenizer's ``model_max_length`` to the 300 tokens the pipeline encodes
(it passes the length explicitly, so its output does not change), so that every word look-up
(Prompt-to-Prompt's token maps included) sees the context the attention sees.
The transformer predicts the noise and its variance (8 channels for 4): the edit keeps the
noise half, as the pipeline does.

Generation: the pipeline's defaults (20 steps, guidance 4.5, 1024 px); it ships
``DPMSolverMultistepScheduler`` (linear betas 1e-4 to 0.02, ε-prediction): recordings run it, edits
and inversions run DDIM at eta 0 built from that config, as on SD, with ``trailing`` timesteps (the
folder's ``linspace`` ones are not invertible by diffusers' DDIM inversion). attnprobe calls the
pipeline with ``use_resolution_binning=False`` (the size asked is the size generated, so layer
tables match; binning snaps sizes to trained aspect ratios, and knows only 256-2048 px models) and
``clean_caption=False`` (the same tokens whatever packages are installed; prompts are lower-cased
either way). Presets: ``fpe`` and ``all`` are every block; ``paper`` and ``masactrl`` have no
published meaning here and are refused (give MasaCtrl a ``start_layer``).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import PixArtSigmaPipeline, PixArtTransformer2DModel
from torch import Tensor

from probe.attention.layer_info import Kind, LayerInfo
from probe.attention.processor import HookedAttnProcessor
from probe.families.base import DenoiserCall, GuidanceWatch, ModelFamily, meta_model
from probe.families.conditioning import Conditioning, MicroConditioning
from probe.families.joint_dit import patch_level
from probe.families.sampler import DDIMSampler
from probe.models.placement import execution_device, pretrained_options
from probe.models.tiny_pixart import build_tiny_pixart_pipeline, tiny_pixart_transformer

PIXART_T5_TOKENS = 300
"""T5 tokens PixArt-Σ's pipeline encodes (``max_sequence_length``; PixArt-α: 120)."""


class PixArtFamily(ModelFamily):
    """PixArt-Σ (see the module)."""

    name = "pixart"
    title = "PixArt-Σ"
    pipeline_class = "PixArtSigmaPipeline"
    denoiser_attr: ClassVar[str] = "transformer"
    added_conditioning: ClassVar[tuple[str, ...]] = ("encoder_attention_mask",)
    text_keys: ClassVar[int] = PIXART_T5_TOKENS
    generation_defaults: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 20,
        "guidance_scale": 4.5,
    }
    call_kwargs: ClassVar[dict[str, Any]] = {
        "use_resolution_binning": False,
        "clean_caption": False,
    }
    presets: ClassVar[dict[str, str | None]] = {"all": "all", "paper": None, "masactrl": None}
    # the folder's "linspace" timesteps cannot be followed by DDIM inversion; "trailing" ones
    # are nearly the pipeline's own (999, 949, ..., 49 against DPM-Solver's 999, 949, ..., 50)
    ddim_overrides: ClassVar[dict[str, Any]] = {"timestep_spacing": "trailing"}
    built_in: ClassVar[dict[str, Any]] = {"tiny-pixart": build_tiny_pixart_pipeline}
    built_in_denoisers: ClassVar[dict[str, Any]] = {"tiny-pixart": tiny_pixart_transformer}

    def recognises(self, config: Any) -> bool:
        return config.get("caption_channels") is not None and config.get("norm_type") == (
            "ada_norm_single"
        )

    def load(self, folder: Path, dtype: torch.dtype | None = None) -> Any:
        pipe = PixArtSigmaPipeline.from_pretrained(
            str(folder), local_files_only=True, **pretrained_options(folder, dtype)
        )
        pipe.set_progress_bar_config(disable=True)
        if pipe.tokenizer is not None:  # the context the pipeline encodes, for word look-up
            pipe.tokenizer.model_max_length = PIXART_T5_TOKENS
        return pipe

    def empty_denoiser(self, folder: Path) -> Any:
        return meta_model(PixArtTransformer2DModel, folder / "transformer")

    def layers(
        self, denoiser: Any, latent_height: int | None = None, latent_width: int | None = None
    ) -> list[LayerInfo]:
        """One layer per block, place ``"block"``, every one at the latent / patch."""
        native = self.native_latent(denoiser)
        height = latent_height or native[0]
        width = latent_width or height
        patch = int(denoiser.config.patch_size)
        return [
            LayerInfo(
                index=i, name=f"transformer_blocks.{i}", place="block", level=patch_level(patch),
                heads=block.attn1.heads, channels=block.attn1.to_q.in_features,
                cross_dim=block.attn2.to_k.in_features,
                resolution=(height // patch, width // patch), native_latent=native,
                family=self.name,
            )
            for i, block in enumerate(denoiser.transformer_blocks)
        ]  # fmt: skip

    def attention_modules(self, denoiser: Any) -> dict[str, tuple[int, tuple[Kind, ...]]]:
        out: dict[str, tuple[int, tuple[Kind, ...]]] = {}
        for i in range(len(denoiser.transformer_blocks)):
            out[f"transformer_blocks.{i}.attn1.processor"] = (i, ("self",))
            out[f"transformer_blocks.{i}.attn2.processor"] = (i, ("cross",))
        return out

    def hooked_processors(self, hooks: Any, denoiser: Any, saved: dict[str, Any]) -> dict:
        return {
            name: HookedAttnProcessor(hooks, hooks.layers[index], kinds[0], saved[name])
            for name, (index, kinds) in self.attention_modules(denoiser).items()
        }

    def watch_guidance(self, pipe: Any) -> GuidanceWatch:
        """PixArt's pipeline keeps ``do_classifier_free_guidance`` a local of its call: the
        watch reads it from the call's ``encode_prompt`` (wrapped on the instance while the
        hooks are open, as the scheduler's ``step`` is)."""
        return _EncodeWatch(pipe)

    def call_inputs(self, args: tuple, kwargs: dict) -> DenoiserCall:
        sample = args[0] if args else kwargs["hidden_states"]
        context = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        t = args[2] if len(args) > 2 else kwargs["timestep"]
        return DenoiserCall(int(sample.shape[0]), t, context, tuple(sample.shape[-2:]))

    def encode(
        self, pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
        micro: MicroConditioning,
    ) -> Conditioning:  # fmt: skip
        cond, mask, uncond, uncond_mask = pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=guidance, negative_prompt="",
            device=execution_device(pipe), clean_caption=False,
            max_sequence_length=PIXART_T5_TOKENS,
        )  # fmt: skip
        if guidance:
            cond, mask = torch.cat([uncond, cond]), torch.cat([uncond_mask, mask])
        return Conditioning(cond, {"encoder_attention_mask": mask})

    def prompt_limit(self, pipe: Any) -> int:
        return PIXART_T5_TOKENS

    def predict(
        self, pipe: Any, model_in: Tensor, t: Tensor, cond: Conditioning, **extra: Any
    ) -> Tensor:
        """The predicted noise (the variance half of a learned-sigma output dropped)."""
        out = pipe.transformer(
            model_in, encoder_hidden_states=cond.embeddings, timestep=t.expand(model_in.shape[0]),
            encoder_attention_mask=cond.added.get("encoder_attention_mask"),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False,
        )[0]  # fmt: skip
        if out.shape[1] == 2 * model_in.shape[1]:
            out = out.chunk(2, dim=1)[0]
        return out

    def sampler(self, pipe: Any, num_steps: int, latent_hw: tuple[int, int]) -> DDIMSampler:
        return DDIMSampler(self, pipe, num_steps, latent_hw)

    def no_preset(self, preset: str, n_layers: int) -> str:
        return (
            f"layer preset {preset!r} was published for SD's UNets and has no meaning on this "
            f"PixArt-Σ transformer of {n_layers} blocks: use 'all', 'fpe' (every block), a "
            f"range such as '0-{n_layers - 1}' (MasaCtrl: start_layer=N), or a selection from "
            "`attnprobe select`"
        )


class _EncodeWatch(GuidanceWatch):
    """Reads ``do_classifier_free_guidance`` from each ``pipe.encode_prompt`` call."""

    def __init__(self, pipe: Any) -> None:
        super().__init__(pipe)
        self.guided = False
        original = pipe.encode_prompt
        signature = inspect.signature(original)

        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            self.guided = bool(bound.arguments["do_classifier_free_guidance"])
            return original(*args, **kwargs)

        pipe.encode_prompt = encode_prompt

    def guidance(self) -> bool:
        return self.guided

    def detach(self) -> None:
        self.pipe.__dict__.pop("encode_prompt", None)  # the class's method again


PIXART = PixArtFamily()
