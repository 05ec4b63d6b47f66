"""Memorisation check: how many generated images sit closer to a training image than real
unseen images do.

For each sample, the nearest training image is found in three spaces: pixels, the shipped
LeNet's 84 features, and pixels up to a shift: the least pixel distance over translations of
the sample by up to `max_shift` px, each moved image against its `candidates` nearest training
images in 4×4-pooled pixels (so a copy moved by a pixel or two, far from its source in pixels
and often in LeNet space, is found at distance 0). In each space the threshold is the
`quantile` of the same distance from the test images to the training set, so fresh samples
from the data distribution fall under it at about that rate, and copies always. A sample is
flagged when it falls under the threshold of any space.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ddpm_lightning.evaluation.fld import lenet_features
from ddpm_lightning.evaluation.pictures import grid, labelled, to_pil
from ddpm_lightning.models.lenet import LeNet5
from ddpm_lightning.settings import Range, checked

SPACES = ("pixel", "lenet", "pixel_shifted")
# How many sample/training pairs the picture shows.
PICTURE_PAIRS = 16


def nearest_neighbours(
    queries: Tensor, references: Tensor, k: int = 1, chunk_size: int = 2048
) -> tuple[Tensor, Tensor]:
    """Euclidean distances (N, k), float64, and indices (N, k) of the k nearest rows of
    references (M, D) to each row of queries (N, D), nearest first.

    torch.cdist runs on blocks of `chunk_size` × 4·`chunk_size` rows in float32 (memory
    bounded by the blocks, not N × M); the distances to the chosen neighbours are then
    recomputed in float64, so an exact copy is at distance 0.
    """
    best_d, best_i = [], []
    for q in queries.split(chunk_size):
        q32 = q.float()
        found_d = torch.full((q.shape[0], 0), 0.0)
        found_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
        for start in range(0, references.shape[0], 4 * chunk_size):
            block = references[start : start + 4 * chunk_size].float()
            d, i = torch.cdist(q32, block).topk(min(k, block.shape[0]), largest=False)
            d, i = torch.cat([found_d, d], 1), torch.cat([found_i, i + start], 1)
            found_d, order = d.topk(min(k, d.shape[1]), largest=False)
            found_i = i.gather(1, order)
        exact = (q.double()[:, None] - references[found_i].double()).norm(dim=-1)
        exact, order = exact.sort(dim=1)
        best_d.append(exact)
        best_i.append(found_i.gather(1, order))
    return torch.cat(best_d), torch.cat(best_i)


def shifted(images: Tensor, dy: int, dx: int, fill: float = -1.0) -> Tensor:
    """images (N, C, H, W) moved dy px down and dx px right, the uncovered border `fill`."""
    h, w = images.shape[-2:]
    pad = max(abs(dy), abs(dx))
    padded = F.pad(images, (pad,) * 4, value=fill)
    top, left = pad - dy, pad - dx
    return padded[..., top : top + h, left : left + w]


def coarse(images: Tensor, factor: int = 4) -> Tensor:
    """images (N, C, H, W) average-pooled `factor`×`factor`, flattened: (N, C·H·W/factor²),
    where candidates for the shift-tolerant distance are sought."""
    return F.avg_pool2d(images.float(), factor).flatten(1)


def shift_tolerant_distance(
    images: Tensor,
    train_images: Tensor,
    train_coarse: Tensor,
    max_shift: int,
    candidates: int,
    chunk_size: int = 2048,
) -> tuple[Tensor, Tensor]:
    """The least pixel distance (N,), float64, from images (N, C, H, W) moved by up to
    `max_shift` px in each direction to the training images, and the index (N,) of the one
    that attains it. For each move, the distance is taken to the `candidates` training images
    nearest the moved image in `coarse` space (train_coarse: the training images'); a copy
    moved back onto its source is at coarse distance 0, so it is always found."""
    moves = [
        (dy, dx)
        for dy in range(-max_shift, max_shift + 1)
        for dx in range(-max_shift, max_shift + 1)
    ]
    distances, indices = [], []
    for rows in torch.arange(images.shape[0]).split(chunk_size):
        best = torch.full((len(rows),), float("inf"), dtype=torch.float64)
        best_i = torch.zeros(len(rows), dtype=torch.long)
        for dy, dx in moves:
            moved = shifted(images[rows], dy, dx)
            _, near = nearest_neighbours(coarse(moved), train_coarse, k=candidates)
            d = moved.flatten(1)[:, None].double() - train_images[near].flatten(2).double()
            d, j = d.norm(dim=-1).min(1)
            closer = d < best
            best, best_i = (
                torch.where(closer, d, best),
                torch.where(closer, near.gather(1, j[:, None])[:, 0], best_i),
            )
        distances.append(best)
        indices.append(best_i)
    return torch.cat(distances), torch.cat(indices)


def distances_to_training_set(
    images: Tensor,
    features: Tensor,
    train_images: Tensor,
    train_features: Tensor,
    train_coarse: Tensor,
    max_shift: int,
    candidates: int,
) -> dict[str, tuple[Tensor, Tensor]]:
    """{space: (distance (N,), index (N,) of the nearest training image)} for the spaces of
    `SPACES`; images (N, C, H, W) with their LeNet features (N, 84); the training images'
    `coarse` version."""
    pixel_d, pixel_i = nearest_neighbours(images.flatten(1), train_images.flatten(1))
    lenet_d, lenet_i = nearest_neighbours(features, train_features)
    return {
        "pixel": (pixel_d[:, 0], pixel_i[:, 0]),
        "lenet": (lenet_d[:, 0], lenet_i[:, 0]),
        "pixel_shifted": shift_tolerant_distance(
            images, train_images, train_coarse, max_shift, candidates
        ),
    }


def save_pairs(path: Path, samples: Tensor, neighbours: Tensor, scale: int = 3) -> None:
    """A PNG: samples (K, C, H, W) in a square grid on the left, their nearest training images
    in the same places on the right, both in [-1, 1]."""
    nrow = max(1, round(samples.shape[0] ** 0.5))
    panels = torch.cat([grid(samples, nrow), grid(neighbours, nrow)], dim=2)
    picture: Image.Image = labelled(to_pil(panels, scale), ["samples", "nearest training image"])
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)


@checked("memorisation")
def memorisation(
    samples: Tensor,
    train_images: Tensor,
    test_images: Tensor,
    lenet: LeNet5,
    picture: Path | None = None,
    # Share of test images whose distance to the training set falls under the threshold.
    quantile: Annotated[float, Range(gt=0, lt=1)] = 0.01,
    # Largest translation (px, each direction) of the shift-tolerant pixel distance.
    max_shift: Annotated[int, Range(ge=0)] = 2,
    # Training images (nearest in 4×4-pooled pixels) the shift-tolerant distance tries per move.
    candidates: Annotated[int, Range(ge=1)] = 3,
) -> dict:
    """The memorisation check of samples (N, C, H, W) against train_images (M, C, H, W), with
    thresholds from test_images (L, C, H, W), all in [-1, 1]; writes `picture` (PNG) of the
    16 samples nearest a training image (distance over threshold, least over the spaces).

    Returns {"n", "quantile", "share" (flagged in any space), "threshold": {space: t},
    space: {"share", "threshold", "median_distance", "median_test_distance"} per space,
    "exact_copies" (pixel distance 0) and "flagged" (the flagged samples' indices, nearest
    first)}.
    """
    train = (train_images, lenet_features(lenet, train_images), coarse(train_images))
    found = {
        name: distances_to_training_set(
            images, lenet_features(lenet, images), *train, max_shift, candidates
        )
        for name, images in (("samples", samples), ("test", test_images))
    }
    result: dict = {"n": samples.shape[0], "quantile": quantile, "threshold": {}}
    ratios = []
    for space in SPACES:
        test_d, (sample_d, _) = found["test"][space][0], found["samples"][space]
        threshold = float(torch.quantile(test_d, quantile))
        ratios.append(sample_d / threshold if threshold > 0 else sample_d * float("inf"))
        result["threshold"][space] = threshold
        result[space] = {
            "share": float((sample_d < threshold).double().mean()),
            "threshold": threshold,
            "median_distance": float(sample_d.median()),
            "median_test_distance": float(test_d.median()),
        }
    closeness, space_index = torch.stack(ratios, 1).min(1)
    result["share"] = float((closeness < 1).double().mean())
    result["flagged"] = closeness.argsort()[: int((closeness < 1).sum())].tolist()
    result["exact_copies"] = int((found["samples"]["pixel"][0] == 0).sum())
    if picture is not None:
        order = closeness.argsort()[:PICTURE_PAIRS]
        indices = torch.stack([found["samples"][space][1] for space in SPACES], 1)
        nearest = indices[order, space_index[order]]
        save_pairs(picture, samples[order], train_images[nearest])
    return result
