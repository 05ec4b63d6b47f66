"""Kernel LeNet Distance: KID (Bińkowski et al. 2018) on the LeNet's 84 features, by
torchmetrics' `KernelInceptionDistance` with the LeNet as its feature extractor, as FLD uses its
FID.

KID is the unbiased estimate of MMD² with the cubic kernel k(x, y) = (xᵀy/d + 1)³ (eq. 3 of
Bińkowski et al.; torchmetrics' defaults degree 3, γ = 1/d, coef 1), averaged over random
subsets of `subset_size` images of each side: unbiased at any n, unlike FLD, so small-n figures
compare with large-n ones in expectation. Its standard error treats the n samples as n /
subset_size disjoint subsets (one subset's spread when subset_size = n): the subsets reuse
images, so more of them do not make it smaller.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.kid import KernelInceptionDistance

from ddpm_lightning.evaluation.fld import LeNetFeatures, lenet_features
from ddpm_lightning.models.lenet import LeNet5


def kid_metric(
    lenet: LeNet5 | None, real_features: Tensor | None, subset_size: int, subsets: int = 100
) -> KernelInceptionDistance:
    """torchmetrics' KID over the LeNet's features (`lenet` None: updates are features (B, 84)
    already), holding real_features (M, 84) across resets. It computes on the features its
    process holds (no gathering), so one process of a distributed run can score alone."""
    extractor = nn.Identity() if lenet is None else LeNetFeatures(lenet)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")
        metric = KernelInceptionDistance(
            feature=extractor,
            subsets=subsets,
            subset_size=subset_size,
            reset_real_features=False,
            sync_on_compute=False,
        )
    if real_features is not None:
        metric.real_features.append(real_features.double())
    return metric


def kid_compute(metric: KernelInceptionDistance, seed: int = 0) -> tuple[float, float]:
    """(mean, standard deviation) of KID over `metric`'s subsets, drawn from `seed` (torchmetrics
    draws them from the global generator, which is left as it was)."""
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(seed)
        # Features set directly, not by `update`, make torchmetrics warn of no update.
        warnings.filterwarnings("ignore", "The ``compute`` method of metric")
        mean, std = metric.compute()
    return float(mean), float(std)


def kid_of_features(
    features: Tensor,
    real_features: Tensor,
    subset_size: int,
    subsets: int = 100,
    seed: int = 0,
) -> dict[str, float | int]:
    """KID of features (N, 84) against real_features (M, 84), subsets of min(subset_size, N, M):
    {"kid", "kid_se", "kid_std", "kid_subset_size", "kid_subsets"}."""
    size = min(subset_size, features.shape[0], real_features.shape[0])
    metric = kid_metric(None, real_features, size, subsets)
    metric.fake_features.append(features.double())
    mean, std = kid_compute(metric, seed)
    return {
        "kid": mean,
        "kid_se": std / math.sqrt(features.shape[0] // size),
        "kid_std": std,
        "kid_subset_size": size,
        "kid_subsets": subsets,
    }


def kid_of_images(
    lenet: LeNet5,
    images: Tensor,
    real_features: Tensor,
    subset_size: int = 1000,
    subsets: int = 10,
    seed: int = 0,
) -> float:
    """KID of images (N, C, H, W) in [-1, 1] against real_features (M, 84), the mean over
    `subsets` subsets of min(subset_size, N, M): unbiased at any N, so training can log it at
    a few hundred samples."""
    features = lenet_features(lenet, images)
    return float(kid_of_features(features, real_features, subset_size, subsets, seed)["kid"])
