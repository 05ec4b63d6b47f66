import pytest
import torch

from ddpm_lightning.diffusion import GaussianDiffusion
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models import UNet
from ddpm_lightning.schedules import NoiseSchedule


def tiny_unet(num_timesteps: int) -> UNet:
    return UNet(
        model_channels=8,
        channel_multipliers=(1, 2),
        block_groups=4,
        num_attention_heads=2,
        num_timesteps=num_timesteps,
    )


def make(objective="eps", loss="l2", T=100):
    return GaussianDiffusion(NoiseSchedule("cosine", T), objective=objective, loss=loss)


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


@pytest.mark.parametrize("objective", ["eps", "v"])
def test_tiny_unet_overfits_one_batch(objective):
    """150 Adam steps on one batch of 16 images cut the fixed-noise loss at least 10-fold."""
    torch.manual_seed(0)
    model = tiny_unet(num_timesteps=20)
    diffusion = make(objective, T=20)
    x0 = torch.zeros(16, 1, 16, 16)
    x0[:, :, 4:12, 6:10] = 1.0
    x0 = x0 * 2 - 1
    t = torch.arange(16) % 20
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def fixed_loss():
        with torch.no_grad():
            return diffusion.training_loss(model, x0, t=t, noise=noise).item()

    before = fixed_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        optimizer.zero_grad()
        diffusion.training_loss(model, x0, t=t, noise=noise).backward()
        optimizer.step()
    after = fixed_loss()
    print(f"{objective}: loss {before:.4f} → {after:.4f} ({before / after:.0f}x)")
    assert after < before / 10, f"loss {before:.4f} → {after:.4f}"
