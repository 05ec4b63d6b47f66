"""Fréchet Inception Distance (Heusel et al. 2017, eq. 6) for colour images, with the
Inception-v3 features the literature's FIDs use.

FID = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) between Gaussian fits of the 2048-wide pool features
of two image sets, computed by torchmetrics' `FrechetInceptionDistance`. Its default network is
torch-fidelity's port of TensorFlow's 2015-12-05 Inception-v3 (the network of the original FID
code): the weights file is read from torch.hub's cache, downloaded there when the machine is
online, and named with where it goes when it is neither.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from ddpm_lightning.errors import DataError, import_optional

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS}"
)


def inception_weights_path() -> Path:
    """Where torch-fidelity looks for its Inception-v3 weights: torch.hub's checkpoints folder
    (`$TORCH_HOME/hub/checkpoints`, by default `~/.cache/torch/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def inception_weights() -> Path:
    """The cached Inception-v3 weights file, downloaded first when it is not there; one line
    naming the file to fetch and where to put it when the download fails (offline)."""
    path = inception_weights_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=False)
    except (OSError, URLError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"Inception FID needs {INCEPTION_WEIGHTS}, which is not cached and could not be "
            f"downloaded ({reason[:80]}): fetch {INCEPTION_URL} and put it at {path}"
        ) from None
    return path


def to_inception_input(images: Tensor | np.ndarray) -> Tensor:
    """Images (N, C, H, W), uint8 in [0, 255] or floats in [-1, 1], C = 1 or 3 → uint8
    (N, 3, H, W), grey repeated on the three channels; the network resizes them to 299²."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"Inception FID takes images (N, 1 or 3, H, W), not {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def inception_fid_metric(feature: nn.Module | None = None) -> FrechetInceptionDistance:
    """torchmetrics' FID over the 2048 Inception-v3 pool features (torch-fidelity's weights,
    `inception_weights`), or over `feature`: any module taking uint8 images (B, 3, H, W) to
    features (B, D), as a stand-in. Real features are kept across `reset`."""
    if feature is not None:
        return FrechetInceptionDistance(feature=feature, reset_real_features=False)
    import_optional("torch_fidelity", "Inception FID", "fid")
    return FrechetInceptionDistance(
        feature=2048,
        reset_real_features=False,
        feature_extractor_weights_path=str(inception_weights()),
    )


class InceptionFID:
    """FID of generated images against real ones (e.g. a dataset's test split): `update`
    with `real=True` for the reference (or `reference` statistics, `statistics()` of an
    earlier one), then with the samples, then `compute`.

    Comparable with published FIDs only with the default network, 50,000 samples against the
    reference set those papers name (CIFAR-10: its 50,000 training images), at their size.
    """

    def __init__(
        self,
        feature: nn.Module | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 200,
        reference: dict[str, Tensor] | None = None,
    ):
        self.metric = inception_fid_metric(feature).to(device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if reference is not None:
            self.load_reference(reference)

    def load_reference(self, reference: dict[str, Tensor]) -> None:
        """Set the real side to `reference` (`mean` (D,), `cov` (D, D), `num_images`) as the
        sums torchmetrics keeps: n, nμ and (n − 1)Σ + nμμᵀ."""
        n = int(reference["num_images"])
        mean = reference["mean"].double().to(self.device)
        self.metric.real_features_num_samples = torch.tensor(n, device=self.device)
        self.metric.real_features_sum = n * mean
        self.metric.real_features_cov_sum = (n - 1) * reference["cov"].double().to(
            self.device
        ) + n * torch.outer(mean, mean)

    def statistics(self) -> dict[str, Tensor]:
        """The real side's `mean` (D,), unbiased `cov` (D, D) and `num_images`, in float64, to
        store (e.g. beside a LeNet) and pass as `reference` later without the images."""
        n = int(self.metric.real_features_num_samples)
        mean = self.metric.real_features_sum / n
        cov = (self.metric.real_features_cov_sum - n * torch.outer(mean, mean)) / (n - 1)
        return {"mean": mean.cpu(), "cov": cov.cpu(), "num_images": torch.tensor(n)}

    def update(self, images: Tensor | np.ndarray, real: bool = False) -> None:
        """Add images (N, C, H, W), uint8 or in [-1, 1], `batch_size` at a time."""
        images = to_inception_input(images)
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            self.metric.update(batch, real=real)

    def compute(self) -> float:
        """FID of the generated images added since the last `compute` (N ≥ 2 of each)."""
        value = float(self.metric.compute())
        self.metric.reset()
        return value
