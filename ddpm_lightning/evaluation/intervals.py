"""Error bars for FLD: the bootstrap over the generated samples' features against the fixed
test-set statistics (Efron & Tibshirani 1993, ch. 13).

The interval is FLD ± z·sd, sd the replicates' standard deviation: how FLD at this n varies
with the draw of samples, not where FLD would settle as n → ∞ (it falls with n; compare figures
at one n). A resample repeats images, which lowers its diversity and raises its FLD, so the
replicates sit above FLD and quantile intervals would lie off it; their spread is kept. It
matches the spread of FLD over independent draws on Gaussian features
(tests/test_eval_metrics.py) and is wider than it on MNIST features near the real-data floor
(docs/results.md, FLD's bootstrap interval): an interval that errs wide.

`across_seeds` gives the other spread: that of FLD over k independent sample sets of one model,
with Student's t interval for their mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy.stats import t as student_t
from torch import Tensor
from torch.distributions import Normal


def frechet_distance(mean: Tensor, cov: Tensor, ref_mean: Tensor, ref_cov: Tensor) -> Tensor:
    """‖μ − μ_r‖² + tr(Σ + Σ_r − 2(ΣΣ_r)^½) (Lior Sinai's post, eq. 4.7) for means (..., D) and
    covariances (..., D, D) against one reference (D,), (D, D); the square root's trace is the
    sum of the square roots of ΣΣ_r's eigenvalues, as torchmetrics computes it."""
    root_trace = torch.linalg.eigvals(cov @ ref_cov).sqrt().real.sum(-1)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1) + ref_cov.trace()
    return (mean - ref_mean).square().sum(-1) + trace - 2 * root_trace


def resampled_statistics(features: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Means (B, D) and unbiased covariances (B, D, D) of B resamples of features (N, D), each
    given as how often it takes each row, counts (B, N) summing to N."""
    n = features.shape[0]
    weights = counts.double() / n
    mean = weights @ features
    second = torch.einsum("bn,nd,ne->bde", weights, features, features)
    cov = (second - mean[:, :, None] * mean[:, None, :]) * (n / (n - 1))
    return mean, cov


def normal_interval(estimate: float, sd: float, confidence: float) -> list[float]:
    """[θ̂ − z·sd, θ̂ + z·sd], z the standard normal's (1 + confidence)/2 quantile, clipped at 0."""
    z = float(Normal(0.0, 1.0).icdf(torch.tensor((1 + confidence) / 2)))
    return [max(0.0, estimate - z * sd), estimate + z * sd]


def bootstrap_fld(
    features: Tensor,
    reference: dict[str, Tensor],
    draws: int,
    confidence: float,
    seed: int = 0,
    batch: int = 25,
) -> dict[str, object]:
    """FLD of features (N, D) against `reference` (`mean`, `cov`), with the standard deviation
    of its value over `draws` resamples of the N rows (drawn from `seed`,
    `batch` at a time): {"fld", "fld_interval", "fld_sd", "bootstrap_draws", "confidence"}."""
    features = features.double()
    ref_mean, ref_cov = reference["mean"].double(), reference["cov"].double()
    mean, cov = features.mean(0), torch.cov(features.T)
    estimate = float(frechet_distance(mean, cov, ref_mean, ref_cov))
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    replicates = []
    for start in range(0, draws, batch):
        rows = torch.randint(n, (min(batch, draws - start), n), generator=generator)
        counts = torch.zeros(rows.shape[0], n, dtype=torch.float64).scatter_add_(
            1, rows, torch.ones_like(rows, dtype=torch.float64)
        )
        replicates.append(
            frechet_distance(*resampled_statistics(features, counts), ref_mean, ref_cov)
        )
    sd = float(torch.cat(replicates).std())
    return {
        "fld": estimate,
        "fld_interval": normal_interval(estimate, sd, confidence),
        "fld_sd": sd,
        "bootstrap_draws": draws,
        "confidence": confidence,
    }


def across_seeds(flds: Sequence[float], confidence: float) -> dict[str, object]:
    """FLDs of k ≥ 2 independent sample sets, their mean, standard deviation (k − 1 degrees of
    freedom) and the interval mean ± t·sd/√k of their mean, t Student's (1 + confidence)/2
    quantile with k − 1 degrees of freedom: {"fld_seeds", "fld_seed_mean", "fld_seed_sd",
    "fld_seed_interval", "confidence"}."""
    values = torch.tensor(flds, dtype=torch.float64)
    k = len(flds)
    mean, sd = float(values.mean()), float(values.std())
    half = float(student_t.ppf((1 + confidence) / 2, k - 1)) * sd / math.sqrt(k)
    return {
        "fld_seeds": [float(value) for value in flds],
        "fld_seed_mean": mean,
        "fld_seed_sd": sd,
        "fld_seed_interval": [mean - half, mean + half],
        "confidence": confidence,
    }
