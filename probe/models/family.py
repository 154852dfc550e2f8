"""Model families: what differs between SD 1.x/2.x and SDXL, in one place.

    family = family_of(pipe)                      # FAMILIES["sd"] or FAMILIES["sdxl"]
    cond = encode_conditioning(pipe, ["a red car"], guidance=True, size=(1024, 1024))
    pipe.unet(latents, t, **cond.unet_kwargs())   # SDXL: added_cond_kwargs included

Everything above the family (hooks, recorder, probes, editors, the edit loop) reads the family
through this module and never branches on the pipeline class itself. What a family says:

============================  =================================  ==================================
                              ``sd`` (SD 1.x/2.x)                ``sdxl`` (SDXL base)
============================  =================================  ==================================
pipeline                      ``StableDiffusionPipeline``        ``StableDiffusionXLPipeline``
layers                        16 transformer blocks              70 (blocks of 1, 2 or 10)
text side                     one CLIP encoder, last layer       two CLIP encoders, penultimate
                                                                 layers concatenated (768+1280);
                                                                 one vocabulary, so one word look-up
                                                                 (``pipe.tokenizer``) for both
added conditioning per row    none                               ``text_embeds`` (pooled, second
                                                                 encoder) and ``time_ids``
                                                                 (micro-conditioning, 6 numbers)
unconditional rows            the empty prompt's embeddings      zeros when the folder says
                                                                 ``force_zeros_for_empty_prompt``
layer presets                 ``paper`` 4-14, ``masactrl`` 10-15 ``masactrl`` 44-69; ``paper``
                                                                 refused (:mod:`probe.attention.
                                                                 presets`)
============================  =================================  ==================================

``sd3`` (``StableDiffusion3Pipeline``): the denoiser is ``pipe.transformer``
(``SD3Transformer2DModel``), a layer is one joint block (:mod:`probe.attention.dit_layers`), its
one softmax over [image; text] tokens splits into four kinds (:mod:`probe.attention.joint`); the
text side is CLIP-L and CLIP-G penultimate states concatenated (768+1280, zero-padded to T5's
4096) over 77 tokens, followed by T5's ``max_sequence_length`` (256) tokens, zeros when the
folder has no T5; words are looked up with the CLIP tokenizer (``pipe.tokenizer``), so they name
columns 0-76 of the text part; every row also needs ``pooled_projections`` (the two CLIP pooled
embeddings, 768+1280); unconditional rows are the empty prompt's; a step is one iteration of the
flow-match Euler loop. Presets: ``fpe`` = every block, ``paper`` and ``masactrl`` refused.

``flux`` (``FluxPipeline``): ``pipe.transformer`` (``FluxTransformer2DModel``), 19 double- and
38 single-stream blocks on FLUX.1 (:mod:`probe.attention.flux_joint`); the joint text is T5's 512
tokens, so words are looked up with T5's tokenizer (``pipe.tokenizer_2``); every row needs
``pooled_projections`` (CLIP's pooled output); guidance-distilled: no unconditional rows, the
guidance scale is a transformer input.

The family of a UNet or transformer is read from its config
(:func:`probe.attention.presets.unet_family`), so a pipeline, a bare denoiser and a layer table
built on the meta device agree. Other transformer families (PixArt, Sana, Flux's Kontext / Fill /
Control pipelines, ...) are refused by :func:`family_of_folder`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from probe.attention.dit_layers import denoiser_of
from probe.attention.presets import FLUX, SD, SD3, SDXL, unet_family


@dataclass(frozen=True)
class MicroConditioning:
    """SDXL's size and crop conditioning (its ``time_ids``), as diffusers' pipeline takes it.

    Attributes:
        original_size: (height, width) the model is told the training image had (default: the
            size generated).
        crops_coords_top_left: (top, left) of the crop it is told was taken (default (0, 0)).
        target_size: (height, width) of the image wanted (default: the size generated).
    """

    original_size: tuple[int, int] | None = None
    crops_coords_top_left: tuple[int, int] = (0, 0)
    target_size: tuple[int, int] | None = None

    def time_ids(self, height: int, width: int) -> list[int]:
        """The six time ids ``original + crop + target`` for an image of ``height × width``."""
        original = self.original_size or (height, width)
        target = self.target_size or (height, width)
        return [*original, *self.crops_coords_top_left, *target]


@dataclass
class Conditioning:
    """What every row of a UNet batch is conditioned on.

    Attributes:
        embeddings: text embeddings ``[rows, tokens, dim]`` (the UNet's
            ``encoder_hidden_states``), unconditional rows first under guidance.
        added: per-row extra inputs (the UNet's ``added_cond_kwargs``): SDXL's ``text_embeds``
            ``[rows, pooled_dim]`` and ``time_ids`` ``[rows, 6]``; empty for SD 1.x/2.x.
    """

    embeddings: Tensor
    added: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def rows(self, index: Sequence[int] | slice) -> Conditioning:
        """The conditioning of some rows (every tensor indexed alike)."""
        pick = list(index) if not isinstance(index, slice) else index
        return Conditioning(self.embeddings[pick], {k: v[pick] for k, v in self.added.items()})

    def with_embeddings(self, embeddings: Tensor) -> Conditioning:
        """The same added conditioning with other text embeddings (null-text inversion)."""
        return Conditioning(embeddings, dict(self.added))

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``unet(sample, t, **kwargs)`` for these rows."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.embeddings}
        if self.added:
            kwargs["added_cond_kwargs"] = dict(self.added)
        return kwargs

    def transformer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of an SD3 ``transformer(hidden_states=..., timestep=..., **kwargs)``:
        the joint text tokens and ``pooled_projections``."""
        return {"encoder_hidden_states": self.embeddings, **self.added}

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Rows of several conditionings, in order."""
        keys = parts[0].added.keys()
        return Conditioning(
            torch.cat([p.embeddings for p in parts]),
            {k: torch.cat([p.added[k] for p in parts]) for k in keys},
        )


Encoder = Callable[[Any, Sequence[str], bool, tuple[int, int], MicroConditioning], Conditioning]


@dataclass(frozen=True)
class ModelFamily:
    """One model family: what only it knows (see the module's table).

    Attributes:
        name: ``"sd"``, ``"sdxl"`` or ``"sd3"`` (also ``LayerInfo.family``).
        title: for messages.
        pipeline_class: the diffusers pipeline class that loads its folders.
        text_encoders: the pipeline's text encoder attributes, in the order their hidden states
            are concatenated.
        added_conditioning: the keys of ``added_cond_kwargs`` every UNet row needs.
        encode: prompts → :class:`Conditioning` (see :func:`encode_conditioning`).
        words: the pipeline attributes of the tokenizer and text encoder whose tokens the
            attention's text keys are, for word look-up: CLIP's (``tokenizer``,
            ``text_encoder``) everywhere but Flux, whose joint text is T5's.
    """

    name: str
    title: str
    pipeline_class: str
    text_encoders: tuple[str, ...]
    added_conditioning: tuple[str, ...]
    encode: Encoder
    words: tuple[str, str] = ("tokenizer", "text_encoder")


def _encode_sd(
    pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
    micro: MicroConditioning,
) -> Conditioning:  # fmt: skip
    cond, uncond = pipe.encode_prompt(list(prompts), pipe.device, 1, guidance)
    return Conditioning(torch.cat([uncond, cond]) if guidance else cond)


def _encode_sdxl(
    pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
    micro: MicroConditioning,
) -> Conditioning:  # fmt: skip
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
        prompt=list(prompts), device=pipe.device, num_images_per_prompt=1,
        do_classifier_free_guidance=guidance,
    )  # fmt: skip
    rows = 2 * len(prompts) if guidance else len(prompts)
    ids = torch.tensor([micro.time_ids(*size)], dtype=cond.dtype, device=cond.device)
    embeddings = torch.cat([uncond, cond]) if guidance else cond
    text_embeds = torch.cat([uncond_pooled, pooled]) if guidance else pooled
    return Conditioning(embeddings, {"text_embeds": text_embeds, "time_ids": ids.repeat(rows, 1)})


def _encode_sd3(
    pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
    micro: MicroConditioning,
) -> Conditioning:  # fmt: skip
    cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
        prompt=list(prompts), prompt_2=None, prompt_3=None, device=pipe.device,
        num_images_per_prompt=1, do_classifier_free_guidance=guidance,
    )  # fmt: skip
    embeddings = torch.cat([uncond, cond]) if guidance else cond
    pooled_rows = torch.cat([uncond_pooled, pooled]) if guidance else pooled
    return Conditioning(embeddings, {"pooled_projections": pooled_rows})


def _encode_flux(
    pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
    micro: MicroConditioning,
) -> Conditioning:  # fmt: skip
    if guidance:
        raise ValueError(
            "FLUX.1 is guidance-distilled: its guidance_scale is an input of the transformer, not "
            "a second, unconditional batch half; encode with guidance=False"
        )
    embeds, pooled, _ = pipe.encode_prompt(
        prompt=list(prompts), prompt_2=None, device=pipe.device, num_images_per_prompt=1,
        max_sequence_length=FLUX_T5_TOKENS,
    )  # fmt: skip
    return Conditioning(embeds, {"pooled_projections": pooled})


FAMILIES: dict[str, ModelFamily] = {
    SD: ModelFamily(
        SD, "SD 1.x/2.x", "StableDiffusionPipeline", ("text_encoder",), (), _encode_sd
    ),
    SDXL: ModelFamily(
        SDXL, "SDXL", "StableDiffusionXLPipeline", ("text_encoder", "text_encoder_2"),
        ("text_embeds", "time_ids"), _encode_sdxl,
    ),
    SD3: ModelFamily(
        SD3, "SD3", "StableDiffusion3Pipeline",
        ("text_encoder", "text_encoder_2", "text_encoder_3"), ("pooled_projections",),
        _encode_sd3,
    ),
    FLUX: ModelFamily(
        FLUX, "Flux", "FluxPipeline", ("text_encoder", "text_encoder_2"),
        ("pooled_projections",), _encode_flux, words=("tokenizer_2", "text_encoder_2"),
    ),
}  # fmt: skip

SD3_T5_TOKENS = 256
"""T5 tokens of SD3's joint text sequence: diffusers' ``max_sequence_length`` default (zeros
when the folder has no T5); they follow the 77 CLIP tokens."""

FLUX_T5_TOKENS = 512
"""T5 tokens of Flux's joint text sequence: ``FluxPipeline``'s ``max_sequence_length`` default."""

NEXT_FAMILIES = ("Flux", "PixArt", "Sana", "HunyuanDiT", "AuraFlow", "Lumina", "CogView")
"""Pipeline class prefixes of transformer families attnprobe does not load (yet); of Flux's,
only ``FluxPipeline`` folders load (Kontext, Fill, Control variants take other inputs)."""


def family_of(pipe: Any) -> ModelFamily:
    """The family of a pipeline (or a bare UNet), read from its UNet's config.

    Example:
        >>> family_of(load_pipeline("tiny-xl")).name
        'sdxl'
    """
    return FAMILIES[unet_family(denoiser_of(pipe).config)]


def family_of_folder(pipeline_class: str, folder: Any = None) -> ModelFamily:
    """The family of a diffusers folder from its model_index.json ``_class_name``.

    ``StableDiffusionXL*`` is SDXL (loaded as ``StableDiffusionXLPipeline``), ``StableDiffusion3*``
    SD3 (``StableDiffusion3Pipeline``), ``FluxPipeline`` Flux; any other class is loaded as SD
    1.x/2.x, as before families existed.

    Raises:
        NotImplementedError: a transformer family attnprobe does not load (:data:`NEXT_FAMILIES`;
            the message says what to use instead).
    """
    if pipeline_class.startswith("StableDiffusionXL"):
        return FAMILIES[SDXL]
    if pipeline_class.startswith("StableDiffusion3"):
        return FAMILIES[SD3]
    if pipeline_class == "FluxPipeline":
        return FAMILIES[FLUX]
    if pipeline_class.startswith(NEXT_FAMILIES):
        raise NotImplementedError(
            f"{folder or 'this folder'} is a {pipeline_class} folder (model_index.json): "
            "attnprobe loads SD 1.x/2.x, SDXL, SD3 and Flux (FluxPipeline) folders so far; use "
            "one of those, or --model toy"
        )
    return FAMILIES[SD]


def encode_conditioning(
    pipe: Any,
    prompts: Sequence[str],
    guidance: bool,
    size: tuple[int, int],
    micro: MicroConditioning | None = None,
) -> Conditioning:
    """Encode prompts into what the UNet's rows need, unconditional rows first under guidance.

    Args:
        pipe: an SD 1.x/2.x, SDXL or SD3 pipeline.
        prompts: one prompt per sample.
        guidance: add the unconditional rows (the empty prompt; SDXL folders with
            ``force_zeros_for_empty_prompt``: zeros, as diffusers' pipeline does).
        size: (height, width) in pixels of the image generated (SDXL's default time ids).
        micro: SDXL's micro-conditioning (default: original and target size = ``size``, crop
            (0, 0)); ignored by SD 1.x/2.x.

    Returns:
        :class:`Conditioning` of ``2 * len(prompts)`` rows with guidance, else ``len(prompts)``.

    Example:
        >>> cond = encode_conditioning(xl, ["a red car"], True, (64, 64))
        >>> cond.embeddings.shape, cond.added["time_ids"].tolist()[1]
        (torch.Size([2, 77, 80]), [64.0, 64.0, 0.0, 0.0, 64.0, 64.0])
    """
    return family_of(pipe).encode(pipe, prompts, guidance, size, micro or MicroConditioning())
