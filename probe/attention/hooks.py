"""Attention hooks: one processor on every attention module, inside a ``with`` block.

    with AttentionHooks(pipe, [recorder]) as hooks:
        pipe("a red car")

On entry every attention module of the UNet gets a :class:`HookedAttnProcessor`; on exit, also
after an exception, the processors that were there before come back, the very same objects.
A forward pre-hook on the UNet reads the ``timestep`` argument and drives the step clock: a step is
one iteration of the loop that calls the UNet (the pipeline's, an inversion loop, a hand-written
one), for every scheduler; see :mod:`probe.attention.clock` for the rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor

from probe.attention.batch import BatchLayout
from probe.attention.clock import SchedulerWatch, StepClock
from probe.attention.controller import AttentionCall, Controller, Kind
from probe.attention.layer_info import LayerInfo, table_at
from probe.attention.processor import HookedAttnProcessor
from probe.attention.user_processors import REFUSED_WHY, kind_of
from probe.families import family_of


class AttentionHooks:
    """Install attnprobe's attention processor on a UNet for the span of a ``with`` block.

    Args:
        model: a diffusers pipeline (batch roles are then read from it) or a bare UNet; an
            DiT pipeline or transformer (SD3, Flux: one joint processor per block,
            :mod:`probe.attention.joint`); the model's family (:mod:`probe.families`) says
            which modules are hooked and how a call of its denoiser reads.
        controllers: recorders and editors to consult; more can be added with :meth:`add`.
        layout: explicit batch roles; by default derived at each UNet call from the pipeline's
            guidance setting (unconditional rows first), or all-conditional for a bare UNet.
        replace_foreign: replace processors attnprobe does not know on layers a controller
            claims (default: refuse). Elsewhere they keep running. Processors diffusers installs
            for fused QKV projections, IP-Adapters, attention slicing and the plain processor
            are known: attnprobe works on top of them and the output stays theirs
            (:mod:`probe.attention.user_processors`).
        latent_hw: the latent (height, width) the run generates, when known before it starts
            (the edit loop knows it); default the UNet's ``sample_size`` until the first call.

    ``hooks.layers`` is the layer table of this run: at ``latent_hw`` from the start when it is
    given, and from the first UNet call on at the size of the sample the UNet gets, before any
    controller sees that call. Controllers resolve their layer specs against it, so a rule such
    as ``res<=16`` means 16 query positions per side at the size actually generated.

    ``hooks.clock`` counts steps as iterations of the loop calling the UNet: while the block is
    open, ``pipe.scheduler.step`` and ``set_timesteps`` are wrapped on the scheduler instance
    (and unwrapped on exit) so that PNDM's and Heun's repeated timesteps count as the
    pipeline's loop counts them (:mod:`probe.attention.clock`).

    Raises:
        RuntimeError: entering twice, or a controller claims a layer that runs a foreign
            processor and ``replace_foreign`` is False.

    Example:
        >>> with AttentionHooks(pipe, [AttentionRecorder(...)]) as hooks:
        ...     pipe("a red car", num_inference_steps=20)
        >>> hooks.clock.step
        19
    """

    def __init__(
        self,
        model: Any,
        controllers: Iterable[Controller] = (),
        layout: BatchLayout | None = None,
        replace_foreign: bool = False,
        latent_hw: tuple[int, int] | None = None,
    ) -> None:
        self.family = family_of(model)  # what only the model's family knows
        self.unet: Any = self.family.denoiser(model)  # the UNet, or a DiT's transformer
        self.pipe = None if self.unet is model else model
        self.controllers: list[Controller] = list(controllers)
        self.layout = layout
        self.replace_foreign = replace_foreign
        self.latent_hw: tuple[int, int] = latent_hw or self.family.native_latent(self.unet)
        self.layers: list[LayerInfo] = self.family.layers(self.unet, *self.latent_hw)
        self.clock = StepClock()
        self._watch = SchedulerWatch(lambda: self.clock.end_step("scheduler"), self.restart)
        self._guidance: Any = None  # the family's watch of the pipeline's guidance, while open
        self.batch_layout: BatchLayout | None = None
        self._saved: dict[str, Any] | None = None
        self._handle: Any = None
        self._first_call = True
        self.encoder_hidden_states: Tensor | None = None
        self.num_steps: int | None = None  # set by loops that know their length

    # -- controllers -------------------------------------------------------------------------
    def bind(self) -> None:
        """Resolve every controller's layer specs against this run's table (``self.layers``):
        a spec that does not fit the model fails here, before the first step. Controllers
        bind again at the run's first call, at the size it generates."""
        for c in self.controllers:
            c.bind(self.layers)

    def add(self, controller: Controller) -> Controller:
        """Add a controller (also while the block is open) and return it."""
        if self._saved is not None:
            self._check_foreign([controller])
        self.controllers.append(controller)
        return controller

    def remove(self, controller: Controller) -> None:
        self.controllers.remove(controller)

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> AttentionHooks:
        if self._saved is not None:
            raise RuntimeError("these AttentionHooks are already open: enter them once")
        if getattr(self.unet, "_attnprobe_hooks", None) is not None:
            raise RuntimeError(
                "another AttentionHooks block is already open on this UNet: add your controller "
                "to it with hooks.add(controller) instead of nesting a second one"
            )
        saved = dict(self.unet.attn_processors)
        self._saved = saved
        try:
            self._check_foreign(self.controllers)
            self._install(saved)
            self._handle = self.unet.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
            self._watch.attach(getattr(self.pipe, "scheduler", None))
            if self.pipe is not None:
                self._guidance = self.family.watch_guidance(self.pipe)
            self.unet._attnprobe_hooks = self
        except BaseException:
            self._restore()
            raise
        self.clock.reset()
        self._first_call = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _install(self, saved: dict[str, Any]) -> None:
        """attnprobe's processor on every module the family hooks (its ``attention_modules``);
        any other keeps its own."""
        hooked = self.family.hooked_processors(self, self.unet, saved)
        self.unet.set_attn_processor({**saved, **hooked})  # diffusers empties the dict it gets

    def _restore(self) -> None:
        try:
            self._watch.detach()
            if self._guidance is not None:
                self._guidance.detach()
            if self._handle is not None:
                self._handle.remove()
            if self._saved is not None:
                self.unet.set_attn_processor(dict(self._saved))
        finally:
            self._handle = None
            self._saved = None
            self._guidance = None
            if getattr(self.unet, "_attnprobe_hooks", None) is self:
                del self.unet._attnprobe_hooks

    def _check_foreign(self, controllers: Iterable[Controller]) -> None:
        if self.replace_foreign or self._saved is None:
            return
        modules = self._module_kinds()
        for name, proc in self._saved.items():
            if kind_of(proc) is not None or isinstance(proc, HookedAttnProcessor):
                continue
            if name not in modules:
                continue  # not hooked: it keeps running its own processor
            index, kinds = modules[name]
            for c in controllers:
                kind = next((k for k in kinds if c.claims(self.layers[index], k)), None)
                if kind is not None:
                    raise RuntimeError(
                        f"layer {index} ({kind}) runs a processor installed by someone else "
                        f"({type(proc).__name__}) and {type(c).__name__} needs it: "
                        f"{REFUSED_WHY}. Remove that processor "
                        "(unet.set_default_attn_processor()), exclude the layer, or pass "
                        "replace_foreign=True to run attnprobe's attention there instead"
                    )

    def _module_kinds(self) -> dict[str, tuple[int, tuple[Kind, ...]]]:
        """Processor name → (layer index, the kinds it computes)."""
        return self.family.attention_modules(self.unet)

    # -- per call ----------------------------------------------------------------------------
    def _pre_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        call = self.family.call_inputs(args, kwargs)
        t = call.timestep
        timestep = float(t.flatten()[0]) if isinstance(t, Tensor) else float(t)
        self._watch.attach(getattr(self.pipe, "scheduler", None))  # also a swapped-in one
        if self.clock.starts_new_run(timestep):
            self.restart()  # the run's first timestep again: a new generation
        self.clock.tick(timestep)
        self.encoder_hidden_states = call.context
        self._set_latent((int(call.latent_hw[0]), int(call.latent_hw[1])))
        self.batch_layout = self._layout_for(call.batch)
        first, self._first_call = self._first_call, False
        for c in self.controllers:
            c.on_unet_call(self, first)

    def _set_latent(self, latent_hw: tuple[int, int]) -> None:
        """Make ``self.layers`` the table of the latent size the UNet is called with."""
        if latent_hw == self.latent_hw:
            return
        self.latent_hw, self.layers = latent_hw, table_at(self.layers, latent_hw)
        for proc in self.unet.attn_processors.values():
            if isinstance(proc, HookedAttnProcessor) and proc.hooks is self:
                proc.layer = self.layers[proc.layer.index]

    @property
    def total_steps(self) -> int | None:
        """Steps of the run under way: the iterations a marking loop announced
        (:func:`~probe.attention.clock.denoising_steps`), else ``num_steps`` when set, else
        ``len(pipe.scheduler.timesteps)`` (the pipeline loop's iterations), else ``None``."""
        if self.clock.total is not None:
            return self.clock.total
        if self.num_steps is not None:
            return self.num_steps
        timesteps = getattr(getattr(self.pipe, "scheduler", None), "timesteps", None)
        return len(timesteps) if timesteps is not None and len(timesteps) else None

    def restart(self) -> None:
        """Count steps from 0 again (call between two generations inside one block)."""
        self.clock.reset()
        self._first_call = True

    def _layout_for(self, batch: int) -> BatchLayout:
        if self.layout is not None:
            if len(self.layout) != batch:
                raise RuntimeError(
                    f"the batch layout has {len(self.layout)} rows but the UNet got a batch of "
                    f"{batch}: set hooks.layout to match the loop "
                    "(BatchLayout.for_samples or BatchLayout.for_edit)"
                )
            return self.layout
        if self._guidance is not None and self._guidance.unconditional_pass():
            return BatchLayout.unconditional(batch)
        guidance = self._guidance is not None and self._guidance.guidance()
        if guidance and batch % 2:
            raise RuntimeError(f"guidance is on but the UNet batch ({batch}) is odd: pass layout=")
        return BatchLayout.for_samples(batch // 2 if guidance else batch, guidance)

    def make_call(self, layer: LayerInfo, kind: Kind, queries: int, keys: int) -> AttentionCall:
        """Describe the attention call now under way."""
        h, w = layer.resolution_at(*self.latent_hw)
        if h * w != queries:
            raise RuntimeError(
                f"layer {layer.index} got {queries} query positions but the latent "
                f"{self.latent_hw} implies {h}x{w}: is the UNet called outside the hooked pipeline?"
            )
        layout = self.batch_layout or BatchLayout.for_samples(1, False)
        return AttentionCall(
            layer=layer,
            kind=kind,
            step=max(self.clock.step, 0),
            timestep=self.clock.timestep if self.clock.timestep is not None else float("nan"),
            layout=layout,
            query_hw=(h, w),
            keys=keys,
        )
