"""A time-budgeted run (`+trainer.max_time`) whose cosine learning-rate decay ends at the time
limit, on any machine, instead of being cut off mid-decay by a plan counted in epochs."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info

from ddpm_lightning.errors import ConfigError


def fitted_steps(step: int, seconds_per_step: float, seconds_left: float, epoch_plan: int) -> int:
    """The run's total optimizer steps: those done plus those that fit the time left at the pace
    so far, never more than the epoch plan."""
    return min(epoch_plan, step + math.floor(max(seconds_left, 0.0) / seconds_per_step))


def budget_timer(trainer: L.Trainer) -> Timer | None:
    """The Timer Lightning adds for `trainer.max_time`, or None when the run has no time limit."""
    return next(
        (c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining() is not None),
        None,
    )


class TimeBudget(L.Callback):
    """Every `every_n_steps` optimizer steps, re-plans the module's `planned_steps` (over which
    its cosine decays to 0) to the steps that fit `trainer.max_time` at this run's pace so far,
    validation included. Rank 0's plan is broadcast, so every process keeps the same learning
    rate. Does nothing without `trainer.max_time`."""

    def __init__(self, every_n_steps: int = 50):
        if every_n_steps < 1:
            raise ConfigError(
                f"callbacks.time_budget.every_n_steps={every_n_steps} must be at least 1"
            )
        self.every_n_steps = every_n_steps
        self.planned_steps: int | None = None
        self.start: tuple[int, float] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        timer = budget_timer(trainer)
        self.start = None if timer is None else (trainer.global_step, timer.time_elapsed())
        if timer is not None and self.planned_steps is not None:
            pl_module.planned_steps = min(self.planned_steps, pl_module.planned_steps)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        timer = budget_timer(trainer)
        if timer is None or self.start is None:
            return
        step, (start_step, start_time) = trainer.global_step, self.start
        if step - start_step < self.every_n_steps or step % self.every_n_steps:
            return
        pace = (timer.time_elapsed() - start_time) / (step - start_step)
        plan = fitted_steps(
            step, pace, timer.time_remaining(), int(trainer.estimated_stepping_batches)
        )
        plan = int(trainer.strategy.broadcast(plan))
        if self.planned_steps is None:
            rank_zero_info(
                f"trainer.max_time: {pace:.3f} s per step so far, the learning-rate decay is "
                f"planned over {plan:,} steps and re-planned every {self.every_n_steps}"
            )
        self.planned_steps = pl_module.planned_steps = plan
        pl_module.log("train/planned_steps", float(plan), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"planned_steps": self.planned_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_steps = state_dict.get("planned_steps")
