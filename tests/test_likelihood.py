"""The likelihood bound against closed forms on Gaussian data x₀ ~ N(μ, s²I), whose exact
denoiser E[x₀ | x_t] is known: the KL terms, L_T, the discretised decoder, and the Monte-Carlo
estimate against the exact sum; and the evaluate command's bound of a conditional model, given
the test images' labels."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch.distributions import Normal, kl_divergence

from ddpm_lightning.data.images import load_split
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.evaluation.likelihood import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    prior_kl,
    timestep_terms,
)
from ddpm_lightning.training.module import DiffusionModule
from tests.conftest import tiny_model_folder, writing_config

MU, S = 0.1, 0.2


def gaussian_denoiser(schedule: NoiseSchedule, objective: str = "x0"):
    """The exact denoiser of x₀ ~ N(MU, S²) per element, predicting `objective`:
    E[x₀ | x_t] = μ + a s² (x_t − a μ) / (a² s² + b²), with x_t = a x₀ + b ε."""
    diffusion = GaussianDiffusion(schedule, objective)

    def denoiser(x_t, t, y=None):
        a = schedule.sqrt_alphas_cumprod.double()[t].view(-1, 1, 1, 1)
        b = schedule.sqrt_one_minus_alphas_cumprod.double()[t].view(-1, 1, 1, 1)
        x0 = MU + a * S**2 * (x_t.double() - a * MU) / (a**2 * S**2 + b**2)
        noise = (x_t.double() - a * x0) / b
        return diffusion.target(x0, t, noise).float()

    return denoiser


def gaussian_images(n: int, size: int = 4, seed: int = 0, quantised: bool = True):
    x = MU + S * torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1 if quantised else x


@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule("linear", 10)


def test_each_kl_term_is_the_closed_form_kl_of_the_two_posteriors(schedule):
    """L_{t−1} at given x₀, ε: KL(N(μ̃(x_t, x₀), β̃_t) ‖ N(μ̃(x_t, x̂₀), β̃_t)) summed over the
    pixels, with torch.distributions' KL as the reference."""
    diffusion = GaussianDiffusion(schedule, "x0")
    denoiser = gaussian_denoiser(schedule)
    x0 = gaussian_images(9, quantised=False).double()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.arange(1, 10)
    terms = timestep_terms(denoiser, diffusion, x0, t, noise, clip_x0=False)
    a = schedule.sqrt_alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    b = schedule.sqrt_one_minus_alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    x_t = a * x0 + b * noise
    x0_hat = MU + a * S**2 * (x_t - a * MU) / (a**2 * S**2 + b**2)
    c1 = schedule.posterior_mean_coef1.double()[t].view(-1, 1, 1, 1)
    c2 = schedule.posterior_mean_coef2.double()[t].view(-1, 1, 1, 1)
    std = schedule.posterior_variance.double()[t].sqrt().view(-1, 1, 1, 1)
    expected = kl_divergence(Normal(c1 * x0 + c2 * x_t, std), Normal(c1 * x0_hat + c2 * x_t, std))
    torch.testing.assert_close(terms, expected.flatten(1).sum(1), rtol=1e-4, atol=1e-6)


def test_the_kl_terms_average_to_the_gaussian_closed_form(schedule):
    """E[L_{t−1}] per pixel = c₁² Var(x₀ | x_t) / (2 β̃_t), Var(x₀ | x_t) = s² b² / (a² s² + b²),
    for the exact denoiser; 4,096 draws per timestep, within 6 % (the mean of a scaled χ²₁
    has a relative standard error of √(2/4096) = 2.2 %)."""
    diffusion = GaussianDiffusion(schedule, "x0")
    denoiser = gaussian_denoiser(schedule)
    generator = torch.Generator().manual_seed(2)
    for step in range(1, 10):
        x0 = gaussian_images(256, quantised=False, seed=step)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.full((256,), step)
        mean = timestep_terms(denoiser, diffusion, x0, t, noise, clip_x0=False).mean() / 16
        a2, b2 = float(schedule.alphas_cumprod[step]), 1 - float(schedule.alphas_cumprod[step])
        c1 = float(schedule.posterior_mean_coef1[step])
        expected = (
            c1**2 * S**2 * b2 / (a2 * S**2 + b2) / (2 * float(schedule.posterior_variance[step]))
        )
        assert float(mean) == pytest.approx(expected, rel=0.06), step


