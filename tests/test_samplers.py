import math

import pytest
import torch

from ddpm_lightning import load_pretrained
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    HeunSampler,
    Step,
    timestep_sequence,
)
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError

MU, S = 0.3, 0.2


def exact_network(schedule: NoiseSchedule, objective: str):
    """The optimal predictor for data ~ N(MU, S²) per pixel, in the objective's terms.

    E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ),
    E[x₀ | x_t] = μ + √ᾱ s²(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ).
    """

    def model(x, t, y=None):
        a = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x.dim() - 1))).double()
        x = x.double()
        denominator = a * S**2 + 1 - a
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / denominator
        x0 = MU + a.sqrt() * S**2 * (x - a.sqrt() * MU) / denominator
        out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[objective]
        return out.float()

    return model


def exact_denoiser(schedule: NoiseSchedule, objective: str = "eps", **settings) -> Denoiser:
    """`exact_network` as samplers see it, x̂₀ unclipped unless `settings` say otherwise."""
    return Denoiser(
        exact_network(schedule, objective), schedule, objective, clip_x0=False, **settings
    )


def make_sampler(name: str, schedule: NoiseSchedule, **kwargs):
    options = dict(batch_size=4096, progress=False)
    if name == "ddpm":
        return DDPMSampler(schedule, **options, **kwargs)
    if name.startswith("ddim"):
        return DDIMSampler(schedule, num_steps=50, eta=float(name[-1]), **options, **kwargs)
    if name == "heun":
        return HeunSampler(schedule, num_steps=18, **options, **kwargs)
    return DPMSolverSampler(schedule, num_steps=20, **options, **kwargs)


# Std tolerance per sampler. DDPM is exact up to Monte Carlo error (16,000 values: standard
# error of the std ≈ 0.0011, measured 0.197-0.199 over two seeds). Few-step samplers add
# discretisation error; measured over two seeds: DDIM-50 η=0 0.188, DDIM-50 η=1 0.174-0.177
# (large ancestral steps ignore the spread of x₀ given x_t), DPM-Solver++-20 0.206, Heun-18
# (35 network calls) 0.2136-0.2137.
STD_TOLERANCE = {
    "ddpm": 0.008,
    "ddim_eta0": 0.016,
    "ddim_eta1": 0.03,
    "dpm_solver": 0.01,
    "heun": 0.02,
}


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("name", ["ddpm", "ddim_eta0", "ddim_eta1", "dpm_solver", "heun"])
def test_samples_from_the_exact_denoiser_match_the_data(name, objective):
    schedule = NoiseSchedule("cosine", 1000)
    sampler = make_sampler(name, schedule)
    x = sampler.sample(
        exact_denoiser(schedule, objective),
        (4000, 1, 2, 2),
        seed=0,
    )
    assert x.mean().item() == pytest.approx(MU, abs=0.008)
    assert x.std().item() == pytest.approx(S, abs=STD_TOLERANCE[name])


def test_deterministic_ddim_converges_with_more_steps():
    """DDIM-50's under-dispersion is discretisation error: with all 1000 steps it is gone."""
    schedule = NoiseSchedule("cosine", 1000)
    model = exact_denoiser(schedule)
    x = DDIMSampler(schedule, num_steps=1000, batch_size=4096, progress=False).sample(
        model, (4000, 1, 2, 2), seed=0
    )
    assert x.std().item() == pytest.approx(S, abs=0.004)


@pytest.mark.parametrize(("num_steps", "tolerance"), [(10, 0.06), (18, 0.02), (40, 0.006)])
def test_heun_converges_with_more_steps(num_steps, tolerance):
    """Heun's error shrinks with the step count (measured std 0.252, 0.214, 0.203)."""
    schedule = NoiseSchedule("cosine", 1000)
    sampler = HeunSampler(schedule, num_steps=num_steps, batch_size=4096, progress=False)
    x = sampler.sample(exact_denoiser(schedule), (4000, 1, 2, 2), seed=0)
    assert abs(x.std().item() - S) <= tolerance
    # The first step starts above σ_max = 80 (σ_999 ≈ 2·10⁴) and the last ends at σ = 0: Euler.
    assert sampler.network_evaluations() == 2 * num_steps - 2


