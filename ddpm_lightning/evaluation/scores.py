"""The scores beside FLD, all on the LeNet's 84 features against the test set's: FLD's
bootstrap interval, KID with its standard error, precision, recall, density and coverage, and
the per-class view (class balance of unconditional samples, per-class FLD of conditional ones).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ddpm_lightning.evaluation.fld import (
    lenet_features,
    load_lenet,
    load_test_statistics,
    record_files,
    sha256,
)
from ddpm_lightning.evaluation.intervals import bootstrap_fld
from ddpm_lightning.evaluation.kid import kid_of_features
from ddpm_lightning.evaluation.per_class import class_balance, fld_per_class
from ddpm_lightning.evaluation.precision_recall import (
    kth_neighbour_distances,
    precision_density,
    recall_coverage,
)
from ddpm_lightning.evaluation.reference import test_features


def fld_interval(
    features: Tensor, statistics: dict[str, Tensor], settings: dict, seed: int
) -> dict:
    """FLD's bootstrap interval, standard deviation, draws and confidence against the test
    `statistics` (no FLD: the torchmetrics one is reported); {} when `settings["bootstrap"]` is
    0."""
    if settings["bootstrap"] == 0:
        return {}
    found = bootstrap_fld(features, statistics, settings["bootstrap"], settings["confidence"], seed)
    return {key: value for key, value in found.items() if key != "fld"}


# The test features' k-NN radii by (LeNet weights' SHA-256, k): 10,000 × 10,000 distances, once
# a process.
TEST_RADII: dict[tuple[str, int], Tensor] = {}


def test_radii(real: Tensor, lenet_sha256: str, nearest_k: int) -> Tensor:
    """`kth_neighbour_distances` of the test features real (M, 84) of the LeNet `lenet_sha256`."""
    key = (lenet_sha256, nearest_k)
    if key not in TEST_RADII:
        TEST_RADII[key] = kth_neighbour_distances(real.double(), nearest_k)
    return TEST_RADII[key]


def precision_recall(
    features: Tensor, real: Tensor, nearest_k: int, seed: int, radii: Tensor | None = None
) -> dict:
    """Precision and density of features (N, 84) against all the real features (M, 84), whose
    k-NN balls do not depend on N; recall and coverage against N of them drawn from `seed` (all
    M when N ≥ M), since their generated balls and real-ball counts need sides alike in size;
    {} when N ≤ nearest_k. (Against only N real features, k-NN precision scores LeNet features
    of uniform noise 1.0 at N = 500, against 0.22 with all 10,000.)"""
    n = features.shape[0]
    if n <= nearest_k:
        return {}
    matched = real
    if n < real.shape[0]:
        order = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(seed))
        matched = real[order[:n]]
    return {
        **precision_density(real, features, nearest_k, radii=radii),
        **recall_coverage(matched, features, nearest_k),
        "nearest_k": nearest_k,
        "prdc_real_samples": {"precision_density": real.shape[0], "recall_coverage": n},
    }


def feature_scores(
    images: Tensor,
    labels: Tensor | None,
    dataset: str,
    settings: dict,
    seed: int = 0,
    classifier: str | Path | None = None,
) -> dict:
    """The scores beside FLD of images (N, C, H, W) in [-1, 1], with their requested labels (N,)
    for conditional models, under `settings` (`metric_settings`), with the package's LeNet of
    `dataset` or the one in the `classifier` folder."""
    lenet = load_lenet(dataset, classifier=classifier)
    weights = record_files(dataset, classifier)["weights"]
    features = lenet_features(lenet, images)
    real, real_labels = test_features(lenet, dataset, weights, weights.parent)
    k = settings["nearest_k"]
    scores = {
        **fld_interval(features, load_test_statistics(dataset, classifier), settings, seed),
        **kid_of_features(
            features, real, settings["kid_subset_size"], settings["kid_subsets"], seed
        ),
        **precision_recall(features, real, k, seed, test_radii(real, sha256(weights), k)),
    }
    if labels is not None:
        num_classes = int(real_labels.max()) + 1
        scores["fld_per_class"] = fld_per_class(features, labels, real, real_labels, num_classes)
    return scores


def class_view(metrics: dict) -> dict:
    """`class_balance` of an unconditional model's predicted labels; {} for conditional ones
    (their per-class accuracy and FLD say more)."""
    if "requested_label_accuracy" in metrics:
        return {}
    return {"class_balance": class_balance(metrics["label_counts"], metrics["test_label_counts"])}
