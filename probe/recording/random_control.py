"""The random-model control: the same architecture with freshly initialised weights.

A probe that reads colour from a trained model's attention maps might only be reading which token
the prompt contains, something any network of that shape passes through. Recording the same
prompts and seeds on a randomly initialised copy and probing it the same way measures that floor
(the "random model" control of probing studies): knowledge is what the trained model has beyond it.
The control is a model to record on (its seed is stored with the dataset, ``random_init``), so it
lives with recording; the probes read its dataset like any other.

Example:
    >>> control = random_init_like(load_pipeline("toy"), seed=0)
    >>> record_dataset(control, load_template("colour_car"), range(32), "runs/colour_random",
    ...                model="toy", random_init=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from probe.families import family_of


def _fresh(module: Any) -> Any:
    """A new module of the same class and config, with newly drawn weights."""
    cls = type(module)
    if hasattr(cls, "from_config"):  # diffusers models
        return cls.from_config(module.config)
    return cls(module.config)  # transformers models


def random_init_like(pipe: Any, seed: int = 0, parts: Sequence[str] | None = None) -> Any:
    """A copy of ``pipe`` whose ``parts`` have the same architecture and random weights.

    Args:
        pipe: a diffusers SD pipeline (left unchanged).
        seed: seed of the new weights (the global RNG state is restored afterwards).
        parts: components to re-initialise; default the UNet and the text encoder(s) of the
            model's family (SDXL: both; the tokenizer, VAE and scheduler are kept, so prompts,
            image size and the step schedule match).

    Returns:
        A new pipeline on the same device and dtype.

    Raises:
        ValueError: a part the pipeline does not have.

    Example:
        >>> rand = random_init_like(load_pipeline("tiny"), seed=1)
    """
    family = family_of(pipe)
    if parts is None:
        parts = (family.denoiser_attr, *family.text_encoders)
    components = dict(pipe.components)
    for part in parts:
        if components.get(part) is None:
            raise ValueError(
                f"pipeline part {part!r} does not exist: re-initialise some of "
                f"{sorted(k for k, v in components.items() if isinstance(v, torch.nn.Module))}"
            )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in parts:
            old = components[part]
            param = next(old.parameters())
            fresh = _fresh(old)
            if param.device.type != "cpu" or param.dtype != torch.float32:
                fresh = fresh.to(device=param.device, dtype=param.dtype)
            components[part] = fresh.eval()
    new = type(pipe)(**components, **family.pipeline_options(pipe, components))
    new.set_progress_bar_config(disable=True)
    if getattr(pipe, "name_or_path", None):  # keeps the model's generation defaults
        new.register_to_config(_name_or_path=pipe.name_or_path)
    return new
