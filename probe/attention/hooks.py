"""Attention hooks: one processor on every attention module, inside a ``with`` block.

    with AttentionHooks(pipe, [recorder]) as hooks:
        pipe("a red car")

On entry every attention module of the UNet gets a :class:`HookedAttnProcessor`; on exit, also
after an exception, the processors that were there before come back, the very same objects.
A forward pre-hook on the UNet reads the ``timestep`` argument and drives the step clock, so steps
count the same in the pipeline, in an inversion loop and in a hand-written loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from diffusers import UNet2DConditionModel
from torch import Tensor

from probe.attention.batch import BatchLayout
from probe.attention.controller import AttentionCall, Controller, Kind
from probe.attention.layers import LayerInfo, attention_modules, unet_layers
from probe.attention.processor import HookedAttnProcessor

# processors whose math is plain attention: we may replace them without changing the model
STANDARD_PROCESSORS = {
    "AttnProcessor",
    "AttnProcessor2_0",
    "XFormersAttnProcessor",
    "SlicedAttnProcessor",
    "AttnProcessorNPU",
}


class StepClock:
    """Counts denoising steps from the timesteps the UNet is called with.

    A new step starts whenever the timestep differs from the previous call's, so the two halves of
    a hand-written guidance loop, or the inner iterations of null-text inversion, share a step.
    """

    def __init__(self) -> None:
        self.step = -1
        self.timestep: float | None = None
        self.timesteps: list[float] = []

    def reset(self) -> None:
        """Start counting from step 0 again at the next UNet call."""
        self.__init__()  # type: ignore[misc]

    def tick(self, timestep: float) -> bool:
        """Register a UNet call; returns True when it starts a new step."""
        if self.timestep is not None and timestep == self.timestep:
            return False
        self.step += 1
        self.timestep = timestep
        self.timesteps.append(timestep)
        return True


class AttentionHooks:
    """Install attnprobe's attention processor on a UNet for the span of a ``with`` block.

    Args:
        model: a diffusers pipeline (batch roles are then read from it) or a bare UNet.
        controllers: recorders and editors to consult; more can be added with :meth:`add`.
        layout: explicit batch roles; by default derived at each UNet call from the pipeline's
            guidance setting (unconditional rows first), or all-conditional for a bare UNet.
        replace_foreign: replace processors someone else installed on layers a controller
            claims (default: refuse). Elsewhere foreign processors keep running.

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
    ) -> None:
        self.pipe = None if isinstance(model, UNet2DConditionModel) else model
        self.unet: UNet2DConditionModel = model if self.pipe is None else model.unet
        self.controllers: list[Controller] = list(controllers)
        self.layout = layout
        self.replace_foreign = replace_foreign
        self.layers: list[LayerInfo] = unet_layers(self.unet)
        self.clock = StepClock()
        self.batch_layout: BatchLayout | None = None
        self.latent_hw: tuple[int, int] = self.layers[0].resolution
        self._saved: dict[str, Any] | None = None
        self._handle: Any = None
        self._first_call = True
        self.encoder_hidden_states: Tensor | None = None
        self.num_steps: int | None = None  # set by loops that know their length

    # -- controllers -------------------------------------------------------------------------
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
        modules = attention_modules(self.unet)
        missing = set(saved) - set(modules)
        if missing:
            raise RuntimeError(
                "attention modules outside transformer blocks are not supported: "
                f"{sorted(missing)[:3]}"
            )
        new = {
            name: HookedAttnProcessor(self, self.layers[index], kind, saved[name])
            for name, (index, kind) in modules.items()
        }
        self.unet.set_attn_processor(dict(new))  # diffusers empties the dict it is given

    def _restore(self) -> None:
        try:
            if self._handle is not None:
                self._handle.remove()
            if self._saved is not None:
                self.unet.set_attn_processor(dict(self._saved))
        finally:
            self._handle = None
            self._saved = None
            if getattr(self.unet, "_attnprobe_hooks", None) is self:
                del self.unet._attnprobe_hooks

    def _check_foreign(self, controllers: Iterable[Controller]) -> None:
        if self.replace_foreign or self._saved is None:
            return
        modules = attention_modules(self.unet)
        for name, proc in self._saved.items():
            if type(proc).__name__ in STANDARD_PROCESSORS or isinstance(proc, HookedAttnProcessor):
                continue
            index, kind = modules[name]
            for c in controllers:
                if c.claims(self.layers[index], kind):
                    raise RuntimeError(
                        f"layer {index} ({kind}) runs a processor installed by someone else "
                        f"({type(proc).__name__}) and {type(c).__name__} needs it: remove that "
                        "processor (unet.set_default_attn_processor()), exclude the layer, or pass "
                        "replace_foreign=True"
                    )

    # -- per call ----------------------------------------------------------------------------
    def _pre_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        timestep = float(t.flatten()[0]) if isinstance(t, Tensor) else float(t)
        seen = self.clock.timesteps
        if seen and timestep == seen[0] and timestep != self.clock.timestep:
            self.restart()  # the run's first timestep again: a new generation
        self.clock.tick(timestep)
        self.encoder_hidden_states = (
            args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        )
        self.latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        self.batch_layout = self._layout_for(int(sample.shape[0]))
        first, self._first_call = self._first_call, False
        for c in self.controllers:
            c.on_unet_call(self, first)

    @property
    def total_steps(self) -> int | None:
        """Steps of the run under way, when the pipeline's scheduler tells (else ``None``)."""
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
        guidance = bool(self.pipe is not None and _pipe_guidance(self.pipe))
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


def _pipe_guidance(pipe: Any) -> bool:
    try:
        return bool(pipe.do_classifier_free_guidance)
    except AttributeError:  # the pipeline has not been called yet
        return False
