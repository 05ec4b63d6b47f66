"""Interpolation between two images through their DDIM-inverted noises: spherical
interpolation (slerp, Shoemake 1985; as in Song et al. 2021, §5.3) keeps the noise's norm,
which a straight line would shrink towards the origin, off the shell where x_T lives. For
conditional models the label embeddings are mixed along the same path, linearly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import torch
from torch import Tensor, nn

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.editing.inversion import invert, reconstruct
from ddpm_lightning.editing.sampling import (
    EditableModel,
    EditCallback,
    denoiser_and_sampler,
)
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import Range, checked


def slerp(a: Tensor, b: Tensor, weights: Tensor) -> Tensor:
    """sin((1−w)θ)/sin θ · a + sin(wθ)/sin θ · b per weight w, θ the angle between the
    flattened a and b: (C, H, W) each → (len(weights), C, H, W); linear where θ ≈ 0."""
    flat_a, flat_b = a.flatten().double(), b.flatten().double()
    cosine = torch.dot(flat_a, flat_b) / (flat_a.norm() * flat_b.norm())
    theta = torch.arccos(cosine.clamp(-1, 1))
    w = weights.double().reshape(-1, *[1] * a.dim())
    if theta.abs() < 1e-6:
        mixed = (1 - w) * a.double() + w * b.double()
    else:
        mixed = torch.sin((1 - w) * theta) * a.double() + torch.sin(w * theta) * b.double()
        mixed = mixed / torch.sin(theta)
    return mixed.to(a.dtype)


@contextmanager
def mixed_labels(network: object, a: int, b: int, weights: Tensor) -> Iterator[None]:
    """While the block runs, the network's label embedding gives (1 − w)·e(a) + w·e(b) for
    every row of a conditional batch (its null-label rows, guidance's unconditional half, stay
    as they are); rows follow `weights` in order."""
    embedding = getattr(network, "label_embedding", None)
    null = getattr(network, "num_classes", None)
    if not isinstance(embedding, nn.Embedding) or null is None:
        raise ConfigError("interpolating labels needs a conditional UNet (model=unet_cond)")

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        conditional = inputs[0] != null
        w = weights.to(output.device, output.dtype)[:, None]
        ends = embedding.weight[[a, b]]
        output = output.clone()
        output[conditional] = (1 - w) * ends[0] + w * ends[1]
        return output

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
@checked("edit")
def interpolate(
    model: EditableModel | Denoiser,
    image_a: Tensor,
    image_b: Tensor,
    sampler: Sampler | None = None,
    labels: tuple[int, int] | None = None,
    callback: EditCallback | None = None,
    # Images of the path from a to b, both ends included.
    frames: Annotated[int, Range(ge=2)] = 16,
) -> Tensor:
    """The images (frames, C, H, W) in [-1, 1] along the slerp from image_a's inverted noise to
    image_b's ((C, H, W) each, in [-1, 1]), decoded with deterministic DDIM (the model's
    default: 50 steps, η = 0); `labels` (class of a, class of b) for conditional models."""
    denoiser, sampler = denoiser_and_sampler(model, sampler, eta=0.0)
    ends = torch.stack([image_a, image_b])
    y = None if labels is None else torch.tensor(labels, device=ends.device)
    noises = invert(denoiser, ends, sampler, labels=y)
    weights = torch.linspace(0, 1, int(frames), device=ends.device)
    path = slerp(noises[0], noises[1], weights)
    if y is None or labels is None:
        return reconstruct(denoiser, path, sampler, callback=callback)
    with mixed_labels(denoiser.network, labels[0], labels[1], weights):
        return reconstruct(denoiser, path, sampler, y[:1].expand(int(frames)), callback)
