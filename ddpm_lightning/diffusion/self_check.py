"""A conditional model as its own classifier (Li et al. 2023, "Your Diffusion Model is Secretly
a Zero-Shot Classifier"): a sample whose requested label does not denoise it clearly better
than every other label is one the model itself puts in another class, and is drawn again."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import torch
from rich.progress import track
from torch import Tensor, nn

from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.noise import sample_seed
from ddpm_lightning.settings import Range, checked


@checked("self_check")
def self_check_settings(
    # Rounds of drawing again the conditional samples the model itself puts in another class
    # (0: no check; unconditional models are never checked).
    rounds: Annotated[int, Range(ge=0)],
    # Noise levels of the check: t at the midpoints of this many equal parts of [0, T), one
    # noise draw each; the check costs num_levels × classes network calls per sample.
    num_levels: Annotated[int, Range(ge=1)],
    # How much lower the requested label's x̂₀ error must be than every other label's, as a
    # share of it: a sample passes when each other label's error ≥ (1 + margin) × its own.
    margin: Annotated[float, Range(ge=0)],
) -> dict[str, Any]:
    """The settings, checked against their declarations."""
    return {"rounds": int(rounds), "num_levels": int(num_levels), "margin": float(margin)}


def check_timesteps(num_timesteps: int, num_levels: int) -> Tensor:
    """(num_levels,) timesteps at the midpoints of num_levels equal parts of [0, T)."""
    edges = torch.arange(num_levels, dtype=torch.float64) + 0.5
    return (edges * num_timesteps / num_levels).long()


def check_seed(seed: int, index: int) -> int:
    """The 64-bit seed of the check's noise for sample `index` of a run seeded `seed`: stream 1
    of `sample_seed`, apart from the sample's own noise."""
    return sample_seed(seed, index, 1)


def noised(
    diffusion: GaussianDiffusion,
    images: Tensor,
    timesteps: Tensor,
    seeds: list[int],
    rows: range,
) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, x₀, t) of `rows` of the N × levels pairs (image i at timesteps[j] is row
    i × levels + j), each image's noise drawn from its seed alone."""
    levels, shape = len(timesteps), images.shape[1:]
    first, last = rows.start // levels, (rows.stop - 1) // levels + 1
    noise = torch.cat(
        [
            torch.randn((levels, *shape), generator=torch.Generator().manual_seed(seed))
            for seed in seeds[first:last]
        ]
    )
    local = slice(rows.start - first * levels, rows.stop - first * levels)
    x0 = images[first:last].repeat_interleave(levels, 0)[local]
    t = timesteps.repeat(last - first)[local]
    return diffusion.q_sample(x0, t, noise[local]), x0, t


def label_errors(
    network: nn.Module,
    diffusion: GaussianDiffusion,
    images: Tensor,
    num_classes: int,
    timesteps: Tensor,
    seeds: list[int],
    batch_size: int = 250,
    progress: bool = False,
) -> Tensor:
    """(N, classes) mean squared error of the network's clipped x̂₀ of images (N, C, H, W) under
    each label, averaged over `timesteps`; image i's noise comes from seeds[i] alone and is the
    same for every label, so the labels are compared on the same x_t. About `batch_size`
    network inputs per call."""
    device = next(network.parameters()).device
    n, levels = images.shape[0], len(timesteps)
    errors = torch.empty(n * levels, num_classes)
    per_call = max(1, batch_size // num_classes)
    starts: Iterable[int] = range(0, n * levels, per_call)
    if progress:
        starts = track(starts, description="self-check", transient=True)
    with torch.no_grad():
        for first in starts:
            rows = range(first, min(first + per_call, n * levels))
            x_t, x0, t = noised(diffusion, images, timesteps, seeds, rows)
            inputs = x_t.repeat_interleave(num_classes, 0).to(device)
            steps = t.repeat_interleave(num_classes, 0).to(device)
            labels = torch.arange(num_classes, device=device).repeat(len(rows))
            predicted, _ = diffusion.predict_x0_eps(inputs, steps, network(inputs, steps, labels))
            target = x0.repeat_interleave(num_classes, 0).to(device)
            error = (predicted.clamp(-1, 1) - target).pow(2).flatten(1).mean(1)
            errors[first : rows.stop] = error.view(len(rows), num_classes).cpu()
    return errors.view(n, levels, num_classes).mean(1)


def off_own_class(errors: Tensor, labels: Tensor, margin: float) -> Tensor:
    """(N,) True where some other label's error (N, classes) is below (1 + margin) × the
    requested label's (labels: (N,)): the samples the model does not clearly put in their class."""
    own = errors.gather(1, labels.view(-1, 1))
    others = errors.scatter(1, labels.view(-1, 1), float("inf"))
    return others.min(1).values < (1 + margin) * own.squeeze(1)
