"""What every stage of the toy's training shares: the wall-clock budget, the learning-rate
schedule, the loss log, atomic checkpoints, and one resumable loop with a progress bar.

    class MyStage(Stage):
        def train_step(self): ...; self.step += 1; return {"loss": "0.1"}   # bar postfix
        def checkpoint(self, done): save_atomic({...}, self.work / "my.pt")
    MyStage("my", work, max_steps=None, clock=Clock(60.0), checkpoint_minutes=5).run()
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, then rename: a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def log_line(work: Path, stage: str, step: int, elapsed: float, **values: float) -> None:
    """Append one line to ``work/loss.jsonl``: stage, step, elapsed seconds and the values."""
    line = {"stage": stage, "step": step, "elapsed_s": round(elapsed, 1), **values}
    with open(work / "loss.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


class Clock:
    """Wall-clock budget that survives resuming (elapsed time is stored in the checkpoint)."""

    def __init__(self, budget_s: float, elapsed: float = 0.0) -> None:
        self.budget, self.before, self.start = budget_s, elapsed, time.monotonic()

    @property
    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.start

    @property
    def fraction(self) -> float:
        return min(1.0, self.elapsed / self.budget) if self.budget > 0 else 1.0


def cosine_lr(base: float, step: int, warmup: int, max_steps: int | None, clock: Clock) -> float:
    """Linear warm-up, then cosine decay to a tenth over the step or time budget."""
    frac = step / max_steps if max_steps else clock.fraction
    return base * min(1.0, (step + 1) / warmup) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def stage_over(max_steps: int | None, step: int, clock: Clock) -> bool:
    """A stage ends at ``max_steps`` when given, else when its time budget is spent."""
    return step >= max_steps if max_steps is not None else clock.elapsed >= clock.budget


def load_state(path: Path) -> dict[str, Any]:
    """A stage's checkpoint, or a fresh state (step 0, nothing elapsed, not done)."""
    if path.exists():
        state: dict[str, Any] = torch.load(path, weights_only=False)
        return state
    return {"step": 0, "elapsed": 0.0, "done": False}


class Stage:
    """One resumable training stage: subclasses define :meth:`train_step` and
    :meth:`checkpoint`; :meth:`run` loops until the step or time budget is spent, with a
    progress bar, a checkpoint every ``checkpoint_minutes`` and one on Ctrl-C."""

    def __init__(
        self,
        name: str,
        work: Path,
        max_steps: int | None,
        clock: Clock,
        checkpoint_minutes: float,
        step: int = 0,
    ) -> None:
        self.name, self.work, self.max_steps, self.clock = name, work, max_steps, clock
        self.checkpoint_minutes, self.step = checkpoint_minutes, step

    def train_step(self) -> dict[str, str] | None:
        """One update; advances ``self.step``; may return a progress-bar postfix."""
        raise NotImplementedError

    def checkpoint(self, done: bool) -> None:
        """Save everything the stage needs to resume (``done``: the stage is finished)."""
        raise NotImplementedError

    def run(self) -> None:
        """Train until the budget is spent; an interruption checkpoints, then re-raises."""
        steps = self.max_steps
        total, unit = (steps, "step") if steps else (round(self.clock.budget), "s")
        bar = tqdm(total=total, initial=self.step if steps else 0, desc=self.name, unit=unit)
        last = time.monotonic()
        try:
            while not stage_over(steps, self.step, self.clock):
                postfix = self.train_step()
                if postfix:
                    bar.set_postfix(postfix)
                bar.update(1 if steps else round(self.clock.elapsed) - bar.n)
                if time.monotonic() - last > self.checkpoint_minutes * 60:
                    self.checkpoint(done=False)
                    last = time.monotonic()
        except KeyboardInterrupt:
            self.checkpoint(done=False)  # an interrupted run resumes from here
            raise
        bar.close()
        self.checkpoint(done=True)
