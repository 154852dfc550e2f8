"""Record attention maps while a pipeline (or any loop calling the UNet) runs.

    with record_attention(pipe, layers="all", kinds=("cross", "self")) as maps:
        pipe("a red car", num_inference_steps=20)
    maps.word_map("car")            # [h, w], averaged over layers, steps and heads
    maps[13, 19, "self"]            # [samples, heads', queries, queries]

Maps are reduced as they arrive (head mean, fp16, self-attention SVD or pooling), and the memory
they will take is computed at the first UNet call, before any step runs: a recording over budget
fails there with a message naming the option to change.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, get_args

import torch
from torch import Tensor

from probe.attention.controller import AttentionCall, Controller, HookState, Kind
from probe.attention.hooks import AttentionHooks
from probe.attention.layer_info import LayerInfo, LayerSpec
from probe.attention.layers import resolve_layers
from probe.attention.steps import StepSpec, resolve_steps
from probe.families import family_of
from probe.models.vocabulary import check_known_words
from probe.prompts.words import prompt_tokens
from probe.recording.maps import AttentionMaps, tensor_name
from probe.recording.plan import (
    AUTO_SVD,
    DEFAULT_BUDGET,
    SQUARE_KINDS,
    BudgetError,
    RecordingPlan,
    format_bytes,
    plan_recording,
)
from probe.recording.reduce import (
    HeadSpec,
    SelfReduce,
    pool_self,
    reduce_heads,
    svd_self,
)

log = logging.getLogger(__name__)


class AttentionRecorder(Controller):
    """The observer that fills an :class:`AttentionMaps` (see :func:`record_attention`).

    ``layers`` is checked against ``maps.layers`` when the recorder is made and resolved again
    against the run's table (``hooks.layers``) at the first UNet call, so a resolution rule picks
    the layers of the size actually generated.
    """

    def __init__(
        self,
        maps: AttentionMaps,
        layers: LayerSpec,
        kinds: Sequence[Kind],
        steps: StepSpec,
        heads: HeadSpec,
        self_reduce: SelfReduce,
        dtype: torch.dtype,
        rows: str,
        budget_bytes: int,
        prompts: Sequence[str] | None = None,
    ) -> None:
        if rows not in ("cond", "all"):
            raise ValueError(f"rows={rows!r}: use 'cond' (default) or 'all'")
        self.maps = maps
        self.layer_spec = layers
        self.layers = frozenset(resolve_layers(maps.layers, layers))
        self.kinds = frozenset(kinds)
        self.step_spec = steps
        self.steps: frozenset[int] | None = None
        self.heads = heads
        self.self_reduce = self_reduce
        self.dtype = dtype
        self.rows = rows
        self.budget_bytes = budget_bytes
        self.prompts = list(prompts) if prompts is not None else None
        # (input_ids, [outputs]) of the first text encoder: its last layer, and every hidden
        # state when the pipeline asks for them (SDXL reads the penultimate one)
        self.captured: list[tuple[Tensor, list[Tensor]]] = []
        self.plan: RecordingPlan | None = None
        self.open_ended = False  # steps 'all' of a run whose length is unknown (bare UNet)

    def claims(self, layer: LayerInfo, kind: Kind) -> bool:
        return layer.index in self.layers and kind in self.kinds

    def active(self, call: AttentionCall) -> bool:
        if not self.claims(call.layer, call.kind) or self.steps is None:
            return False
        return self.open_ended or call.step in self.steps

    def needs_probs(self, call: AttentionCall) -> bool:
        return True

    # -- run start: steps, budget, tokens ----------------------------------------------------
    def on_unet_call(self, hooks: HookState, first: bool) -> None:
        layout = hooks.batch_layout
        if self.rows == "all" and layout is not None and not layout.indices(guidance="cond"):
            raise ValueError(
                "rows='all' records every row of one batch, and this pipeline runs its "
                "unconditional rows as a separate denoiser call (FluxPipeline's true CFG): "
                "record rows='cond'"
            )
        if not first:
            return
        if self.maps.data:
            log.warning(
                "a new generation started inside record_attention: its maps replace the last"
            )
            self.maps.data.clear()
            self.maps.timesteps.clear()
        self.maps.layers, self.maps.latent_hw = hooks.layers, hooks.latent_hw
        family = hooks.family
        foreign = sorted(self.kinds - set(family.kinds))
        if foreign:
            raise ValueError(
                f"kinds {foreign} are parts of a DiT's joint map that this {family.title} model "
                f"does not compute (its layers compute {', '.join(family.kinds)}): record "
                "kinds=('cross', 'self')"
            )
        self.layers = frozenset(resolve_layers(hooks.layers, self.layer_spec))
        total = hooks.total_steps
        self.open_ended = total is None and self.step_spec in (None, "all")
        self.steps = frozenset([0] if self.open_ended else resolve_steps(self.step_spec, total))
        layout = hooks.batch_layout
        if layout is None:  # AttentionHooks sets it before any controller sees the call
            raise RuntimeError("the hooks called the recorder before reading the batch layout")
        n_rows = len(layout.indices(guidance="cond")) if self.rows == "cond" else len(layout)
        self.plan = self._plan(hooks, n_rows, total)
        self.maps.settings.update(
            heads=self.heads, self_reduce=str(self.plan.self_reduce), dtype=str(self.dtype)[6:],
            rows=self.rows, row_roles=[vars(layout.rows[i]) for i in self._row_ids(layout)],
        )  # fmt: skip
        self.maps.tokens = self._tokens(hooks, layout)

    def _plan(self, hooks: HookState, n_rows: int, total: int | None) -> RecordingPlan:
        layers = [hooks.layers[i] for i in sorted(self.layers)]
        steps = sorted(self.steps or ())
        if self.open_ended:  # steps unknown in advance: plan one step, check as maps arrive
            log.info("the number of steps is unknown before the run; checking the budget per step")
        kinds = sorted(self.kinds)
        args = (layers, hooks.latent_hw, steps, n_rows, kinds, self.heads)
        context = hooks.encoder_hidden_states  # its token count: SD 77, SD3 77 + 256
        tokens = int(context.shape[1]) if context is not None and context.ndim == 3 else 77
        choices = (
            [self.self_reduce]
            if self.self_reduce.mode != "auto"
            else [SelfReduce("full"), AUTO_SVD]
        )
        image_only = self._image_only_layers(hooks)
        for reduce in choices:
            plan = plan_recording(*args, reduce, self.dtype, tokens, image_only)
            if plan.total_bytes <= self.budget_bytes:
                return plan
        square = f"self {format_bytes(plan.self_bytes)}"
        if plan.image_only_bytes:
            square += f", image_only {format_bytes(plan.image_only_bytes)}"
        raise BudgetError(
            f"recording needs {format_bytes(plan.total_bytes)} "
            f"(cross {format_bytes(plan.cross_bytes)}, {square} as '{plan.self_reduce}') "
            f"for {len(layers)} layers x {len(steps)} steps x {n_rows} rows, "
            f"over budget_bytes={format_bytes(self.budget_bytes)}: "
            "use self_reduce='svd:8' or 'pool:8', heads='mean', fewer layers= or steps=, "
            "kinds=('cross',), or raise budget_bytes"
        )

    def _image_only_layers(self, hooks: HookState) -> set[int] | None:
        """The layers with an image-only attention (SD3.5 Medium's ``attn2``), from the family's
        hooked modules; None (count every layer) when it is not recorded.

        Raises:
            ValueError: ``image_only`` is asked for but none of the recorded layers has it."""
        if "image_only" not in self.kinds:
            return None
        modules = hooks.family.attention_modules(hooks.unet).values()
        found = {index for index, kinds in modules if "image_only" in kinds}
        if not found & self.layers:
            where = f"only layers {sorted(found)} have one" if found else "this model has none"
            raise ValueError(
                f"kind 'image_only' is the image-only attn2 of SD3.5 Medium's dual-attention "
                f"blocks, and none of the layers recorded has it ({where}): drop 'image_only' "
                "from kinds= or choose those layers"
            )
        return found

    def _row_ids(self, layout: Any) -> list[int]:
        return layout.indices(guidance="cond") if self.rows == "cond" else list(range(len(layout)))

    def _tokens(self, hooks: HookState, layout: Any) -> list[list[str]]:
        tokenizer = getattr(hooks.pipe, word_side(hooks.pipe)[0], None)
        rows = self._row_ids(layout)
        if self.prompts is not None and tokenizer is not None:
            n = layout.num_samples
            if n % len(self.prompts):
                raise ValueError(f"{len(self.prompts)} prompts given for a batch of {n} samples")
            per = n // len(self.prompts)
            return [
                prompt_tokens(tokenizer, self.prompts[layout.rows[r].sample // per]) for r in rows
            ]
        embeds = hooks.encoder_hidden_states
        if tokenizer is None or embeds is None:
            return []
        tokens = [self._match_tokens(tokenizer, embeds[r]) for r in rows]
        limit = tokenizer.model_max_length
        self.maps.settings["context_length"] = limit
        for i, toks in enumerate(tokens):
            if len(toks) >= limit:
                warnings.warn(
                    f"sample {i}'s prompt was cut off at {limit} tokens (as diffusers does): "
                    "words past it have no attention maps",
                    stacklevel=2,
                )
        return tokens

    def _match_tokens(self, tokenizer: Any, embedding: Tensor) -> list[str]:
        """The tokens of the prompt whose embedding row this is. SD's row is the text encoder's
        output; SDXL's row starts with the first encoder's penultimate hidden state (the second
        encoder's columns follow, from a tokenizer with the same tokens), so a row matches an
        output on its leading columns; SD3's joint text tokens start with the 77 CLIP tokens
        (T5's follow), so its row matches on its leading columns of its leading tokens."""
        for ids, outs in self.captured:
            for i, row in ((i, out[i]) for out in outs for i in range(out.shape[0])):
                if row.ndim != 2 or embedding.ndim != 2:
                    continue  # a pooled output
                lead = embedding[: row.shape[0], : row.shape[-1]]
                if row.shape == lead.shape and torch.equal(row.to(lead), lead):
                    toks = tokenizer.convert_ids_to_tokens(ids[i].tolist())
                    return (
                        toks[: toks.index(tokenizer.eos_token) + 1]
                        if tokenizer.eos_token in toks
                        else toks
                    )
        return []

    # -- per attention call ------------------------------------------------------------------
    def observed_rows(self, call: AttentionCall) -> list[int]:
        return self._row_ids(call.layout)

    def observe(self, call: AttentionCall, probs: Tensor) -> None:
        p = reduce_heads(probs, self.heads)
        name = tensor_name(call.kind, call.layer.index, call.step)
        self.maps.timesteps[call.step] = call.timestep
        plan = self.plan
        reduce = plan.self_reduce if plan is not None else AUTO_SVD
        if call.kind not in SQUARE_KINDS or reduce.mode == "full":
            self._put(name, p)
        elif reduce.mode == "pool":
            self._put(name, pool_self(p, call.query_hw, reduce.k))
        else:
            u, s, v = svd_self(p, reduce.k)
            for part, t in zip("usv", (u, s, v), strict=True):
                self._put(f"{name}/{part}", t)

    def _put(self, name: str, t: Tensor) -> None:
        t = t.detach().to(device="cpu", dtype=self.dtype)
        if self.open_ended and self.maps.nbytes + t.numel() * t.element_size() > self.budget_bytes:
            raise BudgetError(
                f"recording passed budget_bytes={format_bytes(self.budget_bytes)} at step "
                f"{name.split('/')[2]}: record fewer steps= or layers=, or raise budget_bytes"
            )
        self.maps.data[name] = t


@contextlib.contextmanager
def record_attention(
    model: Any,
    layers: LayerSpec = "all",
    kinds: Sequence[Kind] = ("cross", "self"),
    steps: StepSpec = "all",
    heads: HeadSpec = "mean",
    self_reduce: str = "auto",
    dtype: torch.dtype = torch.float16,
    rows: str = "cond",
    budget_bytes: int = DEFAULT_BUDGET,
    prompts: Sequence[str] | None = None,
    hooks: AttentionHooks | None = None,
) -> Iterator[AttentionMaps]:
    """Record attention maps while the block runs the pipeline.

    Args:
        model: a diffusers SD pipeline (or a bare UNet, with ``hooks=`` for its batch layout).
        layers: any layer spec (see :func:`probe.attention.layers.resolve_layers`); default every
            layer. It is resolved against the run's layer table at the first UNet call, so
            ``res<=16`` means 16 query positions per side at the size the pipeline generates.
        kinds: ``"cross"``, ``"self"`` or both; on a DiT (SD3) also ``"text_image"`` and
            ``"text_text"``: the four parts of its joint map (:mod:`probe.attention.joint`),
            ``self`` = image→image, ``cross`` = image→text; on SD3.5 Medium ``"image_only"``,
            its blocks' second, image-only attention (``attn2``; reduced as ``self``).
        steps: ``"all"``, an int, ``"0-9"``, a list, or ``"first:0.5"`` / ``"last:0.25"``.
        heads: ``"mean"`` (default), ``"all"`` or a list of head indices.
        self_reduce: ``"auto"`` (whole maps if they fit the budget, else ``svd:8``), ``"full"``,
            ``"svd:K"`` or ``"pool:R"``.
        dtype: storage dtype (default float16).
        rows: ``"cond"`` (the conditional rows, one per sample) or ``"all"`` batch rows.
        budget_bytes: memory the maps may take (default 4 GiB).
        prompts: the prompts, if the text encoder is not run inside the block (tokens for
            word look-up are otherwise read from the text encoder's own call).
        hooks: an open :class:`AttentionHooks` to add the recorder to, instead of a new one.

    Yields:
        :class:`AttentionMaps`, filled as the block runs.

    Raises:
        BudgetError: at the first UNet call, before any step, if the maps would not fit.
        ValueError: an unknown layer, step, kind or option.
        UnknownWordError: a word of ``prompts`` outside a closed vocabulary (the toy's), at
            once; a prompt the pipeline is called with, from its text encoder (see
            :mod:`probe.models.vocabulary`).

    Example:
        >>> with record_attention(pipe, layers="up", kinds=("cross",)) as maps:
        ...     pipe("a red car", num_inference_steps=20)
        >>> maps.word_map("car").shape
        torch.Size([8, 8])
    """
    for kind in kinds:
        if kind not in get_args(Kind):
            raise ValueError(
                f"kind {kind!r} is neither 'cross' nor 'self' (nor, on SD3 and Flux, one of the "
                "text-query parts of their joint map, 'text_image' or 'text_text', nor SD3.5 "
                "Medium's 'image_only')"
            )
    if prompts is not None:  # without prompts, load_pipeline's text encoder refuses them
        check_known_words(model, prompts)
    own = hooks is None
    hooks = hooks or AttentionHooks(model)
    maps = AttentionMaps(layers=hooks.layers, latent_hw=hooks.latent_hw)
    recorder = AttentionRecorder(
        maps, layers, tuple(kinds), steps, heads,
        SelfReduce.parse(self_reduce), dtype, rows, budget_bytes, prompts,
    )  # fmt: skip
    text_encoder = getattr(model, word_side(model)[1], None)  # Flux: T5's
    handle = None
    if text_encoder is not None:
        handle = text_encoder.register_forward_hook(_capture_into(recorder), with_kwargs=True)
    try:
        hooks.add(recorder)
        with hooks if own else contextlib.nullcontext():
            yield maps
    finally:
        if handle is not None:
            handle.remove()
        if recorder in hooks.controllers:
            hooks.remove(recorder)


def word_side(model: Any) -> tuple[str, str]:
    """The pipeline attributes of the tokenizer and text encoder whose tokens are the attention's
    text keys (:attr:`probe.families.base.ModelFamily.words`); CLIP's for a bare denoiser."""
    if model is None:
        return ("tokenizer", "text_encoder")
    return family_of(model).words


def _capture_into(recorder: AttentionRecorder) -> Any:
    def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            hidden = getattr(output, "hidden_states", None) or ()
            outs = [t.detach() for t in (output[0], *hidden)]
            recorder.captured.append((ids.detach().cpu(), outs))

    return hook
