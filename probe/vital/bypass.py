"""Block bypass: a transformer block that returns its input unchanged, as Stable Flow defines it.

    with bypass_blocks(pipe, [5]):           # attnprobe layer 5 (``attnprobe layers --model M``)
        image = pipe("a red car", ...).images[0]
    # the model is exactly as before here

Stable Flow (Avrahami et al., CVPR 2025) measures how *vital* a block of a diffusion transformer
is by generating with the block bypassed, "the block returns its input unchanged", for both the
image and the text stream, and comparing with the full generation (:mod:`probe.vital.vitality`).

What one bypassed *layer* (one row of the layer table, :mod:`probe.attention.layer_info`) is:

- Flux double-stream (``FluxTransformerBlock``), Flux single-stream
  (``FluxSingleTransformerBlock``) and SD3 joint (``JointTransformerBlock``) blocks: the block
  returns ``(encoder_hidden_states, hidden_states)`` as it received them (diffusers 0.42 returns
  that order from all three; a single-stream block's inputs are the two streams before it
  concatenates them, so text and image come back unchanged too). SD3's last block
  (``context_pre_only``) would return no text stream; nothing reads it after the last block, and
  the bypass returns the input's. This is what SD3's own ``skip_layers`` does.
- A UNet layer (``down_blocks.1.attentions.0``): the whole ``Transformer2DModel`` (norm,
  ``proj_in``, its transformer block, ``proj_out`` and the residual) returns its input, so the
  ResNet path alone carries the latent through. Bypassing only the ``BasicTransformerBlock``
  inside would still add ``proj_out(proj_in(norm(x)))``, which is not "the input unchanged".
  Where a ``Transformer2DModel`` holds several blocks (SDXL), each layer is one
  ``BasicTransformerBlock`` and that block returns its ``hidden_states``.
- PixArt's ``BasicTransformerBlock``: returns its ``hidden_states``.

How: inside the ``with`` block the bypassed module's ``forward`` is shadowed by an attribute on
that one instance (the way diffusers' own ``HookRegistry`` and accelerate install a new
forward); module hooks still run around it, the block's weights and attention processors are
never called. On exit (also on an exception) the attribute is removed, or the instance
``forward`` that was there before is put back, so the model is the very same object it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from probe.families import family_of

BypassOutput = Callable[[tuple, dict], Any]
"""``(args, kwargs) → output``: what a bypassed block returns, from the call's own inputs."""

_BYPASSED = "_attnprobe_bypassed"


def _argument(name: str, position: int, args: tuple, kwargs: dict) -> Any:
    if name in kwargs:
        return kwargs[name]
    if len(args) > position:
        return args[position]
    raise ValueError(f"bypassed block called without {name!r}: cannot return its input")


def _two_streams(args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """Flux double/single and SD3 joint blocks: ``(encoder_hidden_states, hidden_states)``."""
    hidden = _argument("hidden_states", 0, args, kwargs)
    text = _argument("encoder_hidden_states", 1, args, kwargs)
    return text, hidden


def _transformer_2d(args: tuple, kwargs: dict) -> Any:
    """A UNet's ``Transformer2DModel``: ``(hidden_states,)``, or its output dataclass."""
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    hidden = _argument("hidden_states", 0, args, kwargs)
    return (hidden,) if not kwargs.get("return_dict", True) else Transformer2DModelOutput(hidden)


def _hidden_only(args: tuple, kwargs: dict) -> Any:
    """``BasicTransformerBlock``: its ``hidden_states``."""
    return _argument("hidden_states", 0, args, kwargs)


def bypass_output(module: nn.Module) -> BypassOutput:
    """What ``module`` returns when bypassed, by its class (the one place that knows).

    Raises:
        ValueError: a block class attnprobe does not know how to bypass.
    """
    from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
    from diffusers.models.transformers.transformer_2d import Transformer2DModel
    from diffusers.models.transformers.transformer_flux import (
        FluxSingleTransformerBlock,
        FluxTransformerBlock,
    )

    table: list[tuple[type, BypassOutput]] = [
        (FluxTransformerBlock, _two_streams),
        (FluxSingleTransformerBlock, _two_streams),
        (JointTransformerBlock, _two_streams),
        (Transformer2DModel, _transformer_2d),
        (BasicTransformerBlock, _hidden_only),
    ]
    for cls, output in table:
        if isinstance(module, cls):
            return output
    known = ", ".join(cls.__name__ for cls, _ in table)
    raise ValueError(f"cannot bypass a {type(module).__name__}: attnprobe bypasses {known}")


def block_modules(model: Any, layers: Sequence[int]) -> dict[int, nn.Module]:
    """Layer index → the module that layer is (its block), for a pipeline or a denoiser.

    Raises:
        ValueError: a layer that does not exist; the message names the ones that do.
    """
    family = family_of(model)
    denoiser = family.denoiser(model)
    table = family.layers(denoiser)
    found: dict[int, nn.Module] = {}
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(table):
            raise ValueError(
                f"layer {index!r} does not exist: this model has layers 0-{len(table) - 1} "
                "(see `attnprobe layers --model ...`)"
            )
        found[index] = denoiser.get_submodule(table[index].name)
    return found


@contextmanager
def bypass_blocks(model: Any, layers: int | Sequence[int]) -> Iterator[dict[int, nn.Module]]:
    """Bypass these layers' blocks while the ``with`` block is open.

    Args:
        model: a pipeline or its denoiser (UNet or DiT) of any family attnprobe knows.
        layers: attnprobe layer indices (execution order, as ``attnprobe layers`` prints).

    Yields:
        Layer index → the bypassed module.

    Raises:
        ValueError: a layer that does not exist, a block already bypassed (nested bypass of the
            same block), or a block class attnprobe cannot bypass.

    Example:
        >>> with bypass_blocks(pipe, [0, 4]):
        ...     bypassed = pipe(prompt, generator=torch.Generator().manual_seed(0)).images[0]
    """
    chosen = [layers] if isinstance(layers, int) else list(layers)
    modules = block_modules(model, chosen)
    outputs = {index: bypass_output(module) for index, module in modules.items()}
    for index, module in modules.items():
        if getattr(module, _BYPASSED, False):
            raise ValueError(f"layer {index} is already bypassed: leave the open bypass first")
    saved: dict[int, Any] = {}
    try:
        for index, module in modules.items():
            saved[index] = module.__dict__.get("forward")
            module.forward = _returns_input(outputs[index])  # type: ignore[method-assign]
            setattr(module, _BYPASSED, True)
        yield modules
    finally:
        for index in saved:
            _restore(modules[index], saved[index])


def _returns_input(output: BypassOutput) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return output(args, kwargs)

    return forward


def _restore(module: nn.Module, previous: Any) -> None:
    if previous is None:
        module.__dict__.pop("forward", None)
    else:
        module.forward = previous  # type: ignore[method-assign]
    module.__dict__.pop(_BYPASSED, None)


def is_bypassed(module: nn.Module) -> bool:
    """Whether ``module`` is bypassed now (inside :func:`bypass_blocks`)."""
    return bool(getattr(module, _BYPASSED, False))


__all__ = ["block_modules", "bypass_blocks", "bypass_output", "is_bypassed"]
