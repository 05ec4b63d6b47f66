"""The test set's LeNet features (M, 84) and labels (M,), the real side of KID, precision and
recall, density, coverage and the per-class FLDs.

The package ships them for each shipped LeNet as `assets/lenet_<dataset>_test_features.safetensors`
(float16 features, 1.7 MB, within 0.008 of the float64 ones; its metadata names the LeNet's
SHA-256), so evaluation needs no data; for another LeNet they are computed from the test set
in $DDPM_DATA_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ddpm_lightning.data.images import load_split, to_model_range
from ddpm_lightning.errors import DataError
from ddpm_lightning.evaluation.fld import ASSETS_DIR, lenet_features, sha256
from ddpm_lightning.models.lenet import LeNet5

# Black pixels added per side so that 28 px test images are the models' 32 px.
PAD = 2


def features_path(dataset: str, directory: Path | None = None) -> Path:
    """`assets/lenet_<dataset>_test_features.safetensors` (or in `directory`)."""
    return (directory or ASSETS_DIR) / f"lenet_{dataset}_test_features.safetensors"


def write_test_features(path: Path, features: Tensor, labels: Tensor, lenet_sha256: str) -> Path:
    """Save features (M, 84) as float16 and labels (M,) as uint8, naming the LeNet."""
    tensors = {"features": features.half().contiguous(), "labels": labels.to(torch.uint8)}
    save_file(tensors, str(path), metadata={"lenet_sha256": lenet_sha256})
    return path


def read_test_features(path: Path, lenet_sha256: str) -> tuple[Tensor, Tensor] | None:
    """(features (M, 84) float64, labels (M,) int64) of `path`, or None when it is missing or
    was computed with another LeNet."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as archive:
        if (archive.metadata() or {}).get("lenet_sha256") != lenet_sha256:
            return None
        features, labels = archive.get_tensor("features"), archive.get_tensor("labels")
    return features.double(), labels.long()


def computed_test_features(
    lenet: LeNet5, dataset: str, root: str | Path | None = None
) -> tuple[Tensor, Tensor]:
    """The LeNet's features (M, 84) float64 and labels (M,) of the test set in `root` (default
    $DDPM_DATA_DIR, else data/)."""
    root = root or os.environ.get("DDPM_DATA_DIR") or "data"
    try:
        images, labels = load_split(root, dataset, train=False)
    except Exception as exc:
        raise DataError(
            f"the {dataset} test set is needed for KID and precision/recall with this LeNet "
            f"and is not in {root} ({exc}); set DDPM_DATA_DIR to a folder holding it"
        ) from None
    return lenet_features(lenet, to_model_range(images, PAD)), labels


def test_features(
    lenet: LeNet5, dataset: str, weights: Path, directory: Path | None = None
) -> tuple[Tensor, Tensor]:
    """Features (M, 84) float64 and labels (M,) of the test set under the LeNet whose weights
    file is `weights`: the shipped file when it was made with them, else computed."""
    shipped = read_test_features(features_path(dataset, directory), sha256(weights))
    return shipped if shipped is not None else computed_test_features(lenet, dataset)
