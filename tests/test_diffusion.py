import math

import pytest
import torch
from conftest import overfit_one_batch

from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.schedules import NoiseSchedule, cosine_beta_schedule
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models import UNet


def tiny_unet(num_timesteps: int) -> UNet:
    return UNet(
        model_channels=8,
        channel_multipliers=(1, 2),
        block_groups=4,
        num_attention_heads=2,
        num_timesteps=num_timesteps,
    )


def make(objective="eps", loss="l2", T=100, **kwargs):
    return GaussianDiffusion(NoiseSchedule("cosine", T), objective=objective, loss=loss, **kwargs)


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_target_converts_back_to_x0_and_eps(objective):
    torch.manual_seed(0)
    diffusion = make(objective)
    x0, noise = torch.rand(8, 1, 4, 4) * 2 - 1, torch.randn(8, 1, 4, 4)
    t = torch.tensor([0, 5, 20, 40, 60, 80, 95, 98])
    x_t = diffusion.q_sample(x0, t, noise)
    x0_hat, eps_hat = diffusion.predict_x0_eps(x_t, t, diffusion.target(x0, t, noise))
    torch.testing.assert_close(x0_hat, x0, atol=2e-4, rtol=0)
    torch.testing.assert_close(eps_hat, noise, atol=2e-4, rtol=0)


def test_v_target_closed_form():
    diffusion = make("v")
    x0, noise, t = torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), torch.tensor([30])
    s = diffusion.schedule
    expected = -s.sqrt_one_minus_alphas_cumprod[30]
    assert diffusion.target(x0, t, noise).item() == pytest.approx(expected.item())


def test_loss_types():
    prediction, target = torch.tensor([0.0, 0.0]), torch.tensor([0.5, 3.0])
    assert make(loss="l2").loss(prediction, target).item() == pytest.approx((0.25 + 9) / 2)
    assert make(loss="l1").loss(prediction, target).item() == pytest.approx(3.5 / 2)
    assert make(loss="huber").loss(prediction, target).item() == pytest.approx((0.125 + 2.5) / 2)


def test_bad_objective_and_loss_name_the_key():
    with pytest.raises(ConfigError, match="diffusion.objective='noise'"):
        make(objective="noise")
    with pytest.raises(ConfigError, match="diffusion.loss"):
        make(loss="l3")


def test_timesteps_are_uniform():
    diffusion = make(T=10)
    t = diffusion.sample_timesteps(100_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=10).float()
    assert t.min() == 0 and t.max() == 9
    # Each count is Binomial(1e5, 0.1): σ ≈ 95, so ±500 is a 5σ bound.
    assert torch.all((counts - 10_000).abs() < 500)


def test_training_loss_is_reproducible_with_a_generator():
    model = tiny_unet(num_timesteps=100)
    diffusion = make()
    x0 = torch.rand(4, 1, 32, 32) * 2 - 1
    losses = [
        diffusion.training_loss(model, x0, generator=torch.Generator().manual_seed(3))
        for _ in range(2)
    ]
    assert losses[0].item() == losses[1].item()


def hand_min_snr_weight(objective: str, alpha_bar: float, gamma: float) -> float:
    """Hang et al. 2023: min(SNR, γ) for x₀, divided by SNR for ε and by SNR + 1 for v."""
    snr = alpha_bar / (1 - alpha_bar)
    return min(snr, gamma) / {"x0": 1.0, "eps": snr, "v": snr + 1}[objective]


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_min_snr_weights_match_hand_computed_values(objective):
    diffusion = make(objective, T=1000, weighting="min_snr", min_snr_gamma=5.0)
    alpha_bar = diffusion.schedule.alphas_cumprod.double()
    t = torch.tensor([0, 50, 200, 500, 900, 999])
    expected = [hand_min_snr_weight(objective, alpha_bar[i].item(), 5.0) for i in t]
    torch.testing.assert_close(diffusion.loss_weights(t), torch.tensor(expected), rtol=1e-6, atol=0)
    weights = diffusion.loss_weights(torch.arange(1000))
    snr = alpha_bar / (1 - alpha_bar)
    # Below γ the x₀-space weight is the SNR itself: ε-weights are 1 there, and x0/v are < γ.
    assert (weights[snr < 5] <= {"eps": 1.0, "x0": 5.0, "v": 5.0}[objective] + 1e-6).all()


def test_min_snr_weights_the_loss_per_sample():
    diffusion = make("eps", T=1000, weighting="min_snr", min_snr_gamma=1.0)
    prediction, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    prediction[1] = 1 - 3.0  # second sample: squared error 9 per element
    weights = torch.tensor([0.5, 0.25])
    assert diffusion.loss(prediction, target, weights).item() == pytest.approx((0.5 + 9 * 0.25) / 2)
    assert make("eps").loss(prediction, target).item() == pytest.approx((1 + 9) / 2)


def test_unweighted_loss_has_unit_weights():
    assert torch.equal(make("v").loss_weights(torch.tensor([3, 7])), torch.ones(2))


