"""Noise schedules β_1..β_T and every quantity derived from them, computed once in float64."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import torch
from torch import Tensor, nn

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import NumTimesteps, OneOf, Range, checked

MAX_BETA = 0.999


def betas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """β_t = 1 − ᾱ_t / ᾱ_{t−1} from ᾱ at t = 0..T (T+1 values), clamped to [0, 0.999]."""
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(0, MAX_BETA)


@checked("schedule")
def linear_beta_schedule(
    num_timesteps: int,
    # β_1 at T=1000.
    beta_start: Annotated[float, Range(gt=0, lt=1)] = 1e-4,
    # β_T at T=1000.
    beta_end: Annotated[float, Range(gt=0, lt=1)] = 0.02,
) -> Tensor:
    """Ho et al. 2020: β linear from `beta_start` to `beta_end` for T=1000, scaled by 1000/T."""
    scale = 1000 / num_timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=torch.float64)
    return betas.clamp(max=MAX_BETA)


@checked("schedule")
def cosine_beta_schedule(
    num_timesteps: int,
    # Offset that keeps β_1 from vanishing.
    s: Annotated[float, Range(gt=0)] = 0.008,
    # Added to log SNR at every t: > 0 less noise, < 0 more (2 ln(64/d) for d-px images).
    log_snr_shift: float = 0.0,
) -> Tensor:
    """Nichol & Dhariwal 2021: ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2); shifted
    in log SNR = logit ᾱ_t by `log_snr_shift` (the shifted cosine of Hoogeboom et al. 2023,
    "simple diffusion")."""
    t = torch.linspace(0, num_timesteps, num_timesteps + 1, dtype=torch.float64)
    f = torch.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    if log_snr_shift:
        alphas_cumprod = torch.sigmoid(torch.logit(alphas_cumprod) + log_snr_shift)
    return betas_from_alphas_cumprod(alphas_cumprod)


@checked("schedule")
def sigmoid_beta_schedule(
    num_timesteps: int,
    # Sigmoid input at t = 0.
    start: float = -3.0,
    # Sigmoid input at t = T.
    end: float = 3.0,
    # Temperature: larger is flatter.
    tau: Annotated[float, Range(gt=0)] = 1.0,
) -> Tensor:
    """Jabri et al. 2022: ᾱ_t ∝ σ(end/τ) − σ(((t/T)(end − start) + start)/τ)."""
    t = torch.linspace(0, 1, num_timesteps + 1, dtype=torch.float64)
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    alphas_cumprod = v_end - torch.sigmoid((t * (end - start) + start) / tau)
    return betas_from_alphas_cumprod(alphas_cumprod)


BETA_SCHEDULES: dict[str, Callable[..., Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
    "sigmoid": sigmoid_beta_schedule,
}


def extract(values: Tensor, t: Tensor, shape: torch.Size) -> Tensor:
    """values[t] reshaped to broadcast against `shape`: values (T,), t (B,) → (B, 1, …, 1)."""
    return values.gather(0, t).reshape(t.shape[0], *([1] * (len(shape) - 1)))


def shaped(values: Tensor, like: Tensor) -> Tensor:
    """values (B,) reshaped to broadcast against `like` (B, …)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule(nn.Module):
    """β_t and the derived ᾱ_t, √ᾱ_t, √(1−ᾱ_t), posterior q(x_{t−1}|x_t, x_0) terms.

    Timesteps are 0-based: index t here is step t+1 of the papers. Buffers are float32,
    computed in float64 and not saved in checkpoints (they follow from the config).
    """

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    @checked("schedule")
    def __init__(
        self,
        # The β schedule: its options are those of its function (linear_beta_schedule, …).
        name: Annotated[str, OneOf(BETA_SCHEDULES)] = "cosine",
        # T: the number of noise levels.
        num_timesteps: NumTimesteps = 1000,
        **kwargs: float,
    ):
        super().__init__()
        self.name = name
        self.num_timesteps = int(num_timesteps)
        try:
            betas = BETA_SCHEDULES[name](self.num_timesteps, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"schedule={name} got an unknown option: {exc}") from exc
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        one_minus = 1 - alphas_cumprod
        posterior_variance = betas * (1 - alphas_cumprod_prev) / one_minus
        derived = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": one_minus.sqrt(),
            "posterior_variance": posterior_variance,
            # log β̃ with β̃_0 = 0 replaced by β̃_1 (improved-diffusion's clipping).
            "posterior_log_variance_clipped": torch.log(
                torch.cat([posterior_variance[1:2], posterior_variance[1:]])
            ),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / one_minus,
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / one_minus,
        }
        for key, value in derived.items():
            self.register_buffer(key, value.float(), persistent=False)

    def sigmas(self) -> Tensor:
        """σ_t = √((1−ᾱ_t)/ᾱ_t) (T,), float64 on the schedule's device: the noise level of
        x_t/√ᾱ_t, the variable of Karras et al. 2022 (EDM)."""
        a = self.alphas_cumprod.double()
        return ((1 - a) / a).sqrt()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_timesteps={self.num_timesteps}"
