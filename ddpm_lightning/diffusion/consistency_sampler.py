"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1) in our
ᾱ-parameterisation: one network call per step, fresh noise between steps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from torch import Tensor

from ddpm_lightning.diffusion.samplers import NumSteps, Sampler, Spacing, Step, timestep_sequence
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import Range, checked


class ConsistencySampler(Sampler):
    """x̂₀ = f_θ(x_t, t), the denoiser's x̂₀ of a consistency model, at each visited t; between
    steps, x_s = √ᾱ_s x̂₀ + √(1−ᾱ_s) z with fresh z (Algorithm 1's x̂ + √(τ² − ε²) z, in
    x_t = √ᾱ_t x̃ with ε = 0: the clean image is t = −1). The last step returns x̂₀.
    """

    name = "consistency"

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        # Network calls per sample: 1 maps noise to data in one call.
        num_steps: NumSteps = 1,
        spacing: Spacing = "trailing",
        # The visited timesteps, strictly decreasing from T−1; null: num_steps of spacing.
        timesteps: Annotated[Sequence[int], Range(ge=0)] | None = None,
        **kwargs,
    ):
        super().__init__(schedule, **kwargs)
        self.spacing = spacing
        if timesteps is None:
            self.timesteps = timestep_sequence(schedule, num_steps, spacing)
        else:
            self.timesteps = [int(t) for t in timesteps]
            last = schedule.num_timesteps - 1
            decreasing = all(
                a > b for a, b in zip(self.timesteps, self.timesteps[1:], strict=False)
            )
            if not self.timesteps or self.timesteps[0] != last or not decreasing:
                raise ConfigError(
                    f"sampler.timesteps={self.timesteps} must decrease strictly from {last} "
                    f"(T−1, where sampling starts from pure noise), e.g. [{last}, {last // 2}]"
                )

    def steps(self) -> list[int]:
        return self.timesteps

    def step(self, step: Step, x0: Tensor, eps: Tensor) -> Tensor:
        s = self.next_timestep(step.i)
        if s < 0:
            return x0
        a_s = self.alpha_bar(s).to(x0.dtype)
        return a_s.sqrt() * x0 + (1 - a_s).sqrt() * step.noise.at_step(step.i).to(x0.dtype)
