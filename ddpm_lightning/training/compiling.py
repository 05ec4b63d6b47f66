"""Compile the network for long runs only: `nn.Module.compile` costs a minute or two of
compiling on a CPU, which a short run (a quick start, a test) never earns back."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Annotated, cast

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from ddpm_lightning.settings import Range, checked
from ddpm_lightning.training.time_budget import budget_timer

if TYPE_CHECKING:
    from ddpm_lightning.training.module import DiffusionModule


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code would be built with ($CXX, else the usual
    names), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)


class CompileLongRuns(L.Callback):
    """At the start of a fit planned for at least `min_steps` optimizer steps (or, with
    `+trainer.max_time`, at least `min_minutes`), compiles the network in place, as
    `+model.compile=true` does; runs already compiled, shorter ones, and machines without a C++
    compiler for the CPU stay eager."""

    @checked("callbacks.compile")
    def __init__(
        self,
        # Fits planned for fewer optimizer steps than this stay eager.
        min_steps: Annotated[int, Range(ge=0)] = 5000,
        # Fits with a time limit (+trainer.max_time) shorter than this stay eager.
        min_minutes: Annotated[float, Range(ge=0)] = 10.0,
    ):
        self.min_steps = min_steps
        self.min_minutes = min_minutes

    def long_enough(self, trainer: L.Trainer) -> bool:
        """Whether the fit's plan (its time limit, else its steps) reaches the minimum."""
        timer = budget_timer(trainer)
        if timer is not None:
            return (timer.time_remaining() or 0.0) >= 60 * self.min_minutes
        return trainer.estimated_stepping_batches >= self.min_steps

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = cast("DiffusionModule", pl_module)
        if module.fast_paths["compile"] or not self.long_enough(trainer):
            return
        if module.device.type == "cpu" and cpp_compiler() is None:
            rank_zero_info("no C++ compiler found (g++, clang++ or $CXX): training runs eagerly")
            return
        module.compile_network()
        rank_zero_info("a long run: the network is compiled during its first steps")
