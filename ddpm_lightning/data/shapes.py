"""Shapes, the colour counterpart of MNIST: circles, squares and triangles in four colours and
many sizes and places on black, drawn from a seed on the fly (nothing to download).

Label = shape × 4 + colour: 12 classes (`DATASETS["shapes"].class_names`, "red circle" …
"yellow triangle"), so a conditional model is asked for both what and which colour, and
guidance can be judged on each. Shapes are drawn with anti-aliased edges from their signed
distance d (pixels): coverage = clamp(½ − d, 0, 1), all images of a chunk at once.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import torch
from torch import Tensor

from ddpm_lightning.data.decoded import Channels, ImageSize, check_channels, check_image_size
from ddpm_lightning.data.images import BatchSize, InMemoryDataModule, TensorBatches
from ddpm_lightning.data.registry import COLOURS, DATASETS, SHAPES
from ddpm_lightning.settings import OneOf, Range, checked

# RGB in [0, 1] of each of COLOURS.
PALETTE = torch.tensor(
    [[0.92, 0.16, 0.14], [0.16, 0.76, 0.22], [0.20, 0.36, 0.96], [0.96, 0.84, 0.10]]
)
# Circumradius of a shape as a share of the image side.
RADIUS = (0.18, 0.40)
# Edge normals of an upward equilateral triangle (image rows grow downward); its edges lie
# at half the circumradius from the centre.
TRIANGLE_NORMALS = torch.tensor([[0.0, 1.0], [0.8660254, -0.5], [-0.8660254, -0.5]])
CHUNK = 4096
assert len(PALETTE) == len(COLOURS)


def signed_distance(kind: int, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Signed distance (N, S, S) from each pixel centre (offsets dx, dy from the shape's
    centre) to SHAPES[kind] of circumradius r (N, 1, 1): a circle, a square of half-side
    0.8·r, an upward equilateral triangle; negative inside."""
    if kind == 0:
        return torch.sqrt(dx**2 + dy**2) - r
    if kind == 1:
        return torch.maximum(dx.abs(), dy.abs()) - 0.8 * r
    (ax, ay), (bx, by), (cx, cy) = TRIANGLE_NORMALS.tolist()
    edges = torch.maximum(ax * dx + ay * dy, bx * dx + by * dy)
    return torch.maximum(edges, cx * dx + cy * dy) - 0.5 * r


def draw_shapes(labels: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """Images (N, 3, size, size) uint8 of labels (N,): a random radius and a centre that
    keeps the whole shape inside the image, anti-aliased on black."""
    n = len(labels)
    side = float(size)
    radius = side * (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * torch.rand(n, generator=generator))
    centre = radius.unsqueeze(1) + (side - 2 * radius).unsqueeze(1) * torch.rand(
        (n, 2), generator=generator
    )
    pixels = torch.arange(size, dtype=torch.float32) + 0.5
    dx = pixels.view(1, 1, -1) - centre[:, 0].view(-1, 1, 1)
    dy = pixels.view(1, -1, 1) - centre[:, 1].view(-1, 1, 1)
    shape = labels // len(COLOURS)
    distance = torch.empty(n, size, size)
    for kind in range(len(SHAPES)):
        chosen = shape == kind
        r = radius[chosen].view(-1, 1, 1)
        distance[chosen] = signed_distance(kind, dx[chosen], dy[chosen], r)
    coverage = (0.5 - distance).clamp_(0, 1).unsqueeze(1)
    colour = (PALETTE[labels % len(COLOURS)] * 255).view(n, 3, 1, 1)
    return (coverage * colour).round_().to(torch.uint8)


def make_shapes(num_images: int, size: int, seed: int, split: int) -> tuple[Tensor, Tensor]:
    """(images (N, 3, size, size) uint8, labels (N,) int64) of one split, the same for the
    same (seed, split), drawn in chunks of 4096."""
    (state,) = np.random.SeedSequence([seed, split]).generate_state(1, np.uint64)
    generator = torch.Generator().manual_seed(int(state))
    labels = torch.randint(len(SHAPES) * len(COLOURS), (num_images,), generator=generator)
    chunks = [draw_shapes(part, size, generator) for part in labels.split(CHUNK)]
    return torch.cat(chunks) if chunks else torch.empty(0, 3, size, size), labels


def to_greyscale(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) → (N, 1, H, W) by ITU-R BT.601 luma."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)


class ByteBatches(TensorBatches):
    """uint8 images (N, C, H, W) kept as bytes (a quarter of float32's memory) and scaled to
    [-1, 1] a batch at a time: `x: (B, C, H, W)` float32, `y: (B,)`."""

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index].float() / 127.5 - 1, self.labels[index]

    def subset(self, index: Tensor) -> ByteBatches:
        return ByteBatches(self.inputs[index], self.labels[index])

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        x, y = super().batch(indices)
        return x.float() / 127.5 - 1, y

    __getitems__ = batch

    def to(self, device: torch.device) -> ByteBatches:
        return ByteBatches(self.inputs.to(device), self.labels.to(device))


class ShapesDataModule(InMemoryDataModule):
    """Shapes: `x: (B, C, S, S)` in [-1, 1], `y: (B,)` in [0, 12); a test set of its own."""

    @checked("data")
    def __init__(
        self,
        # The dataset, a record of the dataset registry.
        name: Annotated[str, OneOf(DATASETS)] = "shapes",
        # Images drawn for training and validation.
        num_images: Annotated[int, Range(ge=2)] = 60_000,
        # Images drawn for the test set.
        num_test_images: Annotated[int, Range(ge=1)] = 10_000,
        # Colour channels: 3 (RGB) or 1 (greyscale).
        channels: Channels = 3,
        # Side of the square images in pixels, a multiple of 8.
        image_size: ImageSize = 32,
        batch_size: BatchSize = 64,
        **kwargs: Any,
    ):
        super().__init__(batch_size, **kwargs)
        self.name: str = name
        self.num_images, self.num_test_images = int(num_images), int(num_test_images)
        self.channels, self.image_size = check_channels(channels), check_image_size(image_size)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def load(self) -> tuple[ByteBatches, ByteBatches]:
        splits = []
        for split, n in enumerate((self.num_images, self.num_test_images)):
            images, labels = make_shapes(n, self.image_size, self.split_seed, split)
            if self.channels == 1:
                images = to_greyscale(images)
            splits.append(ByteBatches(images, labels))
        return splits[0], splits[1]
