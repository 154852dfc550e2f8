"""ConceptAttention's concept maps on SD3 and Flux: where a concept word lies in the image.

    with record_concepts(pipe, ["car", "park", "street"]) as maps:
        pipe("a red car on the street")
    concept_map(maps, "car")                # [h, w]: softmax over concepts, mean over layers, steps
    maps[2, 5, "concept"]                   # [samples, concepts, image tokens] of one layer, step

Helbling et al., "ConceptAttention: Diffusion Transformers Learn Highly Interpretable Features"
(ICML 2025; helblazer811/ConceptAttention, ``concept_attention/flux/dit_block.py``,
``flux/pipeline.py``, ``utils.embed_concepts``), as its Flux code runs it:

1. Each concept word is encoded alone by the text encoder whose tokens the joint attention reads
   (Flux: T5; SD3: CLIP, the words' side of attnprobe), and its first token is kept: one
   *concept token* per word, put through the transformer's ``context_embedder``.
2. In every double-stream (joint) block the concept tokens take the text stream's weights with a
   residual stream of their own: ``norm1_context`` (AdaLN-Zero) on a conditioning of the
   timestep (and guidance) with a **zero** pooled text vector (the authors' ``embed_concepts``
   zeroes CLIP's; ``pooled="prompt"`` uses the prompt's, as their SD3 code does), the text
   projections and q/k norms, attention over ``[concepts; image]`` keys (position ids zero, so
   the rotary embedding is the identity on them), ``to_add_out``, the gate, ``norm2_context`` and
   ``ff_context``. Nothing attends to the concept tokens, so the image is unchanged (a test).
3. A concept's saliency in a block is the dot product of its attention output with each image
   token's attention output (before the output projections, heads concatenated):
   ``[concepts, image tokens]``, then a softmax over the concepts; maps are averaged over the
   layers and steps asked (their default on FLUX.1-schnell: double blocks 15-18, 4 steps).

Flux's single-stream blocks do not carry concept tokens (the authors' ``ModifiedSingleStreamBlock``
takes none; their stream ends after the last double block), and neither does attnprobe: layers
must be double-stream blocks. Differences from the authors' diffusers port
(``concept_attention/diffusers/flux``), which this follows the original over: the port takes the
outputs after the output projections, conditions on the concepts' CLIP vector, and applies the
final softmax over image tokens. UNets have no analogue (docs/segmentation.md).

Maps are stored as any other kind in an :class:`~probe.recording.maps.AttentionMaps`:
``concept/L02/S005`` ``[samples, concepts, image tokens]`` (float32, softmaxed over concepts),
the concept words in ``maps.settings["concepts"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from probe.attention.controller import AttentionCall, HookState
from probe.attention.hooks import AttentionHooks
from probe.attention.joint import OutputObserver
from probe.attention.layer_info import LayerInfo, LayerSpec
from probe.attention.layers import resolve_layers
from probe.attention.steps import StepSpec, resolve_steps
from probe.families import family_of
from probe.families.conditioning import MicroConditioning
from probe.models.placement import execution_device
from probe.models.vocabulary import WORD, check_known_words
from probe.prompts.words import word_positions
from probe.recording.maps import AttentionMaps, tensor_name

KIND = "concept"
POOLED = ("zeros", "prompt")


def check_concepts(pipe: Any, concepts: Sequence[str]) -> list[str]:
    """The concept words, lower-cased, or an error naming the bad one.

    Raises:
        ValueError: no concept, an empty one, one that is not a single word, a repeated one,
            or (a closed vocabulary: the toys) a word the model does not know.
    """
    words = [str(c).strip().lower() for c in concepts]
    if not words:
        raise ValueError("no concepts: name at least one word, e.g. ['car', 'park']")
    for raw, word in zip(concepts, words, strict=True):
        if WORD.findall(word) != [word]:
            raise ValueError(
                f"concept {raw!r} is not one word: a concept token is the first token of one "
                "word; pass each word as its own concept"
            )
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise ValueError(f"concepts {repeated} are given twice: name each concept once")
    if pipe is not None:
        check_known_words(pipe, words)
    return words


def concept_embeddings(pipe: Any, concepts: Sequence[str]) -> Tensor:
    """One concept token per word: the word encoded alone, its first token's column of the joint
    text (``[concepts, joint_dim]``; Flux: T5's first token, as ``embed_concepts``).

    Raises:
        ValueError: a bad concept word (:func:`check_concepts`).
    """
    words = check_concepts(pipe, concepts)
    family = family_of(pipe)
    tokenizer = getattr(pipe, family.words[0])
    rows = []
    with torch.no_grad():
        for word in words:
            cond = family.encode(pipe, [word], False, (512, 512), MicroConditioning())
            first = word_positions(tokenizer, word, word)[0]
            rows.append(cond.embeddings[0, first])
    return torch.stack(rows).to(execution_device(pipe))


class ConceptRecorder(OutputObserver):
    """The observer that runs the concept tokens and fills ``maps`` (see :func:`record_concepts`,
    which also feeds it the blocks' conditioning; on its own it refuses to run).

    Args:
        maps: where the maps go (kind ``concept``).
        concepts: the concept words (``maps.settings["concepts"]``).
        embeddings: their tokens ``[concepts, joint_dim]`` (:func:`concept_embeddings`).
        layers: double-stream (joint) blocks to record; the stream runs through every joint
            block up to the last of them.
        steps: steps to record (any step spec).
        pooled: ``"zeros"`` (the authors' Flux code) or ``"prompt"`` (their SD3 code).
    """

    def __init__(
        self, maps: AttentionMaps, concepts: Sequence[str], embeddings: Tensor,
        layers: LayerSpec = "joint", steps: StepSpec = "all", pooled: str = "zeros",
    ) -> None:  # fmt: skip
        if pooled not in POOLED:
            raise ValueError(
                f"pooled={pooled!r}: use 'zeros' (ConceptAttention's Flux) or 'prompt'"
            )
        if embeddings.ndim != 2 or embeddings.shape[0] != len(concepts):
            raise ValueError(
                f"embeddings {tuple(embeddings.shape)} do not hold one row per concept "
                f"({len(concepts)}): make them with concept_embeddings(pipe, concepts)"
            )
        self.maps, self.concepts, self.embeddings = maps, list(concepts), embeddings
        self.layer_spec, self.step_spec, self.pooled = layers, steps, pooled
        self.layers: frozenset[int] = frozenset()
        self.steps: frozenset[int] = frozenset()
        self.last = -1
        self.hooks: HookState | None = None
        self.temb: Tensor | None = None  # the prompt's conditioning of this call, all rows
        self.concept_temb: Tensor | None = None
        self.rows: list[int] = []
        self.state: Tensor | None = None  # the concept tokens' residual stream [rows, C, dim]

    def bind(self, layers: list[LayerInfo]) -> None:
        chosen = resolve_layers(layers, self.layer_spec)
        other = [i for i in chosen if layers[i].place != "joint"]
        if other:
            joint = [x.index for x in layers if x.place == "joint"]
            span = f"{joint[0]}-{joint[-1]}" if joint else "none"
            raise ValueError(
                f"layers {other} are not double-stream (joint) blocks: ConceptAttention runs its "
                f"concept tokens through those only (Flux's single-stream blocks carry none); "
                f"this model's are {span}"
            )
        self.layers, self.last = frozenset(chosen), max(chosen, default=-1)

    def claims(self, layer: LayerInfo, kind: str) -> bool:
        return kind == "self" and layer.place == "joint" and layer.index <= self.last

    def active(self, call: AttentionCall) -> bool:
        return self.claims(call.layer, call.kind) and call.step in self.steps and bool(self.rows)

    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        self.hooks, self.state, self.temb = hooks, None, None
        layout = hooks.batch_layout
        self.rows = layout.indices(guidance="cond") if layout is not None else []
        if first:
            self.bind(hooks.layers)
            self.steps = frozenset(resolve_steps(self.step_spec, hooks.total_steps))
            self.maps.layers, self.maps.latent_hw = hooks.layers, hooks.latent_hw
            self.maps.settings.update(concepts=self.concepts, pooled=self.pooled)

    def conditioning(self, module: Any, args: tuple, output: Tensor) -> None:
        """Forward hook on the transformer's ``time_text_embed``: the prompt's conditioning
        ``[batch, dim]`` and the concepts' (its last argument, the pooled text, zeroed)."""
        self.temb = output
        pooled = args[-1]
        if self.pooled == "zeros":
            self.concept_temb = module.forward(*args[:-1], torch.zeros_like(pooled))
        else:
            self.concept_temb = output

    def observe_output(
        self, call: AttentionCall, attn: Any, q: Tensor, k: Tensor, v: Tensor, out: Tensor
    ) -> None:
        if self.hooks is None or self.concept_temb is None:
            raise RuntimeError(
                "ConceptRecorder got a block call without the transformer's conditioning: "
                "record concepts with record_concepts(pipe, concepts)"
            )
        transformer = self.hooks.unet
        rows = self.rows
        if self.state is None:  # the first joint block of this call
            embeds = self.embeddings.to(transformer.context_embedder.weight)
            start = transformer.context_embedder(embeds)
            self.state = start.unsqueeze(0).expand(len(rows), -1, -1)
        block = transformer.get_submodule(call.layer.name)
        temb = self.concept_temb[rows].to(self.state.dtype)
        concept_out, update = concept_attention(
            block,
            attn,
            self.state,
            temb,
            k[rows],
            v[rows],
            scale=float(getattr(attn, "scale", q.shape[-1] ** -0.5)),
        )
        if call.layer.index in self.layers:
            image = out[rows].transpose(1, 2).flatten(2)  # [rows, N, heads * d]
            scores = torch.einsum("rcd,rnd->rcn", concept_out.float(), image.float())
            name = tensor_name(KIND, call.layer.index, call.step)
            self.maps.data[name] = scores.softmax(dim=1).cpu()
            self.maps.timesteps[call.step] = call.timestep
        self.state = update


def concept_attention(
    block: Any, attn: Any, state: Tensor, temb: Tensor, image_k: Tensor, image_v: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One joint block on the concept tokens.

    Args:
        block: the joint block (``norm1_context``, ``norm2_context``, ``ff_context``).
        attn: its attention (``add_q/k/v_proj``, ``norm_added_q/k``, ``to_add_out``).
        state: the concept tokens' residual stream ``[rows, concepts, dim]``.
        temb: their conditioning ``[rows, dim]``.
        image_k, image_v: the image tokens' keys and values ``[rows, heads, N, d]`` as the
            block's own softmax used them (after the q/k norm and the rotary embedding).
        scale: the attention scale.

    Returns:
        The concepts' attention output, heads concatenated, before ``to_add_out``
        ``[rows, concepts, heads * d]``; and the stream after the block (the same stream on a
        ``context_pre_only`` block, SD3's last, which has no text update).
    """
    pre_only = bool(getattr(block, "context_pre_only", False))
    if pre_only:
        normed = block.norm1_context(state, temb)
    else:
        normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.norm1_context(state, emb=temb)
    heads = image_k.shape[1]

    def split(x: Tensor) -> Tensor:
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # [rows, heads, C, d]

    cq, ck, cv = (split(f(normed)) for f in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
    if getattr(attn, "norm_added_q", None) is not None:
        cq = attn.norm_added_q(cq)
    if getattr(attn, "norm_added_k", None) is not None:
        ck = attn.norm_added_k(ck)
    keys = torch.cat([ck, image_k.to(ck.dtype)], dim=2)
    values = torch.cat([cv, image_v.to(cv.dtype)], dim=2)
    out = F.scaled_dot_product_attention(cq, keys, values, scale=scale)
    out = out.transpose(1, 2).flatten(2)  # [rows, C, heads * d]
    if pre_only or getattr(attn, "to_add_out", None) is None:
        return out, state
    state = state + gate_msa.unsqueeze(1) * attn.to_add_out(out)
    normed = block.norm2_context(state) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    state = state + gate_mlp.unsqueeze(1) * block.ff_context(normed)
    return out, state


@contextlib.contextmanager
def record_concepts(
    pipe: Any,
    concepts: Sequence[str],
    layers: LayerSpec = "joint",
    steps: StepSpec = "all",
    pooled: str = "zeros",
    hooks: AttentionHooks | None = None,
) -> Iterator[AttentionMaps]:
    """Record ConceptAttention's concept maps while the block runs an SD3 or Flux pipeline.

    Args:
        pipe: an SD3 or Flux pipeline.
        concepts: the concept words, e.g. ``["car", "park", "street"]`` (each one word; the map
            of one is a softmax against the others, so name the background too).
        layers: double-stream (joint) blocks to record (default every one; the authors use
            15-18 of FLUX.1-schnell's 19).
        steps: steps to record (default all; the authors: all 4 of schnell's).
        pooled: the concept tokens' pooled text vector: ``"zeros"`` (the authors' Flux) or
            ``"prompt"`` (their SD3).
        hooks: an open :class:`AttentionHooks` to add the recorder to (e.g. the one of a
            :func:`~probe.recording.recorder.record_attention` block), instead of new ones.

    Yields:
        :class:`AttentionMaps` with kind ``concept`` (read with :func:`concept_map`).

    Raises:
        ValueError: a bad concept word, a layer that is not a joint block, a UNet pipeline.

    Example:
        >>> with record_concepts(pipe, ["car", "street"], layers="2-3") as maps:
        ...     pipe("a red car on the street", num_inference_steps=4)
        >>> concept_map(maps, "car").shape
        torch.Size([8, 8])
    """
    family = family_of(pipe)
    if "text_image" not in family.kinds:
        raise ValueError(
            f"concept maps need a diffusion transformer's joint attention (SD3, Flux); this is "
            f"a {family.title}: draw its words' cross-attention maps instead (record_attention)"
        )
    own = hooks is None
    hooks = hooks or AttentionHooks(pipe)
    words = check_concepts(pipe, concepts)
    maps = AttentionMaps(layers=hooks.layers, latent_hw=hooks.latent_hw)
    maps.settings["concepts"] = words
    recorder = ConceptRecorder(maps, words, concept_embeddings(pipe, words), layers, steps, pooled)
    recorder.bind(hooks.layers)
    handle = hooks.unet.time_text_embed.register_forward_hook(recorder.conditioning)
    try:
        hooks.add(recorder)
        with hooks if own else contextlib.nullcontext(), torch.no_grad():
            yield maps
    finally:
        handle.remove()
        if recorder in hooks.controllers:
            hooks.remove(recorder)


def concept_map(
    maps: AttentionMaps,
    concept: str,
    sample: int = 0,
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
) -> Tensor:
    """A concept's map ``[h, w]``: its softmax share, averaged over layers and steps.

    Args:
        maps: a recording with kind ``concept`` (:func:`record_concepts`).
        concept: one of ``maps.settings["concepts"]``.
        sample: which recorded sample.
        layers, steps: what to average (default every recorded one).

    Raises:
        KeyError: a concept that was not recorded (the message lists those that were).
    """
    recorded = list(maps.settings.get("concepts", []))
    if concept.lower() not in recorded:
        raise KeyError(f"concept {concept!r} was not recorded: the concepts are {recorded}")
    index = recorded.index(concept.lower())
    chosen = list(layers) if layers is not None else maps.recorded_layers(KIND)
    recorded_steps = sorted({int(n.split("/")[2][1:]) for n in maps.data if n.startswith(KIND)})
    chosen_steps = list(steps) if steps is not None else recorded_steps
    stack = [maps[layer, step, KIND][sample, index] for layer in chosen for step in chosen_steps]
    h, w = maps.resolution(chosen[0])
    return torch.stack(stack).float().mean(dim=0).reshape(h, w)
