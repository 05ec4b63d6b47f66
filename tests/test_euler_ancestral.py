"""sampler=euler_ancestral against closed forms: the moments of Gaussian data from its exact
denoiser, and DDIM with the same η, which it equals in our ᾱ-parameterisation."""

import pytest
import torch
from test_samplers import MU, S, exact_denoiser

from ddpm_lightning.diffusion.euler_ancestral import EulerAncestralSampler
from ddpm_lightning.diffusion.samplers import DDIMSampler
from ddpm_lightning.diffusion.schedules import NoiseSchedule


def test_many_steps_reproduce_the_data_mean_and_variance():
    """N(0.3, 0.2²) per pixel, 16,000 values (standard error of the std ≈ 0.0011). At 500
    steps the measured mean is 0.297-0.298 and the std 0.1977-0.1979 (seeds 0 and 1); at 30
    steps the std is 0.163 (large ancestral steps ignore the spread of x₀ given x_t)."""
    schedule = NoiseSchedule("cosine", 1000)
    sampler = EulerAncestralSampler(schedule, num_steps=500, batch_size=4096, progress=False)
    x = sampler.sample(exact_denoiser(schedule), (4000, 1, 2, 2), seed=0)
    assert x.mean().item() == pytest.approx(MU, abs=0.008)
    assert x.std().item() == pytest.approx(S, abs=0.008)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_it_equals_ddim_with_the_same_eta(eta):
    """x̂₀ + σ_down ε̂ + σ_up z, scaled by √ᾱ_s, is DDIM's update: η = 0 the ODE step, η = 1
    the posterior's variance, the same noise drawn at the same steps."""
    schedule = NoiseSchedule("cosine", 200)
    options = dict(num_steps=20, eta=eta, spacing="karras", progress=False)
    model = exact_denoiser(schedule, "v")
    ours = EulerAncestralSampler(schedule, **options).sample(model, (64, 1, 2, 2), seed=1)
    ddim = DDIMSampler(schedule, **options).sample(model, (64, 1, 2, 2), seed=1)
    torch.testing.assert_close(ours, ddim, rtol=0, atol=1e-5)
