"""Fréchet LeNet Distance (Lior Sinai's MNIST post, eq. 4.7) with the LeNet-5 weights
shipped in `assets/` (MNIST, Fashion-MNIST) or those the classifier command wrote for any other
labelled dataset, grey or colour (`classifier=FOLDER`).

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
from ddpm_lightning.models.lenet import INPUT_SHAPE, LeNet5

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


def record_path(dataset: str, classifier: str | Path | None = None) -> Path:
    """The JSON record of the LeNet that scores `dataset`: the package's, or the one in the
    folder `classifier` (a `classifier` run folder or `export_dir`), or the record file
    `classifier` itself."""
    if classifier is None:
        return asset_paths(dataset)["record"]
    path = Path(classifier)
    if path.is_dir():
        return asset_paths(dataset, path)["record"]
    return path


def load_record(dataset: str, classifier: str | Path | None = None) -> dict:
    """The LeNet's JSON record (weights and statistics file names, SHA-256s, input shape)."""
    path = record_path(dataset, classifier)
    if not path.is_file():
        where = ASSETS_DIR if classifier is None else f"classifier={classifier}"
        raise DataError(
            f"no LeNet weights for data={dataset} in {where}; train them with: "
            f"python -m ddpm_lightning.classifier data={dataset}, then pass "
            "classifier=<its run folder>"
        )
    return json.loads(path.read_text())


def record_files(dataset: str, classifier: str | Path | None = None) -> dict[str, Path]:
    """Weights and statistics files that the record of `record_path` names, beside it."""
    path = record_path(dataset, classifier)
    record = load_record(dataset, classifier)
    return {"weights": path.parent / record["weights"], "stats": path.parent / record["stats"]}


def classifier_input_shape(record: dict) -> tuple[int, int, int]:
    """(C, H, W) the LeNet of `record` takes; records of the shipped LeNets predate the key."""
    channels, height, width = record.get("input_shape", INPUT_SHAPE)
    return int(channels), int(height), int(width)


def load_lenet(
    dataset: str, device: torch.device | str = "cpu", classifier: str | Path | None = None
) -> LeNet5:
    """The LeNet-5 for `dataset` (the package's, or `classifier`'s), its SHA-256 checked, in
    eval mode."""
    record, path = load_record(dataset, classifier), record_files(dataset, classifier)["weights"]
    check_sha256(path, record["sha256"])
    channels, height, _ = classifier_input_shape(record)
    model = LeNet5(record.get("num_classes", 10), channels, height)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().to(device)


def lenet_identity(dataset: str, classifier: str | Path | None = None) -> str:
    """Which LeNet scores FLD for `dataset`: the first 12 hex characters of its SHA-256, and
    `shipped` only when that is the released LeNet (`released_sha256` of its JSON record, kept
    when `classifier replace_shipped=true` replaces the weights), else `retrained`."""
    record = load_record(dataset, classifier)
    digest = sha256(record_files(dataset, classifier)["weights"])
    released = record.get("released_sha256") or record["sha256"]
    shipped = classifier is None and digest == released
    return f"{digest[:12]} ({'shipped' if shipped else 'retrained'})"


def load_test_statistics(dataset: str, classifier: str | Path | None = None) -> dict[str, Tensor]:
    """The test set's feature `mean` (84,) and `cov` (84, 84), `label_counts` (K,) and
    `class_means` (K, C, H, W), as exported with the LeNet."""
    record = load_record(dataset, classifier)
    path = record_files(dataset, classifier)["stats"]
    check_sha256(path, record["stats_sha256"])
    return torch.load(path, map_location="cpu", weights_only=True)


def to_model_input(images: Tensor | np.ndarray) -> Tensor:
    """uint8 images in [0, 255] or floats in [-1, 1], (N, C, H, W) or (N, H, W) → float."""
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
    """torchmetrics' feature extractor for FLD: images (B, C, H, W), uint8 or in [-1, 1]
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
    """Add images (N, C, H, W), uint8 or in [-1, 1], to `metric`, `batch_size` at a time."""
    images = to_model_input(images)
    for start in range(0, images.shape[0], batch_size):
        metric.update(images[start : start + batch_size], real=real)


class FLD:
    """FLD of image sets against the test set of `dataset`, with its LeNet (the package's, or
    the one `classifier` names: a folder the classifier command wrote, or its JSON record),
    computed by torchmetrics (`fld_metric`).

    Under DDP every process adds its own images (`update`) and `compute` gathers the sums of
    all of them; only the process with `holds_test_set` (the first) holds the test set's.
    """

    def __init__(
        self,
        dataset: str = "mnist",
        device: torch.device | str = "cpu",
        holds_test_set: bool = True,
        classifier: str | Path | None = None,
    ):
        self.dataset = dataset
        self.model = load_lenet(dataset, device, classifier)
        self.input_shape = self.model.input_shape
        self.num_classes = self.model.head.out_features
        self.lenet = lenet_identity(dataset, classifier)
        self.test_stats = load_test_statistics(dataset, classifier)
        self.metric = fld_metric(self.model, self.test_stats if holds_test_set else None)
        self.metric.to(device)

    def to(self, device: torch.device | str) -> FLD:
        self.metric.to(device)
        return self

    def features(self, images: Tensor | np.ndarray, progress: bool = False) -> Tensor:
        return lenet_features(self.model, images, progress=progress)

    def update(self, images: Tensor | np.ndarray) -> None:
        """Add generated images (N, C, H, W), uint8 or in [-1, 1]."""
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
