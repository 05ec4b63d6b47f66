"""Fréchet LeNet Distance (Lior Sinai's MNIST post, eq. 4.7) with the LeNet-5 weights
shipped in `assets/`.

FLD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between Gaussian fits of the 84-wide LeNet
features of two image sets, in float64, computed by torchmetrics' `FrechetInceptionDistance`
with the LeNet as its feature extractor (so it adds up over the processes of a DDP run).
Shipping the weights makes every user's FLD comparable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ddpm_lightning.errors import DataError
from ddpm_lightning.models.lenet import LeNet5

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def asset_paths(dataset: str, directory: Path | None = None) -> dict[str, Path]:
    """Weights, test-set feature statistics and the JSON record of the LeNet for `dataset`, in
    `directory` (default: the package's assets)."""
    directory = directory or ASSETS_DIR
    return {
        "weights": directory / f"lenet_{dataset}.pt",
        "stats": directory / f"lenet_{dataset}_test_stats.pt",
        "record": directory / f"lenet_{dataset}.json",
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """A DataError unless the shipped file `path` exists and its SHA-256 is `expected`."""
    if not path.is_file() or sha256(path) != expected:
        raise DataError(
            f"{path} is missing or its SHA-256 does not match {expected}; reinstall the package"
        )


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    features = features.double()
    return features.mean(0), torch.cov(features.T)


def load_record(dataset: str) -> dict:
    paths = asset_paths(dataset)
    if not paths["record"].is_file():
        raise DataError(
            f"no LeNet weights for data={dataset} in {ASSETS_DIR}; "
            f"train them with: python -m ddpm_lightning.classifier data={dataset}"
        )
    return json.loads(paths["record"].read_text())


def load_lenet(dataset: str, device: torch.device | str = "cpu") -> LeNet5:
    """The shipped LeNet-5 for `dataset`, its SHA-256 checked, in eval mode."""
    record, path = load_record(dataset), asset_paths(dataset)["weights"]
    check_sha256(path, record["sha256"])
    model = LeNet5()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().to(device)


def lenet_identity(dataset: str) -> str:
    """Which LeNet scores FLD for `dataset`: the first 12 hex characters of its SHA-256, and
    `shipped` only when that is the released LeNet (`released_sha256` of its JSON record, kept
    when `classifier replace_shipped=true` replaces the weights), else `retrained`."""
    record, path = load_record(dataset), asset_paths(dataset)["weights"]
    digest = sha256(path)
    released = record.get("released_sha256", record["sha256"])
    return f"{digest[:12]} ({'shipped' if digest == released else 'retrained'})"


def load_test_statistics(dataset: str) -> dict[str, Tensor]:
    """The test set's feature `mean` (84,) and `cov` (84, 84), `label_counts` (10,) and
    `class_means` (10, 1, 32, 32), as exported with the shipped LeNet."""
    record, path = load_record(dataset), asset_paths(dataset)["stats"]
    check_sha256(path, record["stats_sha256"])
    return torch.load(path, map_location="cpu", weights_only=True)


def to_model_input(images: Tensor | np.ndarray) -> Tensor:
    """uint8 images in [0, 255] or floats in [-1, 1], (N, 1, 32, 32) or (N, 32, 32) → float."""
    images = torch.as_tensor(images)
    if images.dim() == 3:
        images = images[:, None]
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1
    return images.float()


@torch.no_grad()
def lenet_features(
    model: LeNet5, images: Tensor | np.ndarray, batch_size: int = 1000, progress: bool = False
) -> Tensor:
    """(N, 84) float64 features of images (see `to_model_input`), computed in batches."""
    device = next(model.parameters()).device
    images = to_model_input(images)
    starts: Iterable[int] = range(0, images.shape[0], batch_size)
    if progress:
        starts = track(starts, description="LeNet features", transient=True)
    return torch.cat(
        [model.features(images[i : i + batch_size].to(device)).double().cpu() for i in starts]
    )


class LeNetFeatures(nn.Module):
    """torchmetrics' feature extractor for FLD: images (B, 1, 32, 32), uint8 or in [-1, 1]
    (see `to_model_input`) → the LeNet's (B, 84) features in float64."""

    num_features = 84

    def __init__(self, lenet: LeNet5):
        super().__init__()
        self.lenet = lenet

    def forward(self, images: Tensor) -> Tensor:
        device = next(self.lenet.parameters()).device
        return self.lenet.features(to_model_input(images).to(device)).double()


def fld_metric(lenet: LeNet5, reference: dict[str, Tensor] | None) -> FrechetInceptionDistance:
    """torchmetrics' Fréchet distance over LeNet features, whose real-image state holds the
    `reference` statistics (`mean`, `cov`, `num_images`), e.g. the shipped test set's.

    The state is sums (n, Σx = nμ, Σxxᵀ = (n−1)Σ + nμμᵀ) that torchmetrics adds up over the
    processes of a distributed run, so exactly one process (the first) holds the reference;
    the others pass None. Updates add generated images.
    """
    metric = FrechetInceptionDistance(
        feature=LeNetFeatures(lenet), reset_real_features=False, normalize=True
    )
    if reference is not None:
        n = int(reference["num_images"])
        mean = reference["mean"].double()
        metric.real_features_num_samples = torch.tensor(n)
        metric.real_features_sum = n * mean
        metric.real_features_cov_sum = (n - 1) * reference["cov"].double() + n * torch.outer(
            mean, mean
        )
    return metric


def add_images(
    metric: FrechetInceptionDistance,
    images: Tensor | np.ndarray,
    real: bool = False,
    batch_size: int = 1000,
) -> None:
    """Add images (N, 1, 32, 32), uint8 or in [-1, 1], to `metric`, `batch_size` at a time."""
    images = to_model_input(images)
    for start in range(0, images.shape[0], batch_size):
        metric.update(images[start : start + batch_size], real=real)


class FLD:
    """FLD of image sets against the test set of `dataset`, with the shipped LeNet, computed by
    torchmetrics (`fld_metric`).

    Under DDP every process adds its own images (`update`) and `compute` gathers the sums of
    all of them; only the process with `holds_test_set` (the first) holds the test set's.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        device: torch.device | str = "cpu",
        holds_test_set: bool = True,
    ):
        self.dataset = dataset
        self.model = load_lenet(dataset, device)
        self.lenet = lenet_identity(dataset)
        self.test_stats = load_test_statistics(dataset)
        self.metric = fld_metric(self.model, self.test_stats if holds_test_set else None)
        self.metric.to(device)

    def to(self, device: torch.device | str) -> FLD:
        self.metric.to(device)
        return self

    def features(self, images: Tensor | np.ndarray, progress: bool = False) -> Tensor:
        return lenet_features(self.model, images, progress=progress)

    def update(self, images: Tensor | np.ndarray) -> None:
        """Add generated images (N, 1, 32, 32), uint8 or in [-1, 1]."""
        add_images(self.metric, images)

    def compute(self) -> float:
        """FLD of the images added since the last `compute` (over all processes; N ≥ 2)."""
        value = float(self.metric.compute())
        self.metric.reset()
        return value

    def __call__(self, images: Tensor | np.ndarray) -> float:
        """FLD of `images` (N ≥ 2) against the test set."""
        self.update(images)
        return self.compute()
