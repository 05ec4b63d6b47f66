import math

import pytest
import torch

from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError


@pytest.mark.parametrize("T", [100, 1000])
def test_cosine_matches_closed_form(T):
    schedule = NoiseSchedule("cosine", T)
    s = 0.008

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    unclamped = schedule.betas < 0.999
    assert unclamped[: T - 1].all(), "only the last β may hit the 0.999 clamp"
    torch.testing.assert_close(
        schedule.alphas_cumprod[unclamped].double(), expected[unclamped], atol=1e-6, rtol=1e-5
    )
    assert schedule.betas.max() <= 0.999


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [2, 100, 1000])
def test_alpha_bar_strictly_decreasing(name, T):
    schedule = NoiseSchedule(name, T)
    assert schedule.alphas_cumprod.shape == (T,)
    assert torch.all(schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1])
    assert torch.all(schedule.betas > 0) and torch.all(schedule.betas <= 0.999)


def test_linear_endpoints_scale_with_T():
    ho = NoiseSchedule("linear", 1000)
    assert ho.betas[0].item() == pytest.approx(1e-4) and ho.betas[-1].item() == pytest.approx(0.02)
    short = NoiseSchedule("linear", 100)
    assert short.betas[0].item() == pytest.approx(1e-3)
    assert short.betas[-1].item() == pytest.approx(0.2)


def test_derived_quantities_are_consistent():
    s = NoiseSchedule("cosine", 100)
    assert all(buffer.dtype == torch.float32 for buffer in s.buffers())
    torch.testing.assert_close(s.sqrt_alphas_cumprod**2, s.alphas_cumprod)
    torch.testing.assert_close(s.sqrt_one_minus_alphas_cumprod**2, 1 - s.alphas_cumprod)
    torch.testing.assert_close(s.alphas_cumprod, torch.cumprod(s.alphas.double(), 0).float())
    # β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t), and β̃_1 = 0 (Ho et al. eq. 7).
    assert s.posterior_variance[0] == 0
    t = 50
    expected = s.betas[t] * (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t])
    torch.testing.assert_close(s.posterior_variance[t], expected)
    # Averaging q(x_{t-1}|x_t, x_0) over q(x_t|x_0) must give q(x_{t-1}|x_0):
    # mean coef1 + coef2·√ᾱ_t = √ᾱ_{t-1}, variance coef2²(1 − ᾱ_t) + β̃_t = 1 − ᾱ_{t-1}.
    torch.testing.assert_close(
        s.posterior_mean_coef1 + s.posterior_mean_coef2 * s.sqrt_alphas_cumprod,
        s.alphas_cumprod_prev.sqrt(),
    )
    torch.testing.assert_close(
        s.posterior_mean_coef2**2 * (1 - s.alphas_cumprod) + s.posterior_variance,
        1 - s.alphas_cumprod_prev,
    )
    assert "posterior_variance" not in s.state_dict(), "buffers follow from the config"


def test_q_sample_statistics():
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(NoiseSchedule("cosine", 100))
    n, t = 200_000, 40
    x0 = torch.full((n, 1), 0.5)
    ts = torch.full((n,), t)
    x_t = diffusion.q_sample(x0, ts, torch.randn_like(x0))
    a = diffusion.schedule.alphas_cumprod[t]
    # Standard error of the mean is ≈ 0.002 here; 0.01 is a 5σ bound.
    assert x_t.mean().item() == pytest.approx(a.sqrt().item() * 0.5, abs=0.01)
    assert x_t.std().item() == pytest.approx((1 - a).sqrt().item(), abs=0.01)


def test_bad_schedule_config():
    with pytest.raises(ConfigError, match="schedule.num_timesteps"):
        NoiseSchedule("cosine", 1)
    with pytest.raises(ConfigError, match="schedule.name"):
        NoiseSchedule("quadratic", 100)


def test_sinai_mnist_recipe_is_selectable(tmp_path):
    cfg = compose_config("train", ["experiment=sinai_mnist", f"paths.output_dir={tmp_path}"])
    assert cfg.schedule.name == "cosine" and cfg.schedule.num_timesteps == 100
    assert cfg.model.model_channels == 16 and list(cfg.model.channel_multipliers) == [1, 2, 3]
    assert cfg.data.batch_size == 32 and cfg.trainer.max_epochs == 15
    assert cfg.optimizer._target_ == "torch.optim.Adam"
    cfg = compose_config("train", ["schedule.num_timesteps=100", f"paths.output_dir={tmp_path}"])
    assert cfg.schedule.name == "cosine" and cfg.model.num_timesteps == 100
