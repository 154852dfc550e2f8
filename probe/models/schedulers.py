"""What a scheduler is, for settings files, and how many iterations its loop runs.

    scheduler_settings(pipe.scheduler)          # {"class": "PNDMScheduler", "config": {...}, ...}
    loop_length(pipe.scheduler, 50)             # 51: PNDM repeats one timestep

The pipeline's loop runs once per entry of ``scheduler.timesteps``; that is one *step* for the
step clock (:mod:`probe.attention.clock`), so a recording on PNDM at 50 inference steps has 51
steps, one on Heun at N steps ``2N - 1``.
"""

from __future__ import annotations

from typing import Any

KEY_CONFIG = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
    "clip_sample",
    "skip_prk_steps",
    "shift",  # flow-match Euler (SD3: 3.0)
    "use_dynamic_shifting",
)


def scheduler_settings(scheduler: Any, eta: float | None = None) -> dict[str, Any]:
    """What a settings file says about a scheduler: its class, key config values and eta.

    Args:
        scheduler: any diffusers scheduler.
        eta: DDIM's eta when the loop passes one (``None``: the scheduler's own sampling).

    Returns:
        ``{"class": ..., "config": {...}, "eta": ...}``, JSON-serialisable.

    Example:
        >>> scheduler_settings(load_pipeline("tiny").scheduler)["class"]
        'DDIMScheduler'
    """
    config = scheduler.config
    keys = [k for k in KEY_CONFIG if k in config and k in _init_keys(scheduler)]
    return {
        "class": type(scheduler).__name__,
        "config": {key: _plain(config[key]) for key in keys},
        "eta": eta,
    }


def loop_length(scheduler: Any, num_inference_steps: int) -> int:
    """Iterations of the pipeline's loop at ``num_inference_steps``: ``len(timesteps)`` of a
    fresh copy of the scheduler (the scheduler itself is not touched).

    Example:
        >>> loop_length(PNDMScheduler.from_config(sd15_config), 50)
        51
    """
    fresh = type(scheduler).from_config(scheduler.config)
    # Flux's flow-match Euler shifts by the image size (mu), which never changes the count
    shift = {"mu": 1.0} if fresh.config.get("use_dynamic_shifting") else {}
    fresh.set_timesteps(num_inference_steps, **shift)
    return len(fresh.timesteps)


def _init_keys(scheduler: Any) -> set[str]:
    import inspect

    return set(inspect.signature(type(scheduler).__init__).parameters)


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value
