"""Consistency distillation and sampling on isotropic Gaussian data x₀ ~ N(μ, s²I), whose
probability-flow ODE is affine: with α = √ᾱ_t, σ = √(1−ᾱ_t) its clean end from x_t is
f*(x_t, t) = μ + s (x_t − α μ)/√(α² s² + σ²). (In x̃ = x_t/α and σ̃ = σ/α the ODE is
dx̃/dσ̃ = (x̃ − D)/σ̃ with D = μ + s²/(s² + σ̃²)(x̃ − μ), so x̃ − μ ∝ √(s² + σ̃²).)"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion.consistency_sampler import ConsistencySampler
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.distill import distill_round
from ddpm_lightning.distill.consistency import ConsistencyDiffusion, consistency_coefficients
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models.mlp import MLP
from ddpm_lightning.train import check_callback_samplers
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.safety import LastCheckpoint
from tests.test_distill import MLP_SETTINGS, SCHEDULE, GaussianPoints

MEAN = torch.tensor([0.3, -0.2], dtype=torch.float64)
SCALE = 0.2
T = 1000


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule("cosine", T)


def alpha_sigma(schedule: NoiseSchedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """(α_t, σ_t), each (B, 1) float64, with t = −1 the clean image (1, 0)."""
    alpha_bar = torch.where(t >= 0, schedule.alphas_cumprod.double()[t.clamp(min=0)], 1.0)
    return alpha_bar.sqrt()[:, None], (1 - alpha_bar).sqrt()[:, None]


def exact_denoiser(schedule: NoiseSchedule, x: Tensor, t: Tensor) -> Tensor:
    """E[x₀ | x_t] = μ + α s²/(α² s² + σ²)(x_t − α μ): (B, 2)."""
    alpha, sigma = alpha_sigma(schedule, t)
    return MEAN + alpha * SCALE**2 / (alpha**2 * SCALE**2 + sigma**2) * (x.double() - alpha * MEAN)


def exact_consistency(schedule: NoiseSchedule, x: Tensor, t: Tensor) -> Tensor:
    """The PF-ODE's clean end f*(x_t, t): (B, 2)."""
    alpha, sigma = alpha_sigma(schedule, t)
    return MEAN + SCALE * (x.double() - alpha * MEAN) / (alpha**2 * SCALE**2 + sigma**2).sqrt()


