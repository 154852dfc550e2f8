"""What a model family is: one object holding everything only that family knows.

    family = family_of(pipe)                       # probe.families: SD, SDXL, SD3, Flux, PixArt
    family.layers(family.denoiser(pipe))           # its layer table, in execution order
    cond = family.encode(pipe, ["a red car"], True, (512, 512), MicroConditioning())
    sampler = family.sampler(pipe, 50, (64, 64))   # DDIM for UNets, flow-match Euler for DiTs

Hooks, recorder, probes, editors, the edit loop and the sweep ask the family object; none of
them tests a family's name, pipeline class or config keys (the way diffusers registers one set
of metadata per model class, and TransformerLens keeps one adapter per architecture). A new
family is one module in this package, registered in :mod:`probe.families`; docs/families.md
walks through PixArt-Σ as the example.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from probe.attention.layer_info import Kind, LayerInfo
from probe.families.conditioning import Conditioning, MicroConditioning
from probe.families.sampler import ddim_scheduler

PRESET_NAMES = ("all", "paper", "masactrl", "vital")
"""Layer presets that name fixed layers; each family says what they mean on it (``None``: no
published meaning there, refused with the way out). ``fpe`` is a rule: :meth:`fpe_rule`;
``vital`` is Stable Flow's vital blocks: :meth:`vital_rule`."""


@dataclass(frozen=True)
class DenoiserCall:
    """What the hooks read of one call of the denoiser.

    Attributes:
        batch: rows of the call.
        timestep: the call's timestep (a tensor or a number).
        context: the text tokens it was given (``encoder_hidden_states``), or None.
        latent_hw: the VAE latent (height, width) the call denoises.
    """

    batch: int
    timestep: Any
    context: Tensor | None
    latent_hw: tuple[int, int]


