"""An exponential moving average of the weights, through Lightning's weight-averaging callback.

Lightning swaps the average in for validation (so `val/loss`, the FLD and the sample grids see
it), saves it as the checkpoint's `state_dict` (so `sample` and `evaluate` use it) and keeps the
raw weights beside it for resuming.
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

from ddpm_lightning.errors import ConfigError


def warmup_decay(decay: float, num_averaged: int) -> float:
    """min(decay, (1 + n) / (10 + n)) after n updates: the average forgets the random
    initialisation in short runs and reaches `decay` after ~9 / (1 − decay) steps."""
    return min(decay, (1 + num_averaged) / (10 + num_averaged))


class EMA(WeightAveraging):
    """EMA of the parameters, updated after every `update_every_n_steps` optimizer steps.

    θ̄ ← d θ̄ + (1 − d) θ with d = `decay`, or `warmup_decay` when `warmup` is on. Buffers are
    not averaged: the model's are constants (noise schedule, position table).
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True, update_every_n_steps: int = 1):
        if not 0 < decay < 1:
            raise ConfigError(f"callbacks.ema.decay={decay} must lie in (0, 1)")
        if update_every_n_steps < 1:
            raise ConfigError(
                f"callbacks.ema.update_every_n_steps={update_every_n_steps} must be at least 1"
            )
        super().__init__(use_buffers=False, multi_avg_fn=self.update)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.update_every_n_steps = int(update_every_n_steps)

    def update(self, averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        """One in-place EMA step over all parameters at once."""
        n = int(num_averaged)
        decay = warmup_decay(self.decay, n) if self.warmup else self.decay
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0
