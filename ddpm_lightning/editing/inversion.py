"""DDIM inversion (Song et al. 2021, eq. 13 run from x₀ to x_T; Dhariwal & Nichol 2021,
App. F): deterministic DDIM (η = 0) is a discretised ODE, so stepping it upwards,
x_t = √ᾱ_t x̂₀(x_s, s) + √(1−ᾱ_t) ε̂(x_s, s) from each visited timestep s to the next higher t,
maps an image to a noise x_T that the same sampler maps back to (nearly) the image."""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.editing.sampling import (
    EditableModel,
    EditCallback,
    alpha_bar,
    denoiser_and_sampler,
    predicted,
    require_sampler,
    updated,
    visited,
)


@torch.no_grad()
def invert(
    model: EditableModel | Denoiser,
    image: Tensor,
    sampler: Sampler | None = None,
    labels: Tensor | None = None,
    callback: EditCallback | None = None,
) -> Tensor:
    """x_T: (N, C, H, W) of image: (N, C, H, W) in [-1, 1] under deterministic DDIM (the
    model's default: 50 steps, η = 0). The first step predicts at the lowest visited timestep
    from the clean image itself (there is no x at t = −1 to predict from)."""
    denoiser, sampler = denoiser_and_sampler(model, sampler, eta=0.0)
    require_sampler(sampler, "invert", deterministic=True)
    ascending = visited(sampler)[::-1]
    y = None if labels is None else labels.to(image.device)
    x = image
    for k, t in enumerate(ascending):
        s = ascending[k - 1] if k > 0 else t
        x0, eps = predicted(denoiser, x, s, y)
        if callback is not None:
            callback(k, s, x, x0)
        a = alpha_bar(sampler, t).to(x.dtype)
        x = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return x


@torch.no_grad()
def reconstruct(
    model: EditableModel | Denoiser,
    noise: Tensor,
    sampler: Sampler | None = None,
    labels: Tensor | None = None,
    callback: EditCallback | None = None,
) -> Tensor:
    """Deterministic DDIM from x_T = noise: (N, C, H, W) → images (N, C, H, W) in [-1, 1]."""
    denoiser, sampler = denoiser_and_sampler(model, sampler, eta=0.0)
    require_sampler(sampler, "invert", deterministic=True)
    y = None if labels is None else labels.to(noise.device)
    x = noise
    for i, t in enumerate(visited(sampler)):
        x0, eps = predicted(denoiser, x, t, y)
        if callback is not None:
            callback(i, t, x, x0)
        x = updated(sampler, i, x, x0, eps, torch.zeros_like(x))
    return x.clamp(-1, 1)


def psnr(images: Tensor, reference: Tensor) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB, of images in [-1, 1] (peak-to-peak 2):
    10 log₁₀(4 / MSE); (N,)."""
    mse = (images.double() - reference.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4 / mse.clamp(min=1e-20))
