"""Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`; Karras et al. 2022, and the
reverse SDE of Song et al. 2021) in our ᾱ-parameterisation."""

from __future__ import annotations

from typing import Annotated

from torch import Tensor

from ddpm_lightning.diffusion.samplers import NumSteps, Sampler, Spacing, Step, timestep_sequence
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.settings import Range, checked


class EulerAncestralSampler(Sampler):
    """An Euler step of the probability-flow ODE down to σ_down, then fresh noise up to σ_next.

    In x̃ = x_t/√ᾱ_t with σ_t = √((1−ᾱ_t)/ᾱ_t), dx̃/dσ = ε̂; from σ = σ_t to the next level σ_s:
    σ_up = min(σ_s, η √(σ_s² (σ_t² − σ_s²) / σ_t²)), σ_down = √(σ_s² − σ_up²) and
    x̃_s = x̃_t + (σ_down − σ_t) ε̂ + σ_up z = x̂₀ + σ_down ε̂ + σ_up z; x_s = √ᾱ_s x̃_s.
    η = 0 is DDIM η = 0; η = 1, the reverse SDE's variance, equals DDIM η = 1 (the same σ_up).
    """

    name = "euler_ancestral"

    @checked("sampler")
    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: NumSteps = 30,
        # η: the share of each step's noise drawn afresh; 0 is deterministic.
        eta: Annotated[float, Range(ge=0)] = 1.0,
        spacing: Spacing = "karras",
        **kwargs,
    ):
        super().__init__(schedule, **kwargs)
        self.timesteps = timestep_sequence(schedule, num_steps, spacing)
        self.eta = float(eta)

    def steps(self) -> list[int]:
        return self.timesteps

    def step(self, step: Step, x0: Tensor, eps: Tensor) -> Tensor:
        s = self.next_timestep(step.i)
        if s < 0:
            return x0
        sigma, sigma_next = self.sigmas[step.t], self.sigmas[s]
        sigma_up = (self.eta * sigma_next * (sigma**2 - sigma_next**2).sqrt() / sigma).clamp(
            max=sigma_next
        )
        sigma_down = (sigma_next**2 - sigma_up**2).sqrt()
        x_tilde = x0 + sigma_down.to(x0.dtype) * eps
        if self.eta > 0:
            x_tilde = x_tilde + sigma_up.to(x0.dtype) * step.noise.at_step(step.i).to(x0.dtype)
        return self.alpha_bar(s).sqrt() * x_tilde
