"""Inpainting by replacement (Song et al. 2021, "Score-based generative modeling", App. I;
Lugmayr et al. 2022, RePaint): after every update the known pixels are replaced by the known
image noised to the new timestep, x_s ← m ⊙ (√ᾱ_s x₀ + √(1−ᾱ_s) ε) + (1 − m) ⊙ x_s, and,
with RePaint's resampling, each stretch of `jump_length` updates is done `resample_jumps`
times, noising back up between the passes, x_t = √(ᾱ_t/ᾱ_s) x_s + √(1 − ᾱ_t/ᾱ_s) z, so the
filled pixels can come to agree with the known ones."""

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
    predicted,
    require_sampler,
    updated,
    visited,
)
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import Range, checked

# A move of the plan: ("down", i, i + 1) is the sampler's update from its i-th visited
# timestep to the next; ("up", i, j) noises from the j-th back up to the i-th.
Move = tuple[str, int, int]


def repaint_plan(num_steps: int, resample_jumps: int, jump_length: int) -> list[Move]:
    """The moves over `num_steps` visited timesteps: stretches of `jump_length` updates, each
    done `resample_jumps` times with a jump back up between passes (1: plain replacement)."""
    moves: list[Move] = []
    for start in range(0, num_steps, jump_length):
        end = min(start + jump_length, num_steps)
        for rep in range(resample_jumps):
            moves.extend(("down", i, i + 1) for i in range(start, end))
            if rep + 1 < resample_jumps:
                moves.append(("up", start, end))
    return moves


def updates_in(plan: list[Move]) -> int:
    """The sampler updates of a plan (network calls per image)."""
    return sum(move[0] == "down" for move in plan)


def draws_needed(plan: list[Move]) -> int:
    """Normal draws per sample after x_T: two per update (the step's z, the known pixels' ε),
    one per jump back."""
    return sum(2 if move[0] == "down" else 1 for move in plan)


def noised_known(sampler: Sampler, image: Tensor, t: int, eps: Tensor) -> Tensor:
    """q(x_t | x₀): √ᾱ_t x₀ + √(1−ᾱ_t) ε; the image itself at t = −1."""
    a = alpha_bar(sampler, t).to(image.dtype)
    return a.sqrt() * image + (1 - a).sqrt() * eps


def check_mask(image: Tensor, known: Tensor) -> Tensor:
    """`known` (H, W), (N, H, W) or like `image`, broadcast to image: (N, C, H, W)."""
    if tuple(known.shape[-2:]) != tuple(image.shape[-2:]):
        raise ConfigError(
            f"the mask is {known.shape[-1]}x{known.shape[-2]} but the images are "
            f"{image.shape[-1]}x{image.shape[-2]}; give a mask of the images' size"
        )
    if known.dim() == 3:
        known = known[:, None]
    return known.to(image.device, image.dtype).expand_as(image)


@torch.no_grad()
@checked("edit")
def inpaint(
    model: EditableModel | Denoiser,
    image: Tensor,
    known: Tensor,
    sampler: Sampler | None = None,
    seed: int = 0,
    labels: Tensor | None = None,
    indices: Iterable[int] | None = None,
    callback: EditCallback | None = None,
    # RePaint passes over each stretch of updates (Lugmayr et al. 2022); 1: replacement alone.
    resample_jumps: Annotated[int, Range(ge=1)] = 1,
    # Updates per RePaint stretch: how far each resampling jump goes back up.
    jump_length: Annotated[int, Range(ge=1)] = 10,
) -> Tensor:
    """Fill the pixels where `known` is 0 in image: (N, C, H, W) in [-1, 1], keeping those where
    it is 1 (`known`: (H, W), (N, H, W) or image's shape) → (N, C, H, W) in [-1, 1].

    model: a loaded model (its default sampler: DDIM, 50 steps, η = 1) or a `Denoiser` with a
    `sampler` (DDPM or DDIM). Sample i's noise is `SampleNoise(seed, i)`: x_T first, then the
    draws of `repaint_plan` in order (`draws_needed`).
    """
    denoiser, sampler = denoiser_and_sampler(model, sampler)
    require_sampler(sampler, "inpaint")
    known = check_mask(image, known)
    steps = visited(sampler)
    plan = repaint_plan(len(steps), resample_jumps, jump_length)
    order = range(image.shape[0]) if indices is None else indices
    draws = Draws(seed, order, tuple(image.shape[1:]), draws_needed(plan), image.device)
    x = draws.initial().to(image.dtype)
    y = None if labels is None else labels.to(image.device)
    updates = 0
    for kind, i, below in plan:
        if kind == "up":
            t = steps[i]
            s = steps[below] if below < len(steps) else -1
            ratio = alpha_bar(sampler, t) / alpha_bar(sampler, s)
            x = ratio.sqrt() * x + (1 - ratio).sqrt() * draws.next()
            continue
        x0, eps = predicted(denoiser, x, steps[i], y)
        if callback is not None:
            callback(updates, steps[i], x, x0)
        updates += 1
        x = updated(sampler, i, x, x0, eps, draws.next())
        s = steps[i + 1] if i + 1 < len(steps) else -1
        x = known * noised_known(sampler, image, s, draws.next()) + (1 - known) * x
    return x.clamp(-1, 1)
