"""Negative log-likelihood bound of a diffusion model in bits per dimension.

The variational bound of Ho et al. 2020, eq. 5, on 8-bit images scaled to [-1, 1]:

    L = L_T + Σ_{t>1} L_{t−1} + L_0,
    L_T     = KL(q(x_T | x_0) ‖ N(0, I)),
    L_{t−1} = KL(q(x_{t−1} | x_t, x_0) ‖ p(x_{t−1} | x_t)),
    L_0     = −log p(x_0 | x_1), the discretised Gaussian decoder of §3.3 (bins of width 2/255,
              the outer bins reaching ±∞),

with p(x_{t−1} | x_t) = N(μ̃_t(x_t, x̂_0), σ_t²): the posterior mean at the network's x̂_0 and a
fixed variance, β̃_t (`fixed_small`, DDPMSampler's default) or β_t (`fixed_large`), the decoder's
being β̃ of the second step in both (Nichol & Dhariwal 2021's clipped log-variance). In
bits/dim: nats / (D · ln 2). Timesteps are 0-based: the term at index t ≥ 1 is the KL between
the posteriors of x_{t−1}, the one at index 0 the decoder.

The exact bound costs T network calls per image; `bits_per_dim` also gives the unbiased
Monte-Carlo estimate L_T + T · E_{t ~ U{0..T−1}}[L_t] from a few timesteps per image.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from torch import Tensor

from ddpm_lightning.diffusion.flow import FLOW
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion, Network
from ddpm_lightning.diffusion.schedules import NoiseSchedule, extract
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import Range, Seed, checked

# Half the width of one of the 256 intensity bins of 8-bit data scaled to [-1, 1].
HALF_BIN = 1 / 255
ReverseVariance = Literal["fixed_small", "fixed_large"]


def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) ‖ N(mean2, var2)) per element, in nats (shapes broadcast)."""
    return 0.5 * (var2.log() - var1.log() + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, variance: Tensor) -> Tensor:
    """log P(bin of x) per element, in nats, under N(mean, variance) integrated over the 8-bit
    bin of x ∈ [-1, 1] (width 2/255; the bins of −1 and 1 reach −∞ and +∞; Ho et al. 2020,
    eq. 13). x, mean, variance: broadcastable, float64 recommended."""
    std = variance.sqrt()
    upper = (x - mean + HALF_BIN) / std
    lower = (x - mean - HALF_BIN) / std
    inner = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-300).log()
    log_below_upper = torch.special.log_ndtr(upper)
    log_above_lower = torch.special.log_ndtr(-lower)
    return torch.where(
        x < -1 + HALF_BIN, log_below_upper, torch.where(x > 1 - HALF_BIN, log_above_lower, inner)
    )


