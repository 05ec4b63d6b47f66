"""SDEdit (Meng et al. 2022): noise the input part of the way, x_t = √ᾱ_t x + √(1−ᾱ_t) ε at
the visited timestep t nearest strength·T, and denoise from there with the sampler's updates
below it; the model keeps the input's layout and redraws its details, so a rough sketch on a
black canvas becomes an image of the data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import torch
from torch import Tensor

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.editing.sampling import (
    Draws,
    EditableModel,
    EditCallback,
    alpha_bar,
    denoiser_and_sampler,
    num_timesteps,
    predicted,
    require_sampler,
    updated,
    visited,
)
from ddpm_lightning.settings import Range, checked


def start_index(steps: list[int], num_timesteps: int, strength: float) -> int | None:
    """The index of the visited timestep nearest strength·T (None for strength 0: no noise,
    nothing to do); strength 1 starts at the first, T−1."""
    if strength == 0:
        return None
    target = strength * num_timesteps
    return min(range(len(steps)), key=lambda i: (abs(steps[i] + 1 - target), i))


@torch.no_grad()
@checked("edit")
def sdedit(
    model: EditableModel | Denoiser,
    image: Tensor,
    sampler: Sampler | None = None,
    seed: int = 0,
    labels: Tensor | None = None,
    indices: Iterable[int] | None = None,
    callback: EditCallback | None = None,
    # Share of the diffusion to go back: 0 returns the input, 1 samples afresh.
    strength: Annotated[float, Range(ge=0, le=1)] = 0.5,
) -> Tensor:
    """Redraw image: (N, C, H, W) in [-1, 1] from its noised version at strength·T → (N, C, H,
    W) in [-1, 1].

    Sample i draws `SampleNoise(seed, i)` as plain sampling does: ε of the noised input from its
    x_T draw and step j's noise from draw j, so strength 1 (which starts from ε itself, the
    samplers' x_T) gives the images `sampler.sample` draws with the same seed.
    """
    denoiser, sampler = denoiser_and_sampler(model, sampler)
    require_sampler(sampler, "sdedit")
    steps = visited(sampler)
    first = start_index(steps, num_timesteps(sampler), float(strength))
    if first is None:
        return image.clone()
    order = range(image.shape[0]) if indices is None else indices
    draws = Draws(seed, order, tuple(image.shape[1:]), len(steps), image.device)
    eps = draws.initial().to(image.dtype)
    a = alpha_bar(sampler, steps[first]).to(image.dtype)
    x = eps if first == 0 else a.sqrt() * image + (1 - a).sqrt() * eps
    y = None if labels is None else labels.to(image.device)
    for i in range(first, len(steps)):
        x0, e = predicted(denoiser, x, steps[i], y)
        if callback is not None:
            callback(i - first, steps[i], x, x0)
        x = updated(sampler, i, x, x0, e, draws.at_step(i))
    return x.clamp(-1, 1)
