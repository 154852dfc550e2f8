"""The scheduler every edit runs on: DDIM, built from the model's own scheduler config.

    scheduler = editing_scheduler(pipe)          # a new DDIMScheduler; pipe.scheduler is untouched
    scheduler_settings(scheduler, eta=EDIT_ETA)  # what settings.json says about it

Every published editing method (FPE, Prompt-to-Prompt, null-text inversion, MasaCtrl) samples
and inverts with DDIM at eta 0, whatever scheduler the checkpoint folder ships (SD 1.5 ships
PNDM, SD 2.x Euler). attnprobe does the same: editing, DDIM inversion, null-text inversion and
the sweep build a ``DDIMScheduler`` from ``pipe.scheduler.config``. ``from_config`` keeps the
schedule (``num_train_timesteps``, ``beta_*``, ``trained_betas``), ``prediction_type``,
``steps_offset``, ``set_alpha_to_one`` and ``timestep_spacing`` where the config sets them,
drops the other class's own keys (PNDM's ``skip_prk_steps``, Euler's sigma options), and falls
back to DDIM's defaults for values the folder's file left out (e.g. Euler's default
``timestep_spacing`` "linspace" becomes DDIM's "leading"). Only ``clip_sample`` is set here when
the config does not say: ``False``, as the official code sets it (DDIM's own default, ``True``,
would clip latents meant to stay unclipped).

For SD 1.5's folder this gives the official FPE / Prompt-to-Prompt scheduler
(``beta 0.00085-0.012 scaled_linear, clip_sample False, set_alpha_to_one False``) with the
folder's ``steps_offset: 1`` (the official code leaves ``steps_offset`` at 0: its timesteps are
980, 960, ..., 0 where attnprobe's are 981, 961, ..., 1).
"""

from __future__ import annotations

import inspect
from typing import Any

from diffusers import DDIMInverseScheduler, DDIMScheduler

from probe.models.schedulers import scheduler_settings

EDIT_ETA = 0.0
"""DDIM's eta in every edit and inversion: deterministic sampling, as the authors run it."""


def editing_scheduler(pipe: Any) -> DDIMScheduler:
    """A new DDIM scheduler from the pipeline's scheduler config (the pipeline keeps its own).

    Args:
        pipe: a diffusers pipeline with a ``scheduler``.

    Returns:
        A ``DDIMScheduler`` with the folder's schedule, prediction type, ``steps_offset`` and
        ``set_alpha_to_one``, ``clip_sample`` False unless the config sets it.

    Example:
        >>> type(pipe.scheduler).__name__, type(editing_scheduler(pipe)).__name__
        ('PNDMScheduler', 'DDIMScheduler')
    """
    config = pipe.scheduler.config
    return DDIMScheduler.from_config(config, clip_sample=bool(config.get("clip_sample", False)))


def inverse_scheduler(scheduler: DDIMScheduler) -> DDIMInverseScheduler:
    """The DDIM inverse scheduler of the same config (for DDIM inversion).

    Only the keys DDIMInverseScheduler takes are passed on (the folder's PNDM leaves
    ``skip_prk_steps`` in the config, which diffusers would warn about).
    """
    takes = inspect.signature(DDIMInverseScheduler.__init__).parameters
    return DDIMInverseScheduler.from_config(
        {k: v for k, v in scheduler.config.items() if k in takes}
    )


def editing_scheduler_settings(pipe: Any) -> dict[str, Any]:
    """What settings files say about the scheduler an edit ran on.

    Returns:
        :func:`~probe.models.schedulers.scheduler_settings` of :func:`editing_scheduler` (class
        ``DDIMScheduler``, its key config, eta 0) plus ``"built_from"``: the class of the
        model's own scheduler, whose config it was built from.

    Example:
        >>> editing_scheduler_settings(pipe)["built_from"]
        'PNDMScheduler'
    """
    return {
        **scheduler_settings(editing_scheduler(pipe), EDIT_ETA),
        "built_from": type(pipe.scheduler).__name__,
    }


def sampling_settings(
    pipe: Any, num_steps: int | None = None, guidance_scale: float | None = None
) -> dict[str, Any]:
    """Everything an edit samples with, defaults resolved: for ``sweep.json`` and the like.

    Args:
        pipe: the pipeline.
        num_steps, guidance_scale: as given to the edit (``None``: the model's default).

    Returns:
        ``num_steps``, ``guidance_scale``, ``height``, ``width``, ``defaults`` (where the
        defaults came from, :func:`probe.models.defaults_origin`) and ``scheduler``
        (:func:`editing_scheduler_settings`).

    Example:
        >>> sampling_settings(load_pipeline("toy"))["num_steps"]
        20
    """
    from probe.models import defaults_origin, generation_defaults

    gen = generation_defaults(pipe)
    return {
        "num_steps": num_steps or gen["num_inference_steps"],
        "guidance_scale": gen["guidance_scale"] if guidance_scale is None else guidance_scale,
        "height": gen["height"],
        "width": gen["width"],
        "defaults": defaults_origin(pipe),
        "scheduler": editing_scheduler_settings(pipe),
    }