def test_the_prior_term_is_the_kl_of_q_xT_to_the_standard_normal(schedule):
    x0 = gaussian_images(5, quantised=False).double()
    alpha_bar = schedule.alphas_cumprod.double()[-1]
    q = Normal(alpha_bar.sqrt() * x0, (1 - alpha_bar).sqrt())
    expected = kl_divergence(q, Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(prior_kl(schedule, x0), expected, rtol=1e-5, atol=1e-8)


def test_the_decoder_is_the_gaussian_mass_of_each_bin():
    """Inner bins: Φ((x − m + 1/255)/σ) − Φ((x − m − 1/255)/σ); the bins of −1 and 1 reach ±∞."""
    x = torch.tensor(
        [-1.0, -1 + 2 / 255, 0.0, 0.5 + 1 / 255, 1 - 2 / 255, 1.0], dtype=torch.float64
    )
    mean = torch.tensor([-0.98, -0.99, 0.01, 0.5, 0.97, 0.99], dtype=torch.float64)
    sigma = 0.02
    got = discretized_gaussian_log_likelihood(x, mean, torch.full_like(x, sigma**2)).exp()
    expected = []
    for value, m in zip(x.tolist(), mean.tolist(), strict=True):
        upper = 1.0 if value > 1 - 1 / 255 else norm.cdf((value - m + 1 / 255) / sigma)
        lower = 0.0 if value < -1 + 1 / 255 else norm.cdf((value - m - 1 / 255) / sigma)
        expected.append(upper - lower)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=0)


def test_the_bins_of_the_decoder_sum_to_one():
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    mass = discretized_gaussian_log_likelihood(x, torch.tensor(0.3), torch.tensor(0.05)).exp()
    assert float(mass.sum()) == pytest.approx(1.0, abs=1e-12)


def test_the_monte_carlo_estimate_agrees_with_the_exact_sum(schedule):
    """Uniform timesteps (2 per image) against all 10, on 300 images of 4×4: the means agree
    within 3 combined standard errors, and the estimate's error is the larger."""
    images = gaussian_images(300)
    denoiser = gaussian_denoiser(schedule)
    exact = bits_per_dim(denoiser, schedule, "x0", images, num_timesteps_sampled=None, seed=3)
    sampled = bits_per_dim(denoiser, schedule, "x0", images, num_timesteps_sampled=2, seed=4)
    assert exact["exact"] and exact["timesteps_per_image"] == 10 and exact["n"] == 300
    assert not sampled["exact"] and sampled["timesteps_per_image"] == 2
    assert sampled["stderr"] > exact["stderr"] > 0
    combined = math.hypot(exact["stderr"], sampled["stderr"])
    assert abs(sampled["bpd"] - exact["bpd"]) < 3 * combined


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_the_bound_does_not_depend_on_what_the_network_predicts(schedule, objective):
    """The same exact denoiser, predicting x₀, ε or v, gives the same bound (same draws)."""
    images = gaussian_images(20)
    x0 = bits_per_dim(gaussian_denoiser(schedule), schedule, "x0", images, seed=5)
    other = bits_per_dim(
        gaussian_denoiser(schedule, objective), schedule, objective, images, seed=5
    )
    assert other["bpd"] == pytest.approx(x0["bpd"], rel=1e-4)


def test_a_better_denoiser_has_a_lower_bound(schedule):
    """The exact denoiser beats one that always predicts x̂₀ = 0."""
    images = gaussian_images(50)

    def zero(x_t, t, y=None):
        return torch.zeros_like(x_t)

    best = bits_per_dim(
        gaussian_denoiser(schedule), schedule, "x0", images, num_timesteps_sampled=None
    )
    worse = bits_per_dim(zero, schedule, "x0", images, num_timesteps_sampled=None)
    assert best["bpd"] < worse["bpd"]


def test_zero_timesteps_per_image_is_refused(schedule):
    with pytest.raises(ConfigError, match="likelihood.num_timesteps_sampled"):
        bits_per_dim(
            gaussian_denoiser(schedule), schedule, "x0", gaussian_images(2), num_timesteps_sampled=0
        )


@pytest.mark.parametrize("num_classes", [10, None])
def test_a_conditional_models_bound_is_given_the_test_labels(
    num_classes, data_root, tmp_path, monkeypatch
):
    """metric=bpd on 3 test images, 2 timesteps each: a conditional tiny model's network sees
    each image's true label (y of its 2 inputs), an unconditional one none."""
    monkeypatch.setenv("DDPM_DATA_DIR", str(data_root))
    seen = []

    def recording(self, x_t, t, y=None):
        seen.append(y)
        return self.model(x_t, t, y)

    monkeypatch.setattr(DiffusionModule, "forward", recording)
    folder = tiny_model_folder(tmp_path / "model", num_classes=num_classes)
    overrides = ["metric=bpd", "num_images=3", "bpd.num_timesteps_sampled=2"]
    metrics = evaluate(
        writing_config("evaluate", tmp_path / "out", f"pretrained={folder}", *overrides)
    )
    assert metrics["conditional"] is (num_classes is not None) and metrics["n"] == 3
    if num_classes is None:
        assert seen == [None]
        return
    _, labels = load_split(data_root, "mnist", train=False)
    assert torch.equal(torch.cat(seen), labels[:3].repeat_interleave(2))
