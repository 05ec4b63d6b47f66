"""The scores beside FLD on constructed features: KID against a direct unbiased MMD², FLD's
bootstrap spread against independent draws, precision/recall/density/coverage on clusters, the
class balance in closed form, and the shipped test-set features against the shipped
statistics."""

import itertools
import math

import pytest
import scipy.stats
import torch

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import (
    FLD,
    asset_paths,
    lenet_features,
    load_test_statistics,
    sha256,
)
from ddpm_lightning.evaluation.intervals import bootstrap_fld, frechet_distance
from ddpm_lightning.evaluation.kid import kid_of_features
from ddpm_lightning.evaluation.per_class import class_balance, fld_per_class
from ddpm_lightning.evaluation.precision_recall import precision_recall_density_coverage
from ddpm_lightning.evaluation.reference import features_path, read_test_features
from ddpm_lightning.evaluation.settings import metric_settings

SETTINGS = {
    "bootstrap": 50,
    "confidence": 0.95,
    "kid_subsets": 10,
    "kid_subset_size": 1000,
    "confident_threshold": 0.9,
    "num_seeds": 1,
}


def gaussian(n, d, seed, shift=0.0):
    return (
        torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        + shift
    )


# --- KID ----------------------------------------------------------------------------------------


def cubic_kernel(x, y):
    """k(x, y) = (xᵀy / d + 1)³."""
    return (float(x @ y) / x.numel() + 1) ** 3


def biased_mmd2(x, y):
    """The V-statistic: every pair, the diagonal too, whole matrices at once."""
    d = x.shape[1]
    xx, yy, xy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    return float(xx.mean() + yy.mean() - 2 * xy.mean())