def as_v(schedule: NoiseSchedule, clean):
    """The v-network whose x̂₀ = α x_t − σ v is `clean(schedule, x, t)`: v = (α x_t − x̂₀)/σ."""

    def network(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        alpha, sigma = alpha_sigma(schedule, t)
        return ((alpha * x.double() - clean(schedule, x, t)) / sigma).float()

    return network


class AffineStudent(nn.Module):
    """F(x_t, t) = a_t x_t + b_t per timestep, started as the exact denoiser's v-output."""

    def __init__(self, schedule: NoiseSchedule):
        super().__init__()
        t = torch.arange(T)
        alpha, sigma = alpha_sigma(schedule, t)
        k = alpha * SCALE**2 / (alpha**2 * SCALE**2 + sigma**2)
        self.a = nn.Parameter(((alpha - k) / sigma)[:, 0].float())
        self.b = nn.Parameter(((k * alpha - 1) * MEAN / sigma).float())

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.a[t][:, None] * x + self.b[t]


def gaussian_points(n: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (MEAN + SCALE * torch.randn(n, 2, generator=generator, dtype=torch.float64)).float()


def consistency_diffusion(schedule: NoiseSchedule, steps: int) -> ConsistencyDiffusion:
    teacher = Denoiser(as_v(schedule, exact_denoiser), schedule, "v", clip_x0=False)
    return ConsistencyDiffusion(schedule, teacher, steps, spacing="trailing", objective="v")


def test_boundary_condition(schedule: NoiseSchedule) -> None:
    """c_skip = 1, c_out = 0 at the clean image for eps and v, so f(x, −1) = x for any network;
    x0 prediction cannot meet the condition and is refused in one line."""
    one = torch.ones(1, dtype=torch.float64)
    for objective in ("eps", "v"):
        assert [c.item() for c in consistency_coefficients(one, objective)] == [1.0, 0.0]
    with pytest.raises(ConfigError, match="diffusion.objective=x0"):
        consistency_coefficients(one, "x0")
    diffusion = consistency_diffusion(schedule, 10)
    x = torch.randn(64, 2)
    clean = torch.full((64,), -1)

    def noise(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return 100 * torch.randn_like(x)

    assert torch.equal(diffusion.consistency_function(noise, x, clean), x)
    student = as_v(schedule, exact_consistency)
    t = torch.full((64,), 0)
    close = diffusion.consistency_function(student, x, t)
    torch.testing.assert_close(close, exact_consistency(schedule, x, t).float())


def test_loss_vanishes_for_the_exact_consistency_function(schedule: NoiseSchedule) -> None:
    """With the exact denoiser as teacher and f* as student the loss is the DDIM step's
    discretisation error only (< 1e-6 on a 100-step grid); a student off by 0.05 in x̂₀ has
    loss ≈ 0.05² = 2.5e-3 wherever its target is the teacher's x̂₀ (the last step)."""
    diffusion = consistency_diffusion(schedule, 100)
    x0 = gaussian_points(4096, seed=1)
    generator = torch.Generator().manual_seed(2)
    exact = diffusion.training_loss(as_v(schedule, exact_consistency), x0, generator=generator)
    assert exact.item() < 1e-6

    def shifted(schedule: NoiseSchedule, x: Tensor, t: Tensor) -> Tensor:
        return exact_consistency(schedule, x, t) + 0.05

    generator = torch.Generator().manual_seed(2)
    perturbed = diffusion.training_loss(as_v(schedule, shifted), x0, generator=generator)
    assert perturbed.item() > 1e-5


def test_training_learns_the_consistency_function(schedule: NoiseSchedule) -> None:
    """A per-timestep affine student, started as the teacher (the exact denoiser), trained with
    Adam for 800 steps on a 25-step trailing grid, learns the map the loss fixes: at every grid
    time, the teacher's DDIM (η = 0) chain down to the clean image, within RMS 0.005. That
    chain is the 25-step discretisation of the PF-ODE, 0.025 from f* at worst, so the student
    is within 0.03 of f*; untrained, it is more than 0.05 off at the top."""
    torch.manual_seed(0)
    diffusion = consistency_diffusion(schedule, 25)
    student = AffineStudent(schedule)
    grid = diffusion.grid.tolist()
    probe = gaussian_points(2048, seed=3)
    noise = torch.randn(2048, 2, generator=torch.Generator().manual_seed(4))

    def rms_errors() -> tuple[Tensor, Tensor]:
        """RMS distance to the DDIM chain and to f*, each (N,), one per grid time."""
        to_chain, to_exact = [], []
        with torch.no_grad():
            for k, t in enumerate(grid[:-1]):
                times = torch.full((2048,), t)
                x = diffusion.q_sample(probe, times, noise)
                chain = x.double()
                for high, low in zip(grid[k:-1], grid[k + 1 :], strict=True):
                    chain = diffusion.teacher_step(
                        chain, torch.full((2048,), high), torch.full((2048,), low)
                    )
                f = diffusion.consistency_function(student, x, times).double()
                to_chain.append((f - chain).pow(2).mean())
                to_exact.append((f - exact_consistency(schedule, x, times)).pow(2).mean())
        return torch.stack(to_chain).sqrt(), torch.stack(to_exact).sqrt()

    assert rms_errors()[1][0].item() > 0.05
    optimizer = torch.optim.Adam(student.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(5)
    for step in range(800):
        x0 = gaussian_points(512, seed=100 + step)
        loss = diffusion.training_loss(student, x0, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    to_chain, to_exact = rms_errors()
    assert to_chain.max().item() < 0.005
    assert to_exact.max().item() < 0.03


def count_calls(network):
    calls = []

    def counted(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        calls.append(int(t[0]))
        return network(x, t, y)

    return counted, calls


@pytest.mark.parametrize("timesteps", [None, [T - 1, 600, 200]])
def test_sampler_draws_the_data_with_one_call_per_step(
    schedule: NoiseSchedule, timesteps: list[int] | None
) -> None:
    """With f* as the network, 1 step (or Algorithm 1's re-noised 3 steps) turns N(0, I) into
    N(μ, s²I): 8,000 2-D draws, mean within 0.01 and std within 0.006 (≈ 4 standard errors).
    network_evaluations() is the step count, and the network is called that many times."""
    network, calls = count_calls(as_v(schedule, exact_consistency))
    denoiser = Denoiser(network, schedule, "v", clip_x0=False)
    sampler = ConsistencySampler(schedule, timesteps=timesteps, batch_size=8000, progress=False)
    samples = sampler.sample(denoiser, (8000, 2), seed=0).double()
    steps = 1 if timesteps is None else len(timesteps)
    assert sampler.steps() == ([T - 1] if timesteps is None else timesteps)
    assert sampler.network_evaluations() == steps
    assert calls == sampler.steps()
    assert (samples.mean(0) - MEAN).abs().max().item() < 0.01
    assert (samples.std(0) - SCALE).abs().max().item() < 0.006


def test_sampler_refuses_timesteps_not_starting_at_the_top(schedule: NoiseSchedule) -> None:
    with pytest.raises(ConfigError, match="sampler.timesteps"):
        ConsistencySampler(schedule, timesteps=[500, 100])
    with pytest.raises(ConfigError, match="sampler.timesteps"):
        ConsistencySampler(schedule, timesteps=[T - 1, 100, 100])


def test_a_consistency_round_trains_and_samples_as_a_plain_model(tmp_path) -> None:
    """`distill.method=consistency` through `distill_round`: the student starts as the teacher,
    trains on the consistency loss, records its round, and its checkpoint samples as a plain
    DiffusionModule with `ConsistencySampler` in the steps it is given."""
    torch.manual_seed(0)
    teacher = DiffusionModule(MLP_SETTINGS, SCHEDULE, {"objective": "v"}, data_shape=(2,))
    settings = {"method": "consistency", "teacher": "a-teacher", "teacher_steps": 4}
    student = distill_round(
        teacher,
        GaussianPoints(batch_size=64),
        settings,
        trainer={"max_steps": 5, "accelerator": "cpu", "default_root_dir": str(tmp_path)},
        callbacks=[LastCheckpoint(dirpath=str(tmp_path / "checkpoints"))],
    )
    assert isinstance(student.diffusion, ConsistencyDiffusion) and isinstance(student.model, MLP)
    assert student.diffusion.grid.tolist() == [999, 749, 499, 249, -1]
    assert student.hparams["distill"] == {**settings, "spacing": "trailing"}
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert read_checkpoint(path)["distill"] == student.hparams["distill"]
    plain = load_module(path)
    sampler = ConsistencySampler(plain.diffusion.schedule, num_steps=2, progress=False)
    network, calls = count_calls(plain.model.eval())
    samples = sampler.sample(Denoiser(network, plain.diffusion.schedule, "v"), (16, 2))
    assert samples.shape == (16, 2) and torch.isfinite(samples).all()
    assert calls == [999, 499] and sampler.network_evaluations() == 2


def test_the_consistency_experiments_callbacks_sample_with_the_consistency_sampler() -> None:
    """`experiment=distill distill=consistency`: the sample-grid and FLD callbacks' samplers
    build for the student (two consistency steps); a setting a callback's sampler does not take
    stops the run before training, in one line naming the callback."""
    student = DiffusionModule(MLP_SETTINGS, SCHEDULE, {"objective": "v"}, data_shape=(2,))
    overrides = ["experiment=distill", "distill=consistency", "paths.output_dir=/tmp/unused"]
    cfg = compose_config("train", overrides)
    check_callback_samplers(cfg.callbacks, student)
    for name in ("sample_grid", "fld"):
        sampler = student.make_sampler(instantiate(cfg.callbacks[name].sampler), progress=False)
        assert isinstance(sampler, ConsistencySampler) and sampler.network_evaluations() == 2
    cfg = compose_config("train", [*overrides, "+callbacks.fld.sampler.eta=1.0"])
    with pytest.raises(ConfigError, match=r"^callbacks\.fld\.sampler: ConsistencySampler does "):
        check_callback_samplers(cfg.callbacks, student)