def test_heun_churn_adds_noise_at_trained_levels_and_keeps_the_target():
    schedule = NoiseSchedule("cosine", 1000)
    plain = HeunSampler(schedule, num_steps=18, progress=False, batch_size=4096)
    churned = HeunSampler(schedule, num_steps=18, churn=40, progress=False, batch_size=4096)
    steps = plain.steps()
    raised = [churned.churned(t) for t in steps]
    assert [plain.churned(t) for t in steps] == steps
    assert all(up >= t for up, t in zip(raised, steps, strict=True))
    assert sum(up > t for up, t in zip(raised, steps, strict=True)) >= len(steps) // 2
    gamma = math.sqrt(2) - 1
    sigma = schedule.sigmas()
    for up, t in zip(raised[5:], steps[5:], strict=True):
        assert sigma[up] / sigma[t] == pytest.approx(1 + gamma, rel=0.1)
    x = churned.sample(exact_denoiser(schedule), (4000, 1, 2, 2), seed=0)
    assert x.mean().item() == pytest.approx(MU, abs=0.008)
    assert x.std().item() == pytest.approx(S, abs=0.04)
    with pytest.raises(ConfigError, match="sampler.churn"):
        HeunSampler(schedule, churn=-1)


def test_network_evaluations_per_sample():
    schedule = NoiseSchedule("cosine", 100)
    assert DDIMSampler(schedule, num_steps=20).network_evaluations() == 20
    assert DPMSolverSampler(schedule, num_steps=15).network_evaluations() == 15
    assert DDPMSampler(schedule).network_evaluations() == 100
    assert HeunSampler(schedule, num_steps=18).network_evaluations() == 34
    low_noise = NoiseSchedule("linear", 1000, beta_end=0.01)  # σ_999 ≈ 12 < 80: all Heun
    assert HeunSampler(low_noise, num_steps=5).network_evaluations() == 9


def test_ddim_with_eta_one_over_all_steps_is_ddpm():
    """σ_t of DDIM with η=1 and s=t−1 equals β̃_t, and both draw noise in the same order."""
    schedule = NoiseSchedule("linear", 100)
    model = exact_denoiser(schedule)
    ddpm = DDPMSampler(schedule, progress=False)
    ddim = DDIMSampler(schedule, num_steps=100, eta=1.0, progress=False)
    a = ddpm.sample(model, (64, 1, 2, 2), seed=5)
    b = ddim.sample(model, (64, 1, 2, 2), seed=5)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "trailing", "logsnr", "karras"])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize(
    ("T", "n"),
    [
        (1000, 50),
        (1000, 1000),
        (1000, 7),
        (100, 33),
        (10, 10),
        (1000, 999),
        (7, 3),
        (1000, 1),
        (1000, 2),
    ],
)
def test_timestep_sequences(spacing, schedule_name, T, n):
    steps = timestep_sequence(NoiseSchedule(schedule_name, T), n, spacing)
    assert len(steps) == n
    assert steps[0] == T - 1
    assert all(a > b for a, b in zip(steps, steps[1:], strict=False)), "strictly decreasing"
    assert steps[-1] >= 0
    if n > 1 and spacing != "trailing":
        assert steps[-1] == 0
    if n == T:
        assert steps == list(range(T - 1, -1, -1))