def test_lognormal_noise_levels_follow_the_quantised_normal():
    """P(t = k) = Φ((e_k − μ)/s) − Φ((e_{k−1} − μ)/s) with e the log-σ midpoints (exact)."""
    diffusion = make("v", T=1000, noise_levels="lognormal", p_mean=-1.2, p_std=1.2)
    t = diffusion.sample_timesteps(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    counts = torch.bincount(t, minlength=1000).double() / len(t)
    edges = diffusion.log_sigma_edges
    cdf = torch.special.ndtr((edges - (-1.2)) / 1.2)
    expected = torch.cat([cdf[:1], cdf[1:] - cdf[:-1], 1 - cdf[-1:]])
    assert (counts - expected).abs().max().item() < 0.002
    a = diffusion.schedule.alphas_cumprod.double()
    sigma = ((1 - a) / a).sqrt()
    median = sigma[t.sort().values[len(t) // 2]].item()
    assert median == pytest.approx(math.exp(-1.2), rel=0.05)


def test_uniform_noise_levels_are_the_default():
    assert make().noise_levels.value == "uniform"


def test_bad_weighting_names_the_key():
    with pytest.raises(ConfigError, match="diffusion.weighting='snr'"):
        make(weighting="snr")
    with pytest.raises(ConfigError, match="diffusion.min_snr_gamma=0"):
        make(weighting="min_snr", min_snr_gamma=0)
    with pytest.raises(ConfigError, match="diffusion.noise_levels='edm'"):
        make(noise_levels="edm")
    with pytest.raises(ConfigError, match="diffusion.p_std=0"):
        make(noise_levels="lognormal", p_std=0)


@pytest.mark.parametrize(
    ("objective", "weighting", "noise_levels"),
    [
        ("eps", "none", "uniform"),
        ("v", "none", "uniform"),
        ("x0", "none", "uniform"),
        ("eps", "min_snr", "uniform"),
        ("v", "min_snr", "uniform"),
        ("v", "none", "lognormal"),
    ],
)
def test_tiny_unet_overfits_one_batch(objective, weighting, noise_levels):
    """150 Adam steps on one batch of 16 images cut the fixed-noise loss at least 10-fold."""
    torch.manual_seed(0)
    model = tiny_unet(num_timesteps=20)
    diffusion = make(objective, T=20, weighting=weighting, noise_levels=noise_levels)
    before, after = overfit_one_batch(model, diffusion)
    print(f"{objective}: loss {before:.4f} → {after:.4f} ({before / after:.0f}x)")
    assert after < before / 10, f"loss {before:.4f} → {after:.4f}"


@pytest.mark.parametrize("objective", ["eps", "x0", "v", "flow"])
def test_edm_weights_weigh_the_x0_error_by_one_plus_sigma_data_squared_snr(objective):
    """w · c_t = 1 + σ_d² SNR_t with c_t the objective's x₀-error scale (SNR, 1, SNR + 1, 1/s²)."""
    diffusion = make(objective, T=1000, weighting="edm", sigma_data=0.5)
    t = torch.tensor([0, 50, 200, 500, 900, 998])
    if objective == "flow":
        s = (t.double() + 1) / 1000
        snr, scale = ((1 - s) / s) ** 2, s**-2
    else:
        a = diffusion.schedule.alphas_cumprod.double()[t]
        snr = a / (1 - a)
        scale = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1}[objective]
    expected = (1 + 0.25 * snr) / scale
    torch.testing.assert_close(diffusion.loss_weights(t), expected.float(), rtol=1e-6, atol=0)


def test_edm_weights_of_v_are_one_at_unit_sigma_data_and_sigma_data_squared_at_low_noise():
    assert torch.allclose(
        make("v", T=1000, weighting="edm", sigma_data=1.0).loss_weights(torch.arange(1000)),
        torch.ones(1000),
        rtol=1e-6,
    )
    weights = make("v", T=1000, weighting="edm", sigma_data=0.5).loss_weights(torch.arange(1000))
    assert weights[0].item() == pytest.approx(0.25, rel=1e-3)  # SNR ≈ 2.5·10⁴ at t = 0
    assert weights[-1].item() == pytest.approx(1.0, abs=1e-6)  # SNR ≈ 0 at t = T − 1
    assert (weights[1:] >= weights[:-1]).all(), "more weight as the noise grows"


def test_shifted_cosine_moves_log_snr_by_the_shift():
    plain = torch.cumprod(1 - cosine_beta_schedule(1000), 0)
    shifted = torch.cumprod(1 - cosine_beta_schedule(1000, log_snr_shift=math.log(4)), 0)
    # Up to t = 900; beyond, β reaches its 0.999 clamp, which caps how fast ᾱ falls.
    difference = torch.logit(shifted[:900]) - torch.logit(plain[:900])
    torch.testing.assert_close(difference, torch.full((900,), math.log(4), dtype=torch.float64))
    assert (shifted > plain).all(), "a positive shift puts every timestep at less noise"
    assert NoiseSchedule("cosine", 1000, log_snr_shift=1.0).alphas_cumprod[500] > 0.5
