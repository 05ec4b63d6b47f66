"""The samples of a conditional model that the LeNet puts in another class than the one they
were drawn for: the requested × predicted counts, and off_class.png, a grid of those samples
captioned `requested->predicted`, to see which classes a model mixes up."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ddpm_lightning.evaluation.pictures import grid, labelled, to_pil

# Samples in off_class.png, and per row.
OFF_CLASS_IMAGES = 64
PER_ROW = 8


def confusion(predicted: Tensor, labels: Tensor, num_classes: int) -> list[list[int]]:
    """(num_classes, num_classes) counts of predicted (N,) against labels (N,): row the
    requested class, column the LeNet's."""
    pairs = torch.bincount(labels * num_classes + predicted, minlength=num_classes**2)
    return pairs.view(num_classes, num_classes).tolist()


def off_class(predicted: Tensor, labels: Tensor) -> list[list[int]]:
    """[sample index, requested, predicted] of each sample the LeNet puts in another class, in
    sample order."""
    return [
        [int(i), int(labels[i]), int(predicted[i])]
        for i in (predicted != labels).nonzero().flatten()
    ]


def off_class_picture(images: Tensor, found: list[list[int]], path: Path) -> Path:
    """off_class.png: images (N, C, H, W) in [-1, 1] of the first OFF_CLASS_IMAGES of `found`
    (`off_class`, not empty) by requested class, PER_ROW a row, each under its
    `requested->predicted`."""
    shown = sorted(found, key=lambda row: (row[1], row[0]))[:OFF_CLASS_IMAGES]
    scale = max(1, 64 // images.shape[-1])
    rows = []
    for start in range(0, len(shown), PER_ROW):
        chunk = shown[start : start + PER_ROW]
        tiles = to_pil(grid(images[[i for i, _, _ in chunk]], nrow=PER_ROW), scale)
        rows.append(labelled(tiles, [f"{wanted}->{got}" for _, wanted, got in chunk]))
    picture = Image.new("RGB", (rows[0].width, sum(row.height for row in rows)), "white")
    top = 0
    for row in rows:
        picture.paste(row, (0, top))
        top += row.height
    picture.save(path)
    return path