class GuidanceWatch:
    """Whether the pipeline's call under way guides (has unconditional batch rows first).

    Diffusers' SD, SDXL, SD3 and Flux pipelines say so in ``do_classifier_free_guidance``;
    a family whose pipeline does not (PixArt) watches its call instead
    (:meth:`ModelFamily.watch_guidance`)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    def guidance(self) -> bool:
        try:
            return bool(self.pipe.do_classifier_free_guidance)
        except AttributeError:  # the pipeline has not been called yet
            return False

    def unconditional_pass(self) -> bool:
        """Whether the denoiser call under way is a separate unconditional pass (FluxPipeline's
        true CFG calls the transformer twice per step: the conditional rows, then the
        unconditional ones); never, here."""
        return False

    def detach(self) -> None:
        """Undo whatever the watch changed on the pipeline (nothing here)."""


class ModelFamily:
    """One model family. Subclasses set the class attributes and override what differs.

    Attributes:
        name: ``"sd"``, ``"sdxl"``, ``"sd3"``, ``"flux"``, ``"pixart"`` (also ``LayerInfo.family``).
        title: for messages.
        pipeline_class: the diffusers pipeline class that loads its folders.
        denoiser_attr: the pipeline attribute of the denoiser (``unet`` or ``transformer``).
        text_encoders: the pipeline's text encoder attributes, in the order their hidden states
            are concatenated (re-initialised by the random-model control).
        added_conditioning: the names of :attr:`Conditioning.added` every row needs.
        words: the pipeline attributes of the tokenizer and text encoder whose tokens the
            attention's text keys are (word look-up).
        text_keys: how many text keys every attention call has (for memory plans; a pipeline
            may say otherwise: :meth:`text_key_count`).
        kinds: the kinds of attention map each layer computes.
        joint_attention: one softmax over [image; text] (SD3, Flux) instead of separate self-
            and cross-attention modules (UNets, PixArt).
        batch_guidance: classifier-free guidance as unconditional batch rows (a pipeline may
            say otherwise: :meth:`guides_with_rows`).
        generation_defaults: steps and guidance of a folder of this family.
        presets: preset name → layer spec (``None``: refused, :meth:`preset_rule`).
        unsupported: feature → why this family does not do it (:meth:`refuse`).
        built_in: the random models of this topology built in memory, name → builder.
        built_in_denoisers: the same names → a builder of the denoiser alone.
        ddim_overrides: config values of the editing DDIM scheduler that differ from the
            folder's (PixArt: ``trailing`` timesteps, which DDIM inversion can follow).
        call_kwargs: keyword arguments every ``pipe(...)`` attnprobe makes adds (PixArt:
            no resolution binning, so the size asked is the size generated); with the
            guidance, they are :meth:`pipe_kwargs`.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    pipeline_class: ClassVar[str]
    denoiser_attr: ClassVar[str] = "unet"
    text_encoders: ClassVar[tuple[str, ...]] = ("text_encoder",)
    added_conditioning: ClassVar[tuple[str, ...]] = ()
    words: ClassVar[tuple[str, str]] = ("tokenizer", "text_encoder")
    text_keys: ClassVar[int] = 77
    kinds: ClassVar[tuple[Kind, ...]] = ("self", "cross")
    joint_attention: ClassVar[bool] = False
    batch_guidance: ClassVar[bool] = True
    generation_defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, str | None]] = {}
    unsupported: ClassVar[dict[str, str]] = {}
    built_in: ClassVar[dict[str, Callable[[], Any]]] = {}
    built_in_denoisers: ClassVar[dict[str, Callable[[], Any]]] = {}
    call_kwargs: ClassVar[dict[str, Any]] = {}
    ddim_overrides: ClassVar[dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<family {self.name!r}: {self.title}>"

    # -- recognising -----------------------------------------------------------------------------
    def recognises_folder(self, pipeline_class: str) -> bool:
        """Whether a folder whose model_index.json names ``pipeline_class`` is this family's."""
        return pipeline_class == self.pipeline_class

    def recognises(self, config: Any) -> bool:
        """Whether a denoiser with this config is this family's."""
        raise NotImplementedError

    # -- loading ---------------------------------------------------------------------------------
    def load(self, folder: Path, dtype: torch.dtype | None = None) -> Any:
        """The pipeline of a folder, offline, progress bars off."""
        raise NotImplementedError

    def empty_denoiser(self, folder: Path) -> Any:
        """The folder's denoiser built from its config on the meta device (no weights)."""
        raise NotImplementedError

    def pipeline_options(self, pipe: Any, components: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments, beside its components, that rebuild ``pipe`` as it was loaded
        (the random-model control): the safety checker off where the pipeline has one."""
        return {"requires_safety_checker": False} if "safety_checker" in components else {}

    # -- layers ----------------------------------------------------------------------------------
    def denoiser(self, model: Any) -> Any:
        """The network a pipeline denoises with (a bare denoiser is returned as it is)."""
        return getattr(model, self.denoiser_attr, None) or model

    def native_latent(self, denoiser: Any) -> tuple[int, int]:
        """The VAE latent (height, width) the denoiser is made for (its ``sample_size``)."""
        size = denoiser.config.get("sample_size")
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def layers(
        self, denoiser: Any, latent_height: int | None = None, latent_width: int | None = None
    ) -> list[LayerInfo]:
        """Every attention layer, in execution order, at a latent size (default native)."""
        raise NotImplementedError

    def attention_modules(self, denoiser: Any) -> dict[str, tuple[int, tuple[Kind, ...]]]:
        """Processor name → (layer index, the kinds its attention computes): what is hooked."""
        raise NotImplementedError

    def hooked_processors(self, hooks: Any, denoiser: Any, saved: dict[str, Any]) -> dict:
        """Processor name → attnprobe's processor for every hooked module (``saved``: the
        processors there now, each new one's fallback)."""
        raise NotImplementedError

    def watch_guidance(self, pipe: Any) -> GuidanceWatch:
        """A watch of whether the pipeline's calls guide, while the hooks are open (its
        ``detach`` undoes it when they close)."""
        return GuidanceWatch(pipe)

    def pipe_kwargs(self, pipe: Any, prompts: Sequence[str], guidance_scale: float) -> dict:
        """Keyword arguments of ``pipe(prompts, ...)`` that guide at ``guidance_scale`` as this
        pipeline guides, with :attr:`call_kwargs` (Flux without a guidance embedding: true CFG,
        ``true_cfg_scale`` and an empty ``negative_prompt``)."""
        return {**self.call_kwargs, "guidance_scale": guidance_scale}

    def call_inputs(self, args: tuple, kwargs: dict) -> DenoiserCall:
        """Batch, timestep, text tokens and latent size of a denoiser call."""
        raise NotImplementedError

    # -- text ------------------------------------------------------------------------------------
    def encode(
        self, pipe: Any, prompts: Sequence[str], guidance: bool, size: tuple[int, int],
        micro: MicroConditioning,
    ) -> Conditioning:  # fmt: skip
        """Prompts → the rows' :class:`Conditioning`, unconditional rows first with guidance."""
        raise NotImplementedError

    def text_key_count(self, pipe: Any) -> int:
        """Text keys of every attention call of this pipeline (default :attr:`text_keys`)."""
        return self.text_keys

    def guides_with_rows(self, pipe: Any) -> bool:
        """Whether this pipeline's classifier-free guidance is unconditional batch rows
        (default :attr:`batch_guidance`)."""
        return self.batch_guidance

    def prompt_limit(self, pipe: Any) -> int:
        """Tokens the word tokenizer's encoder reads (a longer prompt is refused)."""
        return int(getattr(pipe, self.words[0]).model_max_length)

    # -- presets ---------------------------------------------------------------------------------
    def preset_rule(self, layers: Sequence[LayerInfo], preset: str) -> str:
        """The layer spec a preset stands for on this family.

        Raises:
            ValueError: the preset has no published meaning here; the message names the specs
                to use instead.
        """
        if preset == "vital":
            return self.vital_rule(layers)
        rule = self.presets.get(preset)
        if rule is None:
            raise ValueError(self.no_preset(preset, len(layers)))
        return rule

    def vital_rule(self, layers: Sequence[LayerInfo]) -> str:
        """The ``vital`` preset: the blocks whose bypass changes the image most (Stable Flow).
        Published for FLUX.1-dev only (:meth:`probe.families.flux.FluxFamily.vital_rule`); a
        model folder's own set is its ``attnprobe.json`` key ``vital_blocks``, read where the
        folder is known (:func:`probe.models.defaults.saved_vital_blocks`).

        Raises:
            ValueError: always here, with the way out.
        """
        raise ValueError(no_vital_blocks(self.title, len(layers)))

    def no_preset(self, preset: str, n_layers: int) -> str:
        """Why ``preset`` is refused on this family, and what to use instead."""
        return (
            f"layer preset {preset!r} has no published meaning on this {self.title} model of "
            f"{n_layers} layers: use 'all', a range such as '0-{n_layers - 1}', 'fpe', or a "
            "selection from `attnprobe select`"
        )

    def fpe_rule(self, layers: Sequence[LayerInfo]) -> str:
        """The rule the ``fpe`` preset stands for here: every block by default (a DiT's blocks
        all see one query size); UNets: :func:`probe.families.unet.positions_rule`."""
        return "all"

    # -- sampling --------------------------------------------------------------------------------
    def predict(
        self, pipe: Any, model_in: Tensor, t: Tensor, cond: Conditioning, **extra: Any
    ) -> Tensor:
        """The denoiser's output (noise or velocity) ``[rows, C, h, w]`` for latents ``[rows, C,
        h, w]`` at timestep ``t``."""
        raise NotImplementedError

    def sampler(self, pipe: Any, num_steps: int, latent_hw: tuple[int, int]) -> Any:
        """The sampler of an edit (:mod:`probe.families.sampler`), its timesteps set."""
        raise NotImplementedError

    def latent_channels(self, pipe: Any) -> int:
        """Channels of the VAE latent a generation starts from."""
        return int(pipe.vae.config.latent_channels)

    def ddim_scheduler(self, pipe: Any) -> Any:
        """The DDIM scheduler edits and inversions run on, from the folder's config
        (:func:`probe.families.sampler.ddim_scheduler`) with :attr:`ddim_overrides`."""
        return ddim_scheduler(pipe, **self.ddim_overrides)

    def refuse(self, feature: str) -> None:
        """Raise when this family does not do ``feature`` (``"inversion"``, ``"separate
        attention"``, ...), with the reason and the way out.

        Raises:
            NotImplementedError: the family's :attr:`unsupported` reason.
        """
        reason = self.unsupported.get(feature)
        if reason is not None:
            raise NotImplementedError(f"{self.title}: {reason}")


def no_vital_blocks(title: str, n_layers: int) -> str:
    """Why the ``vital`` preset is refused on a model without a published or measured set."""
    return (
        f"layer preset 'vital' (Stable Flow's vital blocks) is published for FLUX.1-dev's 19 "
        f"double + 38 single blocks only, and this {title} model of {n_layers} layers has no "
        "measured set: give the layers (--layers, e.g. 'joint' or '0-3'), or measure its vital "
        "blocks (`attnprobe vital`) and write them to the model folder's attnprobe.json as "
        '"vital_blocks": [layer indices]'
    )


def read_model_index(folder: Path) -> dict[str, Any]:
    """A diffusers folder's model_index.json."""
    return dict(json.loads((Path(folder) / "model_index.json").read_text()))


def meta_model(cls: Any, folder: Path) -> Any:
    """``cls`` built from the config in ``folder`` on the meta device (no weights)."""
    config = cls.load_config(str(folder))
    with torch.device("meta"):
        return cls.from_config(config)