def test_known_spacings():
    linear = NoiseSchedule("linear", 1000)
    assert timestep_sequence(linear, 10, "trailing") == [
        999,
        899,
        799,
        699,
        599,
        499,
        399,
        299,
        199,
        99,
    ]
    assert timestep_sequence(linear, 5, "uniform") == [999, 749, 500, 250, 0]
    assert timestep_sequence(NoiseSchedule("linear", 100), 4, "quadratic") == [99, 44, 11, 0]
    a = linear.alphas_cumprod
    lam = 0.5 * torch.log(a / (1 - a))
    steps = timestep_sequence(linear, 5, "logsnr")
    gaps = [(lam[b] - lam[a]).item() for a, b in zip(steps, steps[1:], strict=False)]
    assert max(gaps) - min(gaps) < 0.05, f"equal log-SNR gaps, got {gaps}"
    # karras: after the first step (moved to T−1), equal gaps in σ^(1/7) up to rounding.
    root = linear.sigmas() ** (1 / 7)
    steps = timestep_sequence(linear, 8, "karras")
    gaps = [(root[a] - root[b]).item() for a, b in zip(steps[1:], steps[2:], strict=False)]
    assert max(gaps) - min(gaps) < 0.02 * max(gaps), f"equal σ^(1/7) gaps, got {gaps}"


def test_num_steps_below_one_names_the_key():
    with pytest.raises(ConfigError, match="sampler.num_steps=0 must be at least 1"):
        DDIMSampler(NoiseSchedule("cosine", 1000), num_steps=0)


def test_more_steps_than_timesteps_visit_every_timestep():
    sampler = DDIMSampler(NoiseSchedule("cosine", 20), num_steps=50)
    assert sampler.steps() == list(range(19, -1, -1))
    assert sampler.network_evaluations() == 20


def test_bad_spacing_and_variance():
    with pytest.raises(ConfigError, match="sampler.spacing"):
        timestep_sequence(NoiseSchedule("cosine", 100), 10, "leading")
    with pytest.raises(ConfigError, match="sampler.variance"):
        DDPMSampler(NoiseSchedule("cosine", 10), variance="learned")


@pytest.mark.parametrize("name", ["ddpm", "ddim_eta1", "dpm_solver"])
def test_same_seed_same_samples(name):
    schedule = NoiseSchedule("cosine", 50)
    sampler = make_sampler(
        name, schedule, **({"variance": "fixed_large"} if name == "ddpm" else {})
    )
    model = exact_denoiser(schedule)

    def draw(seed):
        return sampler.sample(model, (8, 1, 4, 4), seed=seed)

    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


def test_chunks_clipping_and_callback():
    schedule = NoiseSchedule("cosine", 100)
    calls = []
    sampler = DDIMSampler(schedule, num_steps=10, batch_size=3, progress=False)
    out = sampler.sample(
        Denoiser(lambda x, t, y: torch.full_like(x, 5.0), schedule, "eps"),
        (7, 1, 2, 2),
        callback=lambda i, t, x, x0: calls.append((i, t, x0.abs().max().item())),
    )
    assert out.shape == (7, 1, 2, 2) and out.abs().max() <= 1
    assert len(calls) == 3 * 10, "one call per step per chunk (chunks of 3, 3, 1)"
    assert [c[1] for c in calls[:10]] == sampler.steps()
    assert max(c[2] for c in calls) <= 1.0, "x̂₀ is clipped to [-1, 1]"


def test_heun_follows_the_same_ode_as_many_step_ddim_on_the_shipped_model():
    """Deterministic DDIM is Euler on the probability-flow ODE, so DDIM-200 approximates its
    solution; Heun-18 (34 calls) lands nearer to it than DDIM-20 (mean absolute difference
    0.0068 vs 0.0147 on the shipped MNIST model, 2026-12-01)."""
    module = load_pretrained("mnist")
    noise = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))

    def images(factory, **kwargs):
        sampler = module.make_sampler(factory, progress=False, **kwargs)
        return module.generate(sampler, 8, seed=0, noise=noise)

    reference = images(DDIMSampler, num_steps=200, eta=0.0)
    heun = (images(HeunSampler, num_steps=18) - reference).abs().mean().item()
    ddim = (images(DDIMSampler, num_steps=20, eta=0.0) - reference).abs().mean().item()
    assert heun < 0.01
    assert heun < ddim / 2