def prior_kl(schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T: KL(q(x_T | x_0) ‖ N(0, I)) of each image, x0 (B, …) → (B,) nats."""
    alpha_bar = schedule.alphas_cumprod[-1].double()
    mean = alpha_bar.sqrt() * x0.double()
    kl = normal_kl(mean, 1 - alpha_bar, torch.zeros_like(mean), torch.ones_like(mean))
    return kl.flatten(1).sum(1)


def reverse_variance(schedule: NoiseSchedule, t: Tensor, variance: ReverseVariance) -> Tensor:
    """σ_t² of p(x_{t−1} | x_t) at timesteps t (B,), float64: β̃_t or β_t, and β̃ of index 1
    at index 0 (the decoder)."""
    clipped = schedule.posterior_log_variance_clipped.double().exp()
    if variance == "fixed_small":
        return clipped[t]
    return torch.where(t == 0, clipped[t], schedule.betas.double()[t])


def timestep_terms(
    denoiser: Network,
    diffusion: GaussianDiffusion,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    y: Tensor | None = None,
    variance: ReverseVariance = "fixed_small",
    clip_x0: bool = True,
) -> Tensor:
    """The bound's term at timestep t of each image, (B,) nats: L_{t−1} (the KL of eq. 5) for
    t ≥ 1 and L_0 (the decoder's negative log-likelihood) for t = 0, at
    x_t = q_sample(x0, t, noise). x0, noise: (B, …) with x0 on the 8-bit grid; t: (B,)."""
    s = diffusion.schedule
    x_t = diffusion.q_sample(x0, t, noise)
    with torch.no_grad():
        output = denoiser(x_t, t, y)
    x0_hat, _ = diffusion.predict_x0_eps(x_t.double(), t, output.double())
    if clip_x0:
        x0_hat = x0_hat.clamp(-1, 1)
    coef1 = extract(s.posterior_mean_coef1.double(), t, x0.shape)
    coef2 = extract(s.posterior_mean_coef2.double(), t, x0.shape)
    x0, x_t = x0.double(), x_t.double()
    model_mean = coef1 * x0_hat + coef2 * x_t
    model_var = reverse_variance(s, t, variance).reshape(coef1.shape)
    true_mean = coef1 * x0 + coef2 * x_t
    true_var = extract(s.posterior_variance.double(), t, x0.shape)
    kl = normal_kl(true_mean, true_var.clamp(min=1e-300), model_mean, model_var)
    decoder = -discretized_gaussian_log_likelihood(x0, model_mean, model_var)
    is_decoder = (t == 0).reshape(coef1.shape)
    return torch.where(is_decoder, decoder, kl).flatten(1).sum(1)


@checked("likelihood")
def bits_per_dim(
    denoiser: Network,
    schedule: NoiseSchedule,
    objective: str,
    images: Tensor,
    labels: Tensor | None = None,
    # Timesteps drawn per image for the Monte-Carlo estimate; null: all T (the exact sum).
    num_timesteps_sampled: Annotated[int, Range(ge=1)] | None = 8,
    # Seed of the timesteps and the noise.
    seed: Seed = 0,
    # Network inputs per call.
    batch_size: Annotated[int, Range(ge=1)] = 256,
    # σ_t² of the reverse steps, as DDPMSampler's `variance`.
    variance: ReverseVariance = "fixed_small",
    # Clip x̂_0 to [-1, 1], as the samplers do.
    clip_x0: bool = True,
) -> dict:
    """The bound L of Ho et al. 2020, eq. 5, in bits/dim, averaged over images (N, C, H, W) of
    8-bit data in [-1, 1] (labels (N,) for conditional models), with `denoiser(x_t, t, y)`
    predicting `objective` over `schedule`.

    Each image's L is L_T plus T/K times the sum of its terms at K timesteps drawn uniformly
    (with replacement), an unbiased estimate; or, with `num_timesteps_sampled=None`, the sum of
    all T terms. Returns {"bpd", "stderr" (of the mean over images, which includes the
    variance of the timesteps and noise drawn), "n", "timesteps_per_image", "exact"}.
    """
    if objective == FLOW:
        raise ConfigError(
            "metric=bpd bounds the likelihood of the ᾱ path, and diffusion.objective=flow "
            "trains another: score it with metric=fld"
        )
    n, T = images.shape[0], schedule.num_timesteps
    diffusion = GaussianDiffusion(schedule, objective).to(images.device)
    generator = torch.Generator().manual_seed(seed)
    if num_timesteps_sampled is None:
        k, timesteps = T, torch.arange(T).repeat(n)
    else:
        k = int(num_timesteps_sampled)
        timesteps = torch.randint(0, T, (n * k,), generator=generator)
    owners = torch.arange(n).repeat_interleave(k)
    terms = torch.empty(n * k, dtype=torch.float64)
    for chunk in torch.arange(n * k).split(batch_size):
        x0 = images[owners[chunk].to(images.device)]
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        y = None if labels is None else labels[owners[chunk].to(labels.device)]
        t = timesteps[chunk].to(images.device)
        terms[chunk] = timestep_terms(denoiser, diffusion, x0, t, noise, y, variance, clip_x0).cpu()
    nats = prior_kl(schedule, images).cpu() + terms.view(n, k).sum(1) * (T / k)
    bits = nats / (images[0].numel() * math.log(2))
    stderr = float(bits.std() / math.sqrt(n)) if n > 1 else math.nan
    return {
        "bpd": float(bits.mean()),
        "stderr": stderr,
        "n": n,
        "timesteps_per_image": k,
        "exact": num_timesteps_sampled is None,
    }
