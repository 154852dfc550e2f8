"""The step clock: which iteration of the denoising loop a UNet call belongs to.

    with AttentionHooks(pipe, [recorder]) as hooks:
        pipe("a red car", num_inference_steps=50)      # PNDM: 51 iterations, steps 0-50
    hooks.clock.step + 1 == len(pipe.scheduler.timesteps)

A *step* is one iteration of the loop that calls the UNet, whatever the scheduler: the
pipeline's loop runs once per entry of ``scheduler.timesteps`` (PNDM repeats one timestep, Heun
lists every timestep but the first twice), a hand-written guidance loop may call the UNet twice
per iteration, null-text inversion optimises many times at one timestep. A repeated timestep is
therefore no proof of one step, and a step ends when the loop says so. Per run, the first of
these that applies decides:

1. ``"loop"``: a loop that marks its own iterations (:func:`denoising_steps`; attnprobe's DDIM
   loops, inversion and null-text inversion do). Nothing else ends a step then.
2. ``"scheduler"``: while the hooks are open they wrap ``pipe.scheduler.step`` and
   ``pipe.scheduler.set_timesteps`` (:class:`SchedulerWatch`); a scheduler step ends the step,
   ``set_timesteps`` starts a new run at step 0.
3. ``"timestep"``: a loop that does neither (a bare UNet, a loop with its own scheduler): a new
   step starts when the timestep differs from the previous UNet call's. This is also the rule
   until the first scheduler step of a run is seen.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from probe.families import family_of

Driver = Literal["loop", "scheduler", "timestep"]

_MISSING = object()


class StepClock:
    """Counts denoising steps as iterations of the loop that calls the UNet (see the module).

    Attributes:
        step: index of the step under way (-1 before the first UNet call of a run).
        timestep: the timestep the current step started with.
        timesteps: the timestep each step started with, by step index.
        driver: what ends a step in this run: ``"loop"``, ``"scheduler"`` or ``"timestep"``.
        total: the number of iterations, when the loop said so (:func:`denoising_steps`).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self, driver: Driver = "timestep", total: int | None = None) -> None:
        """Start counting from step 0 again at the next UNet call."""
        self.step = -1
        self.timestep: float | None = None
        self.timesteps: list[float] = []
        self.driver: Driver = driver
        self.total = total
        self._ended = False

    def end_step(self, driver: Driver) -> None:
        """The loop's iteration is over: the next UNet call starts a new step.

        Args:
            driver: who says so. A scheduler step is ignored while a loop marks its own
                iterations (null-text inversion steps a scheduler in its inner iterations).
        """
        if driver == "scheduler" and self.driver == "loop":
            return
        if self.driver == "timestep":
            self.driver = driver
        self._ended = True

    def tick(self, timestep: float) -> bool:
        """Register a UNet call; returns True when it starts a new step."""
        new = (
            self.step < 0
            or self._ended
            or (self.driver == "timestep" and timestep != self.timestep)
        )
        self._ended = False
        if not new:
            return False
        self.step += 1
        self.timestep = timestep
        self.timesteps.append(timestep)
        return True

    def starts_new_run(self, timestep: float) -> bool:
        """Whether a UNet call at ``timestep`` looks like a new generation of an unmarked loop:
        the run's first timestep again, after other ones (never for a marking loop)."""
        seen = self.timesteps
        return (
            self.driver != "loop"
            and bool(seen)
            and timestep == seen[0]
            and timestep != self.timestep
        )


class SchedulerWatch:
    """Wraps a scheduler's ``step`` and ``set_timesteps`` on the instance, and takes the
    wrappers off again, so the clock hears where the pipeline's loop iterations end.

    Args:
        on_step: called after every ``scheduler.step``.
        on_run: called after every ``scheduler.set_timesteps`` (a pipeline call starts).
    """

    def __init__(self, on_step: Callable[[], None], on_run: Callable[[], None]) -> None:
        self.on_step = on_step
        self.on_run = on_run
        self.scheduler: Any = None
        self._saved: dict[str, Any] = {}

    def attach(self, scheduler: Any) -> None:
        """Watch ``scheduler`` (and stop watching the previous one); ``None`` stops watching."""
        if scheduler is self.scheduler:
            return
        self.detach()
        if scheduler is None or not callable(getattr(scheduler, "step", None)):
            return
        for name, then in (("step", self.on_step), ("set_timesteps", self.on_run)):
            original = getattr(scheduler, name, None)
            if original is None:
                continue
            self._saved[name] = scheduler.__dict__.get(name, _MISSING)
            setattr(scheduler, name, _notify_after(original, then))
        self.scheduler = scheduler

    def detach(self) -> None:
        """Give the watched scheduler its own methods back."""
        scheduler, self.scheduler = self.scheduler, None
        saved, self._saved = self._saved, {}
        for name, before in saved.items():
            if before is _MISSING:
                scheduler.__dict__.pop(name, None)
            else:
                setattr(scheduler, name, before)


def _notify_after(method: Callable[..., Any], then: Callable[[], None]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = method(*args, **kwargs)
        then()
        return out

    return wrapper


def denoising_steps(model: Any, timesteps: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """Iterate a hand-written loop's timesteps, telling the hooks open on ``model`` (if any)
    that each iteration is one step and the loop has ``len(timesteps)`` of them.

    Args:
        model: the pipeline or UNet the loop calls.
        timesteps: the loop's timesteps, one per iteration.

    Yields:
        ``(i, t)`` as ``enumerate(timesteps)``.

    Example:
        >>> for i, t in denoising_steps(pipe, scheduler.timesteps):
        ...     noise = pipe.unet(latents, t, encoder_hidden_states=emb).sample
        ...     latents = scheduler.step(noise, t, latents).prev_sample
    """
    hooks = getattr(family_of(model).denoiser(model), "_attnprobe_hooks", None)
    if hooks is not None:
        hooks.restart()
        hooks.clock.reset("loop", len(timesteps))
    for i, t in enumerate(timesteps):
        yield i, t
        if hooks is not None:
            hooks.clock.end_step("loop")
