"""How sure the LeNet is of the samples: the mean of each sample's top class probability, and
the share of samples whose top class probability reaches a threshold (a sample the classifier
assigns to one class, e.g. one shape in one colour, with confidence ≥ 0.9)."""

from __future__ import annotations

from torch import Tensor


def confidence_scores(probabilities: Tensor, threshold: float) -> dict[str, float]:
    """{"mean_confidence", "confident_share", "confident_threshold"} of the LeNet's class
    probabilities (N, K) of N samples: the mean of max_k p_k, and the share with
    max_k p_k ≥ `threshold`."""
    top = probabilities.max(dim=1).values
    return {
        "mean_confidence": top.mean().item(),
        "confident_share": (top >= threshold).double().mean().item(),
        "confident_threshold": threshold,
    }
