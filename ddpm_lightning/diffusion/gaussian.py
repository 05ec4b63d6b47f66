"""The Gaussian diffusion process and its training loss, independent of Lightning.

Objectives follow lucidrains' vocabulary: predict the noise ε (Ho et al. 2020), the clean
image x₀, the velocity v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (Salimans & Ho 2022), or, on the straight
path x_s = (1 − s) x₀ + s ε instead of the ᾱ path, the flow velocity ε − x₀ (rectified flow,
Liu et al. 2023; `flow.py`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_lightning.diffusion.coupling import NOISE_COUPLINGS, assign_noise
from ddpm_lightning.diffusion.flow import (
    flow_sample,
    flow_target,
    flow_times,
    flow_timesteps,
    x0_eps_from_velocity,
)
from ddpm_lightning.diffusion.schedules import NoiseSchedule, extract
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import OneOf, Range, checked

# The raw network: model(x_t: (B, …), t: (B,), y: (B,) or None) → its objective's prediction.
Network = Callable[[Tensor, Tensor, Tensor | None], Tensor]


class Objective(str, enum.Enum):
    EPS = "eps"
    X0 = "x0"
    V = "v"
    FLOW = "flow"


class LossType(str, enum.Enum):
    L2 = "l2"
    L1 = "l1"
    HUBER = "huber"


class Weighting(str, enum.Enum):
    NONE = "none"
    MIN_SNR = "min_snr"
    EDM = "edm"


class NoiseLevels(str, enum.Enum):
    UNIFORM = "uniform"
    LOGNORMAL = "lognormal"


def log_sigma_edges(schedule: NoiseSchedule) -> Tensor:
    """(T−1,) midpoints between consecutive log σ_t, float64: the bin edges that map a noise
    level to its nearest timestep in log σ."""
    log_sigma = schedule.sigmas().log()
    return (log_sigma[1:] + log_sigma[:-1]) / 2


def values(enum_type: type[enum.Enum]) -> tuple[str, ...]:
    """The values of a string enum, the choices a setting of it allows."""
    return tuple(member.value for member in enum_type)


def parse_choice(enum_type: type[enum.Enum], value: str, key: str) -> enum.Enum:
    """`enum_type(value)`, or a ConfigError naming `key` and the allowed values."""
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(member.value for member in enum_type)
        raise ConfigError(f"{key}={value!r} is unknown; choose one of: {allowed}") from None


class GaussianDiffusion(nn.Module):
    """Forward process q(x_t | x_0) over a `NoiseSchedule`, and the denoising loss."""

    log_sigma_edges: Tensor

    @checked("diffusion")
    def __init__(
        self,
        schedule: NoiseSchedule,
        objective: Annotated[str, OneOf(values(Objective))] = "eps",
        loss: Annotated[str, OneOf(values(LossType))] = "l2",
        weighting: Annotated[str, OneOf(values(Weighting))] = "none",
        min_snr_gamma: Annotated[float, Range(gt=0)] = 5.0,
        # σ_data of `weighting=edm`: the data's standard deviation as EDM's weighting assumes it.
        sigma_data: Annotated[float, Range(gt=0)] = 0.5,
        noise_levels: Annotated[str, OneOf(values(NoiseLevels))] = "uniform",
        p_mean: float = -1.2,
        p_std: Annotated[float, Range(gt=0)] = 1.2,
        # Which drawn noise goes with which image: none (as drawn) | immiscible (the batch's
        # assignment of least total squared distance, Li et al. 2024).
        noise_coupling: Annotated[str, OneOf(NOISE_COUPLINGS)] = "none",
    ):
        super().__init__()
        self.schedule = schedule
        self.objective = Objective(objective)
        self.loss_type = LossType(loss)
        self.weighting = Weighting(weighting)
        self.min_snr_gamma = float(min_snr_gamma)
        self.sigma_data = float(sigma_data)
        self.noise_levels = NoiseLevels(noise_levels)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.noise_coupling = noise_coupling
        self.register_buffer("log_sigma_edges", log_sigma_edges(schedule), persistent=False)

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (Ho et al. eq. 4), or x_s = (1 − s_t) x₀ + s_t ε for
        `objective=flow`. x0, noise: (B, …); t: (B,)."""
        if self.objective is Objective.FLOW:
            return flow_sample(x0, flow_times(t, self.num_timesteps, x0.shape), noise)
        s = self.schedule
        return (
            extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(s.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise
        )

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network should output for this objective."""
        if self.objective is Objective.EPS:
            return noise
        if self.objective is Objective.X0:
            return x0
        if self.objective is Objective.FLOW:
            return flow_target(x0, noise)
        s = self.schedule
        return (
            extract(s.sqrt_alphas_cumprod, t, x0.shape) * noise
            - extract(s.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0
        )

    def predict_x0_eps(self, x_t: Tensor, t: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, ε̂) from the network `output` at x_t, whatever the objective."""
        if self.objective is Objective.FLOW:
            return x0_eps_from_velocity(x_t, flow_times(t, self.num_timesteps, x_t.shape), output)
        s = self.schedule
        a = extract(s.sqrt_alphas_cumprod, t, x_t.shape)
        b = extract(s.sqrt_one_minus_alphas_cumprod, t, x_t.shape)
        if self.objective is Objective.EPS:
            return (x_t - b * output) / a, output
        if self.objective is Objective.X0:
            return output, (x_t - a * output) / b
        return a * x_t - b * output, b * x_t + a * output

    def sample_timesteps(self, batch_size: int, device: torch.device, generator=None) -> Tensor:
        """Training timesteps (B,) int64: t ~ U{0, …, T−1} (`noise_levels=uniform`), or the
        timestep nearest in log σ to ln σ ~ N(p_mean, p_std²) (`lognormal`, the noise levels of
        Karras et al. 2022, §5), which trains most where σ ≈ e^p_mean. For `objective=flow`,
        σ = s/(1 − s): lognormal is the logit-normal s of Esser et al. 2024 (`flow_timesteps`)."""
        if self.noise_levels is NoiseLevels.UNIFORM:
            return torch.randint(
                0, self.num_timesteps, (batch_size,), device=device, generator=generator
            )
        normal = torch.randn(batch_size, device=device, generator=generator, dtype=torch.float64)
        if self.objective is Objective.FLOW:
            return flow_timesteps(self.p_mean + self.p_std * normal, self.num_timesteps)
        edges = self.log_sigma_edges.to(device)
        return torch.bucketize(self.p_mean + self.p_std * normal, edges)

    def snr(self, t: Tensor) -> Tensor:
        """SNR_t = ᾱ_t / (1 − ᾱ_t) = 1/σ_t² (B,) float64, or ((1 − s)/s)² on the flow path."""
        if self.objective is Objective.FLOW:
            s = flow_times(t, self.num_timesteps)
            return ((1 - s) / s) ** 2
        alpha_bar = self.schedule.alphas_cumprod.double()[t]
        return alpha_bar / (1 - alpha_bar)

    def x0_error_scale(self, snr: Tensor) -> Tensor:
        """c_t (B,) with ‖prediction − target‖² = c_t ‖x̂₀ − x₀‖² for this objective: 1 for x₀,
        SNR for ε, SNR + 1 for v, 1/s² = (√SNR + 1)² for flow (û − u = (x₀ − x̂₀)/s)."""
        if self.objective is Objective.X0:
            return torch.ones_like(snr)
        if self.objective is Objective.EPS:
            return snr
        if self.objective is Objective.V:
            return snr + 1
        return (snr.sqrt() + 1) ** 2

    def loss_weights(self, t: Tensor) -> Tensor:
        """Per-sample loss weights w(t): (B,), ones unless `weighting` is min_snr or edm.

        Both weigh the error of x̂₀ by λ(SNR), whatever the objective: w = λ / c_t
        (`x0_error_scale`). Min-SNR-γ (Hang et al. 2023, eq. 9): λ = min(SNR, γ), so low-noise
        steps stop dominating. EDM (Karras et al. 2022, Table 1): λ = (σ² + σ_d²)/(σ σ_d)², here
        times σ_d² so that λ = 1 + σ_d² SNR → 1 at pure noise; for v with σ_d = 1 it is w = 1.
        """
        if self.weighting is Weighting.NONE:
            return torch.ones(t.shape, device=t.device)
        snr = self.snr(t)
        if self.weighting is Weighting.MIN_SNR:
            x0_weight = snr.clamp(max=self.min_snr_gamma)
        else:
            x0_weight = 1 + self.sigma_data**2 * snr
        return (x0_weight / self.x0_error_scale(snr)).float()

    def loss(self, prediction: Tensor, target: Tensor, weights: Tensor | None = None) -> Tensor:
        """l2 / l1 / Huber (δ = 1) error in float32, averaged over each sample's elements, then
        over the batch with per-sample `weights`: (B,) (plain mean when None)."""
        prediction, target = prediction.float(), target.float()
        if self.loss_type is LossType.L2:
            errors = F.mse_loss(prediction, target, reduction="none")
        elif self.loss_type is LossType.L1:
            errors = F.l1_loss(prediction, target, reduction="none")
        else:
            errors = F.huber_loss(prediction, target, delta=1.0, reduction="none")
        if weights is None:
            return errors.mean()
        return (errors.flatten(1).mean(1) * weights).mean()

    def training_loss(
        self,
        model: Network,
        x0: Tensor,
        y: Tensor | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Loss of `model(x_t, t, y)` against the objective's target; t and ε drawn if not given."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
            noise = assign_noise(x0, noise, self.noise_coupling)
        prediction = model(self.q_sample(x0, t, noise), t, y)
        weights = None if self.weighting is Weighting.NONE else self.loss_weights(t)
        return self.loss(prediction, self.target(x0, t, noise), weights)
