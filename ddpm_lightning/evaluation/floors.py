"""Real-data floors: the FLD and KID that real training images score against the test set, at
several sample counts, so a model's figures can be read against what perfect samples would get.

Both metrics fall as the number of images n grows (FLD is biased upward at small n; KID is
unbiased but noisier), so a floor is kept per n, as `draws` independent draws of n training
images each, and written to `assets/floors_<dataset>.json`:
`{"dataset", "lenet", "draws", "n": {"1000": {"fld": [...], "kid": [...]}, ...}}`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import torch
from torch import Tensor

from ddpm_lightning.data.images import load_split, to_model_range
from ddpm_lightning.data.shapes import ShapesDataModule
from ddpm_lightning.evaluation.fld import (
    ASSETS_DIR,
    add_images,
    feature_statistics,
    fld_metric,
    lenet_features,
)
from ddpm_lightning.evaluation.kid import kid_of_features
from ddpm_lightning.models.lenet import LeNet5
from ddpm_lightning.settings import Range, Seed, checked

# The sample counts of the shipped floors.
FLOOR_SIZES = (1_000, 2_000, 5_000, 10_000)
# Black pixels added per side so that 28 px images are the models' 32 px.
PAD = 2


def floors_path(dataset: str, directory: Path | None = None) -> Path:
    """`assets/floors_<dataset>.json` (or in `directory`)."""
    return (directory or ASSETS_DIR) / f"floors_{dataset}.json"


def labelled_images(
    dataset: str, train: bool, root: str | Path | None = None
) -> tuple[Tensor, Tensor]:
    """A split of `dataset` as the models see it, (N, C, 32, 32) float32 in [-1, 1], and its
    labels (N,) int64, read from `root` (default: $DDPM_DATA_DIR, else data/); the shapes are
    drawn as `data=shapes` draws them by default (its 60,000 training and 10,000 test images)."""
    if dataset == "shapes":
        split = ShapesDataModule().load()[0 if train else 1]
        return split.inputs.float() / 127.5 - 1, split.labels
    root = root or os.environ.get("DDPM_DATA_DIR") or "data"
    images, labels = load_split(root, dataset, train)
    return to_model_range(images, PAD), labels


def real_images(dataset: str, train: bool, root: str | Path | None = None) -> Tensor:
    """The images of `labelled_images`: (N, 1, 32, 32) float32 in [-1, 1]."""
    return labelled_images(dataset, train, root)[0]


def test_reference(test_features: Tensor) -> dict[str, Tensor]:
    """The FLD reference statistics (`mean`, `cov`, `num_images`) of test features (N, 84)."""
    mean, cov = feature_statistics(test_features)
    return {"mean": mean, "cov": cov, "num_images": torch.tensor(test_features.shape[0])}


def fld_of(lenet: LeNet5, reference: dict[str, Tensor], images: Tensor) -> float:
    """FLD (fld.py's torchmetrics metric) of images (n, 1, 32, 32) against `reference`."""
    metric = fld_metric(lenet, reference)
    add_images(metric, images)
    return float(metric.compute())


@checked("floors")
def measure_floors(
    lenet: LeNet5,
    train_images: Tensor,
    test_images: Tensor,
    reference: dict[str, Tensor] | None = None,
    # The numbers of training images per draw.
    sizes: Sequence[int] = FLOOR_SIZES,
    # Independent draws of training images per size.
    draws: Annotated[int, Range(ge=2)] = 5,
    # Images per KID subset (capped at each size; eval's `metrics.kid_subset_size`).
    kid_subset_size: Annotated[int, Range(ge=2)] = 1000,
    # KID's random subsets of each side.
    kid_subsets: Annotated[int, Range(ge=1)] = 100,
    # Seed of the draws and of KID's subsets.
    seed: Seed = 0,
) -> dict[str, dict[str, list[float]]]:
    """{str(n): {"fld": [draws], "kid": [draws]}}: FLD and KID of `draws` random sets of n
    training images (N, 1, 32, 32) in [-1, 1], without replacement, against the test images
    (M, 1, 32, 32): FLD against `reference` (default: the test images' statistics) by fld.py's
    metric, KID against all test images by kid.py's."""
    test_features = lenet_features(lenet, test_images)
    train_features = lenet_features(lenet, train_images)
    reference = reference or test_reference(test_features)
    generator = torch.Generator().manual_seed(seed)
    floors = {}
    for n in sizes:
        values: dict[str, list[float]] = {"fld": [], "kid": []}
        for draw in range(draws):
            chosen = torch.randperm(train_images.shape[0], generator=generator)[:n]
            values["fld"].append(fld_of(lenet, reference, train_images[chosen]))
            kid = kid_of_features(
                train_features[chosen],
                test_features,
                kid_subset_size,
                kid_subsets,
                seed=seed * 1_000_003 + n + draw,
            )
            values["kid"].append(float(kid["kid"]))
        floors[str(n)] = values
    return floors


def write_floors(
    path: Path, dataset: str, lenet: str, draws: int, floors: dict[str, dict[str, list[float]]]
) -> Path:
    """Write the floors JSON of `dataset`, scored by the LeNet `lenet` (`lenet_identity`)."""
    record = {"dataset": dataset, "lenet": lenet, "draws": draws, "n": floors}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def floor_for(dataset: str, n: int, directory: Path | None = None) -> dict | None:
    """The floor at the recorded size nearest to n (in log n) for `dataset`:
    {"dataset", "lenet", "n", "draws", "fld_mean", "fld_sd", "kid_mean", "kid_sd"}, or None
    when no floors file is shipped for it."""
    path = floors_path(dataset, directory)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    nearest = min(record["n"], key=lambda size: abs(math.log(int(size) / max(n, 1))))
    values = record["n"][nearest]
    result = {"dataset": dataset, "lenet": record["lenet"], "n": int(nearest)}
    result["draws"] = len(values["fld"])
    for metric in ("fld", "kid"):
        result[f"{metric}_mean"], result[f"{metric}_sd"] = mean_sd(values[metric])
    return result
