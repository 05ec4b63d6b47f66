"""Per-class views of samples: how far an unconditional model's predicted class histogram lies
from uniform, and a conditional model's FLD per requested class against that class of the test
set."""

from __future__ import annotations

import torch
from torch import Tensor

from ddpm_lightning.evaluation.intervals import frechet_distance


def chi2_survival(statistic: float, dof: int) -> float:
    """P(χ²_dof ≥ statistic): the regularized upper incomplete gamma Q(dof/2, statistic/2)."""
    half = torch.tensor([dof / 2, statistic / 2], dtype=torch.float64)
    return float(torch.special.gammaincc(half[0], half[1]))


def class_balance(counts: Tensor | list[int], test_counts: Tensor | list[int]) -> dict[str, float]:
    """Of predicted label counts (K,): total variation ½Σ|p − q| against uniform and against
    the test set's label shares test_counts (K,), Pearson's χ² against uniform
    (Σ (O − E)² / E, E = n / K) and its p-value on K − 1 degrees of freedom."""
    observed = torch.as_tensor(counts, dtype=torch.float64)
    test = torch.as_tensor(test_counts, dtype=torch.float64)
    shares, k = observed / observed.sum(), observed.numel()
    expected = observed.sum() / k
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    return {
        "tv_uniform": float((shares - 1 / k).abs().sum() / 2),
        "tv_test": float((shares - test / test.sum()).abs().sum() / 2),
        "chi2_uniform": chi2,
        "chi2_p_value": chi2_survival(chi2, k - 1),
    }


def fld_per_class(
    features: Tensor, labels: Tensor, real_features: Tensor, real_labels: Tensor, num_classes: int
) -> list[float | None]:
    """FLD of the samples requested as each class, features (N, D) with labels (N,), against
    the real features (M, D) of that class, real_labels (M,); None for a class with fewer than
    2 samples."""
    values: list[float | None] = []
    for c in range(num_classes):
        fake, real = features[labels == c].double(), real_features[real_labels == c].double()
        if fake.shape[0] < 2 or real.shape[0] < 2:
            values.append(None)
            continue
        distance = frechet_distance(
            fake.mean(0), torch.cov(fake.T), real.mean(0), torch.cov(real.T)
        )
        values.append(float(distance))
    return values
