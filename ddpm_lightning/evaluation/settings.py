"""The evaluate command's `metrics:` settings, declared once in this signature: the config
schema and the configuration reference read the same declarations; conf/evaluate.yaml gives
the values."""

from __future__ import annotations

from typing import Annotated, Any

from ddpm_lightning.settings import Range, checked

NearestK = Annotated[int, Range(ge=1)]


@checked("metrics")
def metric_settings(
    # Nearest neighbours whose distance sets each feature's radius in precision, recall,
    # density and coverage (Naeem et al. 2020 use 5).
    nearest_k: NearestK,
    # Bootstrap resamples of the generated features behind FLD's interval (0: no interval).
    bootstrap: Annotated[int, Range(ge=0)],
    # Coverage of the intervals, e.g. 0.95.
    confidence: Annotated[float, Range(gt=0, lt=1)],
    # KID's random subsets of each side (torchmetrics' `subsets`).
    kid_subsets: Annotated[int, Range(ge=1)],
    # Images per KID subset, capped at the number of samples (torchmetrics' `subset_size`).
    kid_subset_size: Annotated[int, Range(ge=2)],
    # Top LeNet class probability at or above which a sample counts as confidently classified.
    confident_threshold: Annotated[float, Range(gt=0, le=1)],
    # Independent sample sets (seeds seed, seed + 1, …) whose FLDs give its spread across
    # seeds; 1: one set. Needs ckpt_path= or pretrained=.
    num_seeds: Annotated[int, Range(ge=1)],
) -> dict[str, Any]:
    """The settings, checked against their declarations."""
    return {
        "nearest_k": int(nearest_k),
        "bootstrap": int(bootstrap),
        "confidence": float(confidence),
        "kid_subsets": int(kid_subsets),
        "kid_subset_size": int(kid_subset_size),
        "confident_threshold": float(confident_threshold),
        "num_seeds": int(num_seeds),
    }
