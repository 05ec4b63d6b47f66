"""An exponential moving average of the weights, through Lightning's weight-averaging callback.

Lightning swaps the average in for validation (so `val/loss`, the FLD and the sample grids see
it), saves it as the checkpoint's `state_dict` (so `sample` and `evaluate` use it) and keeps the
raw weights beside it for resuming.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from ddpm_lightning.settings import Range, checked


def warmup_decay(decay: float, num_averaged: int) -> float:
    """min(decay, (1 + n) / (10 + n)) after n updates: the average forgets the random
    initialisation in short runs and reaches `decay` after ~9 / (1 − decay) steps."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


# σ_rel of the power-function profile with γ = 0 (a plain running mean), the widest allowed.
MAX_SIGMA_REL = math.sqrt(1 / 12)


def power_gamma(sigma_rel: float) -> float:
    """The exponent γ ≥ 0 of the power-function EMA profile whose relative standard deviation
    is σ_rel (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
    Models", eq. 3): the largest real root of γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²)."""
    inverse_variance = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inverse_variance, 12.0 - inverse_variance])
    return float(roots.real[np.abs(roots.imag) < 1e-9].max())


def power_decay(gamma: float, num_averaged: int) -> float:
    """β = (1 − 1/t)^(γ+1) at the t-th average (t = n + 1 after n): the average weighs earlier
    weights ∝ τ^γ, a window that stays a fixed share of the run however long it gets
    (Karras et al. 2024, eq. 4)."""
    return (1.0 - 1.0 / (num_averaged + 1)) ** (gamma + 1.0)


class EMA(WeightAveraging):
    """EMA of the parameters, updated after every `update_every_n_steps` optimizer steps.

    θ̄ ← d θ̄ + (1 − d) θ with d = `decay`, or `warmup_decay` when `warmup` is on, or
    `power_decay` of the power-function profile of width `sigma_rel` when that is set (then
    `decay` and `warmup` are not used). Buffers are not averaged: the model's are constants
    (noise schedule, position table).
    """

    @checked("callbacks.ema")
    def __init__(
        self,
        decay: Annotated[float, Range(gt=0, lt=1)] = 0.9999,
        warmup: bool = True,
        update_every_n_steps: Annotated[int, Range(ge=1)] = 1,
        # Width of the power-function profile (e.g. 0.05 or 0.1); null: the fixed decay.
        sigma_rel: Annotated[float, Range(gt=0, le=MAX_SIGMA_REL)] | None = None,
    ):
        super().__init__(use_buffers=False, multi_avg_fn=self.update)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_every_n_steps = int(update_every_n_steps)
        self.gamma = None if sigma_rel is None else power_gamma(float(sigma_rel))

    def update(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        """One in-place EMA step over all parameters at once."""
        n = int(num_averaged)
        if self.gamma is not None:
            decay = power_decay(self.gamma, n)
        else:
            decay = warmup_decay(self.decay, n) if self.warmup else self.decay
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0