@pytest.mark.parametrize("name", ["ddpm", "ddim_eta1", "dpm_solver", "heun_churn"])
def test_any_split_of_the_samples_gives_the_same_images(name):
    """Sample i's noise depends on (seed, i) only: samples 0-3 and 4-9 drawn apart (and in
    chunks of 3) equal all ten drawn at once, bit for bit."""
    schedule = NoiseSchedule("cosine", 50)
    options = {"churn": 40} if name == "heun_churn" else {}
    sampler = make_sampler(name.removesuffix("_churn"), schedule, **options)
    model = exact_denoiser(schedule)
    whole = sampler.sample(model, (10, 1, 4, 4), seed=7)
    sampler.batch_size = 3
    first = sampler.sample(model, (4, 1, 4, 4), seed=7)
    rest = sampler.sample(model, (6, 1, 4, 4), seed=7, indices=range(4, 10))
    assert torch.equal(torch.cat([first, rest]), whole)
    shuffled = sampler.sample(model, (10, 1, 4, 4), seed=7, indices=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert torch.equal(shuffled, whole.flip(0))
    assert not torch.equal(sampler.sample(model, (10, 1, 4, 4), seed=8), whole)


def test_a_raw_network_is_refused():
    """A sampler takes a Denoiser, which knows the objective; a bare network does not."""
    schedule = NoiseSchedule("cosine", 20)
    with pytest.raises(TypeError, match="takes a Denoiser"):
        DDIMSampler(schedule, num_steps=4).sample(exact_network(schedule, "v"), (2, 1, 2, 2))


@pytest.mark.parametrize("name", ["ddpm", "ddim_eta1", "dpm_solver", "heun"])
def test_starting_at_a_timestep_continues_the_full_run(name):
    """Stopping a run at the visited timestep t0 and starting `sample(noise=x_t0, start=t0)`
    gives the full run's images; only the steps from t0 are taken and counted."""
    schedule = NoiseSchedule("cosine", 50)
    sampler = make_sampler(name, schedule)
    model = exact_denoiser(schedule)
    kept = {}
    whole = sampler.sample(
        model, (6, 1, 2, 2), seed=3, callback=lambda i, t, x, x0: kept.setdefault(t, x)
    )
    visited = [t for _, t in sampler.visited()]
    t0 = visited[len(visited) // 2]
    calls = []
    counting = Denoiser(
        lambda x, t, y: calls.append(1) or exact_network(schedule, "eps")(x, t, y),
        schedule,
        "eps",
        clip_x0=False,
    )
    resumed = sampler.sample(counting, (6, 1, 2, 2), seed=3, noise=kept[t0], start=t0)
    torch.testing.assert_close(resumed, whole, rtol=0, atol=1e-5)
    later = [i for i, t in enumerate(visited) if t <= t0]
    expected = len(later)
    if name == "heun":
        expected = sum(1 if sampler.euler_only(i) else 2 for i in later)
    assert len(calls) == sampler.network_evaluations(start=t0) == expected
    assert expected < sampler.network_evaluations()


def test_one_step_from_a_step_context():
    """`advance` of a `Step` is one update: DDIM η = 0 from x_t to x_s is √ᾱ_s x̂₀ + √(1−ᾱ_s) ε̂."""
    schedule = NoiseSchedule("cosine", 100)
    sampler = DDIMSampler(schedule, num_steps=10, eta=0.0)
    model = exact_denoiser(schedule)
    x = torch.randn(3, 1, 2, 2)
    i, t = 2, sampler.steps()[2]
    noise = SampleNoise(0, range(3), (1, 2, 2), len(sampler.steps()))
    x0, eps = model.predict(x, t, None)
    a_s = schedule.alphas_cumprod[sampler.steps()[3]]
    expected = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    torch.testing.assert_close(sampler.advance(model, Step(i, t, x, None, noise)), expected)