def unbiased_mmd2(x, y):
    """MMD²_u (Gretton et al. 2012, eq. 3), pair by pair."""
    n, m = len(x), len(y)
    xx = sum(cubic_kernel(x[i], x[j]) for i, j in itertools.permutations(range(n), 2))
    yy = sum(cubic_kernel(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    xy = sum(cubic_kernel(x[i], y[j]) for i in range(n) for j in range(m))
    return xx / (n * (n - 1)) + yy / (m * (m - 1)) - 2 * xy / (n * m)


def test_kid_is_the_unbiased_mmd2_with_the_cubic_kernel():
    """With one subset as large as both sets, every subset is all of them: KID is MMD²_u."""
    fake, real = gaussian(30, 84, 0, shift=0.2), gaussian(30, 84, 1)
    found = kid_of_features(fake, real, subset_size=30, subsets=3)
    assert found["kid"] == pytest.approx(unbiased_mmd2(fake, real), rel=1e-9, abs=1e-9)
    assert found["kid_std"] == pytest.approx(0, abs=1e-9)
    assert found["kid_subset_size"] == 30 and found["kid_se"] == found["kid_std"]


def test_kid_is_unbiased_at_small_n():
    """Same distribution on both sides, n = 20: the mean of 200 KIDs is 0 within 3 standard
    errors of that mean, while the biased (V-statistic) estimate stays clearly above 0."""
    values, biased = [], []
    for draw in range(200):
        fake, real = gaussian(20, 8, 2 * draw), gaussian(20, 8, 2 * draw + 1)
        values.append(kid_of_features(fake, real, subset_size=20, subsets=1)["kid"])
        biased.append(biased_mmd2(fake, real))
    values_t = torch.tensor(values)
    error = float(values_t.std()) / math.sqrt(len(values))
    assert abs(float(values_t.mean())) < 3 * error
    assert float(torch.tensor(biased).mean()) > 10 * error


def test_kid_standard_error_counts_disjoint_subsets():
    fake, real = gaussian(400, 8, 3), gaussian(400, 8, 4)
    found = kid_of_features(fake, real, subset_size=100, subsets=20)
    assert found["kid_se"] == pytest.approx(found["kid_std"] / 2)


# --- FLD's interval -----------------------------------------------------------------------------


def test_frechet_distance_is_torchmetrics_fld():
    images = torch.rand(200, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fld = FLD("mnist")
    features = lenet_features(fld.model, images)
    found = bootstrap_fld(features, fld.test_stats, draws=20, confidence=0.95)
    assert found["fld"] == pytest.approx(fld(images), rel=1e-6)


def test_bootstrap_spread_matches_independent_draws():
    """Gaussian features (d = 16, n = 400) against a shifted reference: the bootstrap sd of one
    draw lies within 0.7 to 1.4 times the sd of FLD over 200 independent draws."""
    d, n = 16, 400
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    cov = a @ a.T / d + torch.eye(d, dtype=torch.float64)
    root = torch.linalg.cholesky(cov)
    reference = {"mean": torch.full((d,), 0.3, dtype=torch.float64), "cov": cov}

    def draw(seed):
        return gaussian(n, d, seed) @ root.T

    spread = torch.tensor(
        [
            float(frechet_distance(x.mean(0), torch.cov(x.T), reference["mean"], cov))
            for x in map(draw, range(100, 300))
        ]
    ).std()
    for seed in range(3):
        found = bootstrap_fld(draw(seed), reference, draws=200, confidence=0.95, seed=seed)
        assert 0.7 * spread < found["fld_sd"] < 1.4 * spread
        low, high = found["fld_interval"]
        assert high - found["fld"] == pytest.approx(1.959964 * found["fld_sd"], rel=1e-5)
        assert low == pytest.approx(max(0.0, found["fld"] - 1.959964 * found["fld_sd"]), rel=1e-5)


def test_bootstrap_is_seeded():
    features, reference = gaussian(100, 4, 0), {"mean": torch.zeros(4), "cov": torch.eye(4)}
    first = bootstrap_fld(features, reference, draws=30, confidence=0.9, seed=5)
    assert first == bootstrap_fld(features, reference, draws=30, confidence=0.9, seed=5)
    assert first != bootstrap_fld(features, reference, draws=30, confidence=0.9, seed=6)


# --- Precision, recall, density, coverage ------------------------------------------------------


def clusters(n, classes, seed, d=4, spread=30.0):
    """n points around the centres of `classes` (of 10 fixed centres), unit variance."""
    centres = torch.randn(10, d, generator=torch.Generator().manual_seed(99)) * spread
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=generator)]
    return centres[chosen] + torch.randn(n, d, generator=generator)


REFERENCE = clusters(1000, range(10), seed=0)


def test_a_copy_of_the_reference_scores_one():
    found = precision_recall_density_coverage(REFERENCE, REFERENCE.clone(), nearest_k=5)
    assert found["precision"] == found["recall"] == found["coverage"] == 1.0
    assert found["density"] == pytest.approx(1.0, abs=0.1)


def test_fresh_samples_of_the_reference_distribution_score_near_one():
    found = precision_recall_density_coverage(REFERENCE, clusters(1000, range(10), 1), 5)
    assert min(found.values()) > 0.9


def test_half_the_clusters_halve_recall_and_coverage_not_precision():
    """Tolerance 0.05: a fresh draw from the same clusters scores 0.95 to 1 on its own."""
    found = precision_recall_density_coverage(REFERENCE, clusters(1000, range(5), 2), 5)
    assert found["precision"] > 0.95
    assert found["recall"] == pytest.approx(0.5, abs=0.05)
    assert found["coverage"] == pytest.approx(0.5, abs=0.05)


def test_far_away_noise_scores_zero():
    far = clusters(1000, range(10), 3) + 1000
    found = precision_recall_density_coverage(REFERENCE, far, nearest_k=5)
    assert found == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_chunks_do_not_change_the_scores():
    fake = clusters(300, range(7), 4)
    whole = precision_recall_density_coverage(REFERENCE[:400], fake, 3, chunk=10_000)
    assert precision_recall_density_coverage(REFERENCE[:400], fake, 3, chunk=7) == whole


# --- Per class, settings, shipped features ------------------------------------------------------


def test_class_balance_in_closed_form():
    """20 samples all of class 0: E = 2, χ² = 18²/2 + 9·2²/2 = 180, TV = 0.9."""
    found = class_balance([20] + [0] * 9, [1] * 10)
    assert found["chi2_uniform"] == pytest.approx(180)
    assert found["tv_uniform"] == found["tv_test"] == pytest.approx(0.9)
    assert found["chi2_p_value"] == pytest.approx(scipy.stats.chi2.sf(180, 9), abs=1e-12)
    uneven = class_balance([30, 30, 20, 20, 10, 10, 10, 10, 5, 5], [1] * 10)
    assert uneven["chi2_p_value"] == pytest.approx(
        scipy.stats.chisquare([30, 30, 20, 20, 10, 10, 10, 10, 5, 5]).pvalue, rel=1e-4
    )
    assert class_balance([7] * 10, [3] * 10)["tv_uniform"] == 0


def test_fld_per_class_of_the_reference_classes_is_zero():
    features, labels = REFERENCE.double(), torch.arange(1000) % 3
    found = fld_per_class(features, labels, features, labels, num_classes=4)
    assert found[:3] == pytest.approx([0, 0, 0], abs=1e-6) and found[3] is None


def test_settings_refuse_values_outside_their_declarations():
    with pytest.raises(ConfigError, match=r"metrics.nearest_k=0 must be at least 1"):
        metric_settings(nearest_k=0, **SETTINGS)
    with pytest.raises(ConfigError, match=r"metrics.confidence=1"):
        metric_settings(nearest_k=3, **{**SETTINGS, "confidence": 1.0})
    with pytest.raises(ConfigError, match=r"metrics.confident_threshold=0"):
        metric_settings(nearest_k=3, **{**SETTINGS, "confident_threshold": 0.0})
    with pytest.raises(ConfigError, match=r"metrics.num_seeds=0"):
        metric_settings(nearest_k=3, **{**SETTINGS, "num_seeds": 0})


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_shipped_test_features_give_the_shipped_statistics(dataset):
    """float16 features: mean within 1e-4, covariance within 2e-3 of the float64 statistics."""
    weights = asset_paths(dataset)["weights"]
    features, labels = read_test_features(features_path(dataset), sha256(weights))
    stats = load_test_statistics(dataset)
    assert features.shape == (int(stats["num_images"]), 84)
    assert torch.allclose(features.mean(0), stats["mean"], atol=1e-4)
    assert torch.allclose(torch.cov(features.T), stats["cov"], atol=2e-3)
    assert torch.equal(torch.bincount(labels, minlength=10), stats["label_counts"])
    assert read_test_features(features_path(dataset), "0" * 64) is None, "another LeNet's"
