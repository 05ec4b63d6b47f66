"""The rectified-flow path (Liu et al. 2023, eq. 1; Lipman et al. 2023, eq. 20 with σ_min = 0):
x_s = (1 − s) x₀ + s ε for s ∈ [0, 1], and its velocity u = dx_s/ds = ε − x₀, which
`diffusion.objective=flow` trains the network to predict.

Timestep t of T (0-based) is s_t = (t + 1)/T: t = T − 1 is pure noise (s = 1) and the last
sampler step, from s_0 = 1/T, lands on the clean image (s = 0). Only T is taken from the noise
schedule; its β's play no part. The noise level of x_s, as the ᾱ path's σ = √((1−ᾱ)/ᾱ), is
σ = s/(1 − s).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm_lightning.errors import ConfigError

FLOW = "flow"


def flow_times(t: Tensor, num_timesteps: int, shape: torch.Size | None = None) -> Tensor:
    """s_t = (t + 1)/T in float64 for timesteps t: (B,), reshaped to broadcast over `shape`
    (B, …) when given."""
    s = (t.double() + 1) / num_timesteps
    return s if shape is None else s.reshape(-1, *([1] * (len(shape) - 1)))


def flow_sample(x0: Tensor, s: Tensor, noise: Tensor) -> Tensor:
    """x_s = (1 − s) x₀ + s ε. x0, noise: (B, …); s broadcasts over them."""
    s = s.to(x0.dtype)
    return (1 - s) * x0 + s * noise


def flow_target(x0: Tensor, noise: Tensor) -> Tensor:
    """The velocity u = ε − x₀ the network regresses (Liu et al. 2023, eq. 1)."""
    return noise - x0


def x0_eps_from_velocity(x: Tensor, s: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor]:
    """(x̂₀, ε̂) = (x_s − s û, x_s + (1 − s) û): the x₀ and ε that x_s = (1 − s) x₀ + s ε and
    û = ε − x₀ give together. x, velocity: (B, …); s broadcasts over them."""
    s = s.to(x.dtype)
    return x - s * velocity, x + (1 - s) * velocity


def eps_from_x0(x: Tensor, s: float | Tensor, x0: Tensor) -> Tensor:
    """ε = (x_s − (1 − s) x₀)/s, the path solved for ε (s > 0, as every s_t is)."""
    return (x - (1 - s) * x0) / s


def flow_sigmas(num_timesteps: int) -> Tensor:
    """(T,) float64 noise levels σ_t = s_t/(1 − s_t) of the flow path; σ_{T−1} = ∞."""
    s = flow_times(torch.arange(num_timesteps), num_timesteps)
    return s / (1 - s)


def flow_timesteps(log_sigma: Tensor, num_timesteps: int) -> Tensor:
    """(B,) int64 timesteps for drawn noise levels ln σ: (B,): s = sigmoid(ln σ), so that
    ln σ ~ N(m, v²) is the logit-normal s of Esser et al. 2024 (§3.1), trained at the timestep
    t = ⌈s T⌉ − 1 whose s_t is the first at or above s."""
    s = torch.sigmoid(log_sigma.double())
    return (torch.ceil(s * num_timesteps) - 1).clamp(0, num_timesteps - 1).long()


def require_alpha_path(objective: str, who: str, instead: str) -> None:
    """A ConfigError when `who`, which follows the ᾱ path, meets a model of `objective` flow:
    its x_t lie on another path at other noise levels; `instead` says what to do."""
    if objective == FLOW:
        raise ConfigError(
            f"{who} follows the ᾱ path of diffusion.objective eps, x0 or v, but the model "
            f"predicts diffusion.objective=flow: {instead}"
        )


def check_pairing(sampler: str, flow_sampler: bool, objective: str) -> None:
    """A ConfigError unless a flow sampler meets a flow model, or an ᾱ-path sampler another:
    their x at a timestep lie on different paths, at different noise levels."""
    if flow_sampler and objective != FLOW:
        raise ConfigError(
            f"sampler={sampler} integrates the flow path but the model predicts "
            f"diffusion.objective={objective}: choose a sampler such as ddim or heun"
        )
    if not flow_sampler and objective == FLOW:
        raise ConfigError(
            f"sampler={sampler} follows the ᾱ path but the model predicts "
            "diffusion.objective=flow: choose sampler=flow_euler or sampler=flow_heun"
        )
