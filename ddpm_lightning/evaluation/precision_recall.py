"""Precision and recall (Kynkäänniemi et al. 2019) with density and coverage (Naeem et al.
2020) of generated features against real ones, e.g. the LeNet's (N, 84) against the test set's.

Each real feature gets the ball reaching its k-th nearest real neighbour (each generated one,
its k-th nearest generated neighbour, for recall). Precision: the share of generated features
inside some real ball; density: the mean number of real balls holding a generated feature, over
k; recall: the share of real features inside some generated ball; coverage: the share of real
balls holding a generated feature. Balls are open, as in Naeem et al.'s code. Distances come in
chunks of rows, so 10,000 × 10,000 needs chunk × N floats at a time, not N × M.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows of a distance matrix computed at once: 1,000 × 10,000 float64 is 80 MB.
CHUNK = 1000


def kth_neighbour_distances(features: Tensor, k: int, chunk: int = CHUNK) -> Tensor:
    """Each row's distance (N,) to its k-th nearest other row of features (N, D)."""
    radii = [
        torch.cdist(features[i : i + chunk], features).kthvalue(k + 1, dim=1).values
        for i in range(0, features.shape[0], chunk)
    ]
    return torch.cat(radii)


def precision_density(
    real: Tensor, fake: Tensor, nearest_k: int, chunk: int = CHUNK, radii: Tensor | None = None
) -> dict[str, float]:
    """{"precision", "density"} of fake (N, D) against the balls of real (M, D), M > k, whose
    radii (M,) are `kth_neighbour_distances(real, nearest_k)` (computed when not given)."""
    real, fake = real.double(), fake.double()
    if radii is None:
        radii = kth_neighbour_distances(real, nearest_k, chunk)
    balls_holding = torch.zeros(fake.shape[0], dtype=torch.float64)
    for i in range(0, real.shape[0], chunk):
        balls_holding += (torch.cdist(real[i : i + chunk], fake) < radii[i : i + chunk, None]).sum(
            0
        )
    return {
        "precision": float((balls_holding > 0).double().mean()),
        "density": float(balls_holding.mean() / nearest_k),
    }


def recall_coverage(
    real: Tensor, fake: Tensor, nearest_k: int, chunk: int = CHUNK
) -> dict[str, float]:
    """{"recall", "coverage"} of fake (N, D) against real (M, D), both more than k rows."""
    real, fake = real.double(), fake.double()
    real_radii = kth_neighbour_distances(real, nearest_k, chunk)
    fake_radii = kth_neighbour_distances(fake, nearest_k, chunk)
    recalled, covered = [], []
    for i in range(0, real.shape[0], chunk):
        distances = torch.cdist(real[i : i + chunk], fake)
        recalled.append((distances < fake_radii[None, :]).any(1))
        covered.append(distances.min(1).values < real_radii[i : i + chunk])
    return {
        "recall": float(torch.cat(recalled).double().mean()),
        "coverage": float(torch.cat(covered).double().mean()),
    }


def precision_recall_density_coverage(
    real: Tensor, fake: Tensor, nearest_k: int, chunk: int = CHUNK
) -> dict[str, float]:
    """{"precision", "recall", "density", "coverage"} of fake (N, D) against real (M, D)."""
    return {
        **precision_density(real, fake, nearest_k, chunk),
        **recall_coverage(real, fake, nearest_k, chunk),
    }
