"""Noise coupling: the immiscible assignment is the exact optimum (brute force over every
permutation for small batches), a permutation of the draws, and `none` changes nothing."""

from __future__ import annotations

import itertools

import pytest
import torch

from ddpm_lightning.diffusion.coupling import assign_noise, assignment
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError


def total_distance(images: torch.Tensor, noise: torch.Tensor) -> float:
    return ((images - noise) ** 2).sum().item()


def draws(batch: int, seed: int, shape=(1, 4, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, *shape, generator=generator, dtype=torch.float64) * 2 - 1
    return images, torch.randn(batch, *shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("batch", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignment_is_the_brute_force_optimum(batch, seed):
    images, noise = draws(batch, seed)
    best = min(
        total_distance(images, noise[list(order)]) for order in itertools.permutations(range(batch))
    )
    assert total_distance(images, assign_noise(images, noise)) == pytest.approx(best, rel=1e-12)


def test_assignment_is_a_permutation_of_the_draws():
    images, noise = draws(64, 7, shape=(3, 8, 8))
    order = assignment(images, noise)
    assert sorted(order.tolist()) == list(range(64))
    coupled = assign_noise(images, noise)
    torch.testing.assert_close(coupled, noise[order], rtol=0, atol=0)
    torch.testing.assert_close(coupled.sort(0).values, noise.sort(0).values, rtol=0, atol=0)


def test_assignment_shortens_the_paths_of_a_large_batch():
    """Against the drawn order, the optimal order cuts the mean ‖x₀ − ε‖² of 128 CIFAR-sized
    draws; both are ~ d (1 + 1/3) for d = 3072, the cut is a few per cent."""
    images, noise = draws(128, 3, shape=(3, 32, 32))
    drawn = total_distance(images, noise)
    coupled = total_distance(images, assign_noise(images, noise))
    assert coupled < 0.99 * drawn


def test_none_leaves_the_noise_as_drawn():
    images, noise = draws(8, 4)
    assert assign_noise(images, noise, "none") is noise


def test_an_unknown_coupling_is_refused():
    images, noise = draws(2, 5)
    with pytest.raises(ValueError, match="ot"):
        assign_noise(images, noise, "ot")


def test_the_training_loss_noises_each_image_with_its_assigned_draw():
    """diffusion.noise_coupling=immiscible: the loss equals that of the explicitly assigned
    noise from the same generator; none: that of the noise as drawn."""
    images = draws(16, 6)[0].float()
    t = torch.full((16,), 5)

    def network(x_t, t, y):
        return x_t

    for coupling in ("none", "immiscible"):
        diffusion = GaussianDiffusion(NoiseSchedule(num_timesteps=10), noise_coupling=coupling)
        generator = torch.Generator().manual_seed(0)
        loss = diffusion.training_loss(network, images, t=t, generator=generator)
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
        coupled = assign_noise(images, noise, coupling)
        expected = diffusion.training_loss(network, images, t=t, noise=coupled)
        torch.testing.assert_close(loss, expected, rtol=0, atol=0)


def test_an_unknown_coupling_setting_names_the_key():
    with pytest.raises(ConfigError, match="diffusion.noise_coupling"):
        GaussianDiffusion(NoiseSchedule(num_timesteps=10), noise_coupling="ot")
