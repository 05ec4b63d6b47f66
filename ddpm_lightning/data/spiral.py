"""The 2-D spiral of DenoisingDiffusion.jl part 1: data, distance to the curve, and a plot.

Points (t cos t, t sin t) / 4.5π with t uniform in [1.5π, 4.5π], so the curve fits in [-1, 1]².
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ddpm_lightning.data.images import BatchSize, InMemoryDataModule, TensorBatches
from ddpm_lightning.settings import Range, checked

T_MIN, T_MAX = 1.5 * math.pi, 4.5 * math.pi


def spiral_points(t: Tensor) -> Tensor:
    """Curve parameters t: (N,) → points (N, 2) in [-1, 1]²."""
    return torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / T_MAX


def make_spiral(num_points: int, generator: torch.Generator, noise: float = 0.0) -> Tensor:
    """(num_points, 2) points on the spiral, t uniform, plus optional Gaussian jitter."""
    t = T_MIN + (T_MAX - T_MIN) * torch.rand(num_points, generator=generator, dtype=torch.float64)
    points = spiral_points(t)
    if noise > 0:
        points = points + noise * torch.randn(
            points.shape, generator=generator, dtype=torch.float64
        )
    return points.float()


def distance_to_spiral(points: Tensor, resolution: int = 20_000) -> Tensor:
    """Shortest distance from each of points (N, 2) to the curve (a dense polyline): (N,)."""
    curve = spiral_points(torch.linspace(T_MIN, T_MAX, resolution, dtype=torch.float64))
    return torch.cdist(points.double().cpu(), curve).min(dim=1).values.float()


def save_spiral_plot(points: Tensor, path: Path, size: int = 480) -> None:
    """Generated points (red) over the spiral (grey), as a PNG."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)

    def pixel(p: Tensor) -> tuple[float, float]:
        return ((p[0].item() + 1.1) / 2.2 * size, (1.1 - p[1].item()) / 2.2 * size)

    curve = spiral_points(torch.linspace(T_MIN, T_MAX, 2000, dtype=torch.float64))
    draw.line([pixel(p) for p in curve], fill=(150, 150, 150), width=3)
    for p in points.cpu():
        x, y = pixel(p)
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(220, 30, 30))
    image.save(path)


class SpiralDataModule(InMemoryDataModule):
    """Spiral points `x: (B, 2)` with dummy labels `y: (B,) = 0`; a fresh test set of its own."""

    @checked("data")
    def __init__(
        self,
        # Points drawn for training and validation.
        num_points: Annotated[int, Range(ge=2)] = 10_000,
        # Points drawn for the test set.
        num_test_points: Annotated[int, Range(ge=1)] = 2_000,
        # Standard deviation of the Gaussian jitter added to each point.
        noise: Annotated[float, Range(ge=0)] = 0.0,
        batch_size: BatchSize = 256,
        **kwargs: Any,
    ):
        super().__init__(batch_size, **kwargs)
        self.num_points, self.num_test_points = int(num_points), int(num_test_points)
        self.noise = float(noise)

    @property
    def data_shape(self) -> tuple[int]:
        return (2,)

    def load(self) -> tuple[TensorBatches, TensorBatches]:
        generator = torch.Generator().manual_seed(self.split_seed)
        splits = []
        for n in (self.num_points, self.num_test_points):
            points = make_spiral(n, generator, self.noise)
            splits.append(TensorBatches(points, torch.zeros(n, dtype=torch.long)))
        return splits[0], splits[1]
