"""A time-budgeted run (`+trainer.max_time`) whose cosine learning-rate decay ends at the time
limit, on any machine, instead of being cut off mid-decay by a plan counted in epochs."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info

from ddpm_lightning.errors import ConfigError

if TYPE_CHECKING:
    from ddpm_lightning.training.module import DiffusionModule


def fitted_steps(
    step: int, seconds_per_step: float, seconds_left: float, epoch_plan: float
) -> float:
    """The run's total optimizer steps: those done plus those that fit the time left at the pace
    so far, never more than the epoch plan (infinite without an epoch limit)."""
    return min(epoch_plan, step + math.floor(max(seconds_left, 0.0) / seconds_per_step))


def plan_message(pace: float, steps: float, in_time: float, every_n_steps: int) -> str:
    """The first plan, in one line: the pace and the steps the decay is planned over; when the
    epoch plan ends the run before the time limit, that, and how to train for all of it."""
    if steps < in_time:
        return (
            f"trainer.max_time: {pace:.3f} s per step; trainer.max_epochs ends the run after "
            f"{steps:,.0f} steps, {timedelta(seconds=round((in_time - steps) * pace))} (h:mm:ss) "
            "before the time limit: the learning-rate decay is planned over them "
            "(trainer.max_epochs=-1 trains until the time limit)"
        )
    return (
        f"trainer.max_time: {pace:.3f} s per step, the learning-rate decay is planned over "
        f"{steps:,.0f} steps and re-planned every {every_n_steps}"
    )


def budget_timer(trainer: L.Trainer) -> Timer | None:
    """The Timer Lightning adds for `trainer.max_time`, or None when the run has no time limit."""
    callbacks: list[L.Callback] = getattr(trainer, "callbacks", [])
    return next(
        (c for c in callbacks if isinstance(c, Timer) and c.time_remaining() is not None), None
    )


class TimeBudget(L.Callback):
    """Re-plans the module's `planned_steps` (over which its cosine decays to 0) to the steps
    that fit `trainer.max_time` at this run's pace, every `every_n_steps` optimizer steps.

    The pace is the wall time per step, validation included, since the end of the first
    `every_n_steps` (which carry one-off costs: compiling, starting data workers). A resumed run
    re-plans at once with the pace it saved. Rank 0's plan is broadcast, so every process keeps
    the same learning rate. Does nothing without `trainer.max_time`.
    """

    def __init__(self, every_n_steps: int = 50):
        if every_n_steps < 1:
            raise ConfigError(
                f"callbacks.time_budget.every_n_steps={every_n_steps} must be at least 1"
            )
        self.every_n_steps = every_n_steps
        self.pace: float | None = None
        self.start: tuple[int, float] | None = None
        self.last_step = -1
        self.announced = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        timer = budget_timer(trainer)
        self.start = None
        if timer is not None and self.pace is not None:
            self.plan(trainer, pl_module, timer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any
    ) -> None:
        timer = budget_timer(trainer)
        step = trainer.global_step
        if timer is None or step == 0 or step % self.every_n_steps or step == self.last_step:
            return
        self.last_step = step
        if self.start is None:
            self.start = (step, timer.time_elapsed())
            return
        start_step, start_time = self.start
        self.pace = (timer.time_elapsed() - start_time) / (step - start_step)
        steps = self.plan(trainer, pl_module, timer)
        pl_module.log("train/planned_steps", float(steps), on_step=True, on_epoch=False)

    def plan(self, trainer: L.Trainer, pl_module: L.LightningModule, timer: Timer) -> float:
        """Sets and returns the module's `planned_steps` for the time `timer` has left at
        `self.pace`."""
        seconds_left = timer.time_remaining()
        assert self.pace is not None, "planned once a pace is measured or restored"
        assert seconds_left is not None, "budget_timer returns only a timer with a limit"
        module = cast("DiffusionModule", pl_module)
        epoch_plan = trainer.estimated_stepping_batches
        steps = trainer.strategy.broadcast(
            fitted_steps(trainer.global_step, self.pace, seconds_left, epoch_plan)
        )
        if not self.announced:
            self.announced = True
            in_time = fitted_steps(trainer.global_step, self.pace, seconds_left, math.inf)
            rank_zero_info(plan_message(self.pace, steps, in_time, self.every_n_steps))
        module.planned_steps = steps
        return steps

    def state_dict(self) -> dict[str, Any]:
        return {"pace": self.pace}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.pace = state_dict.get("pace")
