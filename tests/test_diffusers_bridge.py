"""sampler=diffusers: diffusers' schedulers built from our schedule and driven through our
Denoiser, against our DDIM and the exact denoisers of Gaussian and mixture data, and through
every command."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import writing_config
from hydra.utils import instantiate
from test_guidance import MEANS, class_conditional_denoiser
from test_samplers import MU, S, exact_denoiser

from ddpm_lightning import load_pretrained
from ddpm_lightning.config import compose_config
from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.diffusers_bridge import TESTED_SCHEDULERS, DiffusersSampler
from ddpm_lightning.diffusion.guidance import balanced_labels
from ddpm_lightning.diffusion.samplers import DDIMSampler, timestep_sequence
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.sharing.card import load_section

needs_diffusers = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None,
    reason="diffusers is not installed (the hf extra: pip install 'ddpm_lightning[hf]')",
)
OPTIONS = dict(batch_size=4096, progress=False)
# Std of the samples of N(0.3, 0.2²) per scheduler at 50 steps (T=1000, cosine, trailing
# spacing), measured over seeds 0 and 1: DDIM and Euler (the same ODE step) 0.1872-0.1874, DDPM
# 0.1745-0.1775 (large ancestral steps), DPM-Solver++(2M) 0.1989-0.1991, UniPC 0.1984-0.1985.
STD_TOLERANCE = {
    "DDIMScheduler": 0.016,
    "DDPMScheduler": 0.03,
    "DPMSolverMultistepScheduler": 0.005,
    "EulerDiscreteScheduler": 0.016,
    "UniPCMultistepScheduler": 0.005,
}
# Per-class std of the mixture (s = 0.1, T=200, 50 steps, γ=1), measured over seeds 0 and 1:
# DDIM and Euler 0.086-0.088, DDPM 0.078-0.082, DPM-Solver++ and UniPC 0.092-0.095.
CLASS_STD_TOLERANCE = {
    "DDIMScheduler": 0.02,
    "DDPMScheduler": 0.03,
    "DPMSolverMultistepScheduler": 0.01,
    "EulerDiscreteScheduler": 0.02,
    "UniPCMultistepScheduler": 0.01,
}


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ConfigError, match=r"pip install 'ddpm_lightning\[hf\]'") as error:
        DiffusersSampler(NoiseSchedule("cosine", 100))
    assert "sampler=diffusers needs diffusers" in str(error.value)
    assert "\n" not in str(error.value)


@needs_diffusers
def test_the_scheduler_follows_our_schedule_and_takes_v():
    """Whatever the network predicts, the scheduler is handed v of the denoiser's (x̂₀, ε̂)."""
    schedule = NoiseSchedule("sigmoid", 100)
    sampler = DiffusersSampler(schedule, scheduler="DDIMScheduler")
    config = sampler.scheduler.config
    assert config.prediction_type == "v_prediction"
    assert config.num_train_timesteps == 100
    assert torch.equal(torch.tensor(config.trained_betas, dtype=torch.float32), schedule.betas)
    # diffusers multiplies ᾱ up in float32, we in float64: measured 1.3e-5 apart at most.
    torch.testing.assert_close(
        sampler.scheduler.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-4, atol=0
    )
    assert config.clip_sample is False, "x̂₀ is clipped by clip_x0, once, for every scheduler"
    assert sampler.steps() == timestep_sequence(schedule, 20, "trailing")


@needs_diffusers
@pytest.mark.parametrize("name", ["NoSuchScheduler", "UNet2DModel"])
def test_an_unknown_scheduler_says_how_to_list_them(name):
    with pytest.raises(ConfigError, match=f"sampler.scheduler={name} is not a scheduler") as error:
        DiffusersSampler(NoiseSchedule("cosine", 100), scheduler=name)
    assert "print([n for n in dir(diffusers) if n.endswith('Scheduler')])" in str(error.value)
    assert "\n" not in str(error.value)


@needs_diffusers
def test_a_scheduler_whose_dependency_is_missing_names_it(monkeypatch):
    import diffusers

    stand_in = type("NeedsSdeScheduler", (), {"_backends": ["torch", "torchsde"]})
    monkeypatch.setattr(diffusers, "NeedsSdeScheduler", stand_in, raising=False)
    with pytest.raises(ConfigError, match="NeedsSdeScheduler needs torch and torchsde"):
        DiffusersSampler(NoiseSchedule("cosine", 100), scheduler="NeedsSdeScheduler")


@needs_diffusers
def test_bad_scheduler_options_name_the_key():
    schedule = NoiseSchedule("cosine", 100)
    with pytest.raises(ConfigError, match=r"sampler.kwargs=\{'no_such_option': 1\}"):
        DiffusersSampler(schedule, kwargs={"no_such_option": 1})
    with pytest.raises(ConfigError, match="sampler.kwargs.prediction_type is set by the model"):
        DiffusersSampler(schedule, kwargs={"prediction_type": "epsilon"})
    with pytest.raises(ConfigError, match="sampler.eta=1.0"):
        DiffusersSampler(schedule, scheduler="DPMSolverMultistepScheduler", eta=1.0)
    with pytest.raises(ConfigError, match="sampler.num_steps=0 must be at least 1"):
        DiffusersSampler(schedule, num_steps=0)


@needs_diffusers
def test_more_steps_than_timesteps_visit_every_timestep():
    """As with our samplers: 101 steps of a T=100 schedule are its 100 timesteps."""
    sampler = DiffusersSampler(NoiseSchedule("cosine", 100), "DDIMScheduler", num_steps=101)
    assert sampler.steps() == list(range(99, -1, -1))


@needs_diffusers
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
def test_ddim_scheduler_equals_our_ddim_on_gaussian_data(objective, eta):
    """Same spacing (trailing: 999, 979, …, 19 for T=1000, n=50), same start noise, and with
    η=1 the same per-step noise (the samples' own, handed to the scheduler as variance_noise)."""
    schedule = NoiseSchedule("cosine", 1000)
    ours = DDIMSampler(schedule, 50, eta, "trailing", **OPTIONS)
    theirs = DiffusersSampler(schedule, "DDIMScheduler", 50, eta, **OPTIONS)
    assert theirs.steps() == ours.steps()
    model = exact_denoiser(schedule, objective)
    a = ours.sample(model, (64, 1, 2, 2), seed=3)
    b = theirs.sample(model, (64, 1, 2, 2), seed=3)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)  # measured ≤ 1.6e-6


@needs_diffusers
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_scheduler_equals_our_ddim_with_guidance_on_mixture_data(eta):
    schedule = NoiseSchedule("cosine", 200)
    ours = DDIMSampler(schedule, num_steps=50, eta=eta, spacing="trailing", **OPTIONS)
    theirs = DiffusersSampler(schedule, "DDIMScheduler", num_steps=50, eta=eta, **OPTIONS)
    network = class_conditional_denoiser(schedule, "v")
    model = Denoiser(network, schedule, "v", clip_x0=False, guidance_scale=2.0)
    y = balanced_labels(300, 3)
    a = ours.sample(model, (300, 1, 2, 2), seed=3, y=y)
    b = theirs.sample(model, (300, 1, 2, 2), seed=3, y=y)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-4)  # measured ≤ 1.6e-5


@needs_diffusers
@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("name", TESTED_SCHEDULERS)
def test_each_scheduler_reproduces_gaussian_data(name, objective):
    schedule = NoiseSchedule("cosine", 1000)
    sampler = DiffusersSampler(schedule, name, num_steps=50, **OPTIONS)
    x = sampler.sample(
        exact_denoiser(schedule, objective),
        (4000, 1, 2, 2),
        seed=0,
    )
    assert x.mean().item() == pytest.approx(MU, abs=0.008)
    assert x.std().item() == pytest.approx(S, abs=STD_TOLERANCE[name])


@needs_diffusers
@pytest.mark.parametrize("name", TESTED_SCHEDULERS)
def test_each_scheduler_reproduces_each_class_of_mixture_data(name):
    schedule = NoiseSchedule("cosine", 200)
    sampler = DiffusersSampler(schedule, name, num_steps=50, **OPTIONS)
    network = class_conditional_denoiser(schedule, "eps")
    y = balanced_labels(3000, 3)
    x = sampler.sample(
        Denoiser(network, schedule, "eps", clip_x0=False, guidance_scale=1.0),
        (3000, 1, 2, 2),
        seed=0,
        y=y,
    )
    for c in range(3):
        # 4,000 values per class: standard error of the mean 0.1/√4000 ≈ 0.0016.
        assert x[y == c].mean().item() == pytest.approx(MEANS[c].item(), abs=0.01)
        assert x[y == c].std().item() == pytest.approx(0.1, abs=CLASS_STD_TOLERANCE[name])


@needs_diffusers
def test_multistep_history_is_cleared_between_chunks():
    """Chunks of 3 give the chunk-of-everything samples: each chunk starts a fresh history."""
    schedule = NoiseSchedule("cosine", 100)
    model = exact_denoiser(schedule, "eps")
    noise = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    whole, chunked = (
        DiffusersSampler(schedule, num_steps=10, batch_size=size, progress=False) for size in (8, 3)
    )
    calls = []
    a = whole.sample(model, noise.shape, noise=noise)
    b = chunked.sample(model, noise.shape, noise=noise, callback=lambda *args: calls.append(args))
    torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
    assert chunked.network_evaluations() == 10 and len(calls) == 3 * 10
    assert [t for _, t, _, _ in calls[:10]] == chunked.steps()


@needs_diffusers
def test_sample_config_with_scheduler_options_samples_a_shipped_model(tmp_path):
    cfg = compose_config(
        "sample",
        [
            "pretrained=mnist",
            f"paths.output_dir={tmp_path}",
            "sampler=diffusers",
            "sampler.num_steps=3",
            "+sampler.kwargs.algorithm_type=dpmsolver++",
            "+sampler.kwargs.solver_order=3",
        ],
    )
    validate_config(cfg, "sample")
    module = load_pretrained("mnist")
    sampler = module.make_sampler(instantiate(cfg.sampler), progress=False)
    assert sampler.scheduler.config.solver_order == 3
    images = module.generate(sampler, 2, seed=0)
    assert images.shape == (2, 1, 32, 32) and images.abs().max() <= 1


@needs_diffusers
def test_evaluate_with_a_diffusers_scheduler(tmp_path):
    metrics = evaluate(
        writing_config(
            "evaluate",
            tmp_path,
            "pretrained=mnist",
            "sampler=diffusers",
            "sampler.scheduler=UniPCMultistepScheduler",
            "sampler.num_steps=2",
            "num_samples=100",
        )
    )
    assert sum(metrics["label_counts"]) == 100 and metrics["fld"] > 0
    assert metrics["sampler"]["scheduler"] == "UniPCMultistepScheduler"


@needs_diffusers
def test_the_sample_grid_callback_draws_with_a_diffusers_scheduler(tmp_path):
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={tmp_path}",
            "+sampler@callbacks.sample_grid.sampler=diffusers",
            "callbacks.sample_grid.sampler.scheduler=EulerDiscreteScheduler",
            "callbacks.sample_grid.sampler.num_steps=2",
            "callbacks.sample_grid.num_samples=4",
        ],
    )
    validate_config(cfg, "train")
    callback = instantiate(cfg.callbacks.sample_grid)
    callback.draw(SimpleNamespace(loggers=[], global_step=0), load_pretrained("mnist"), "end.png")
    assert (tmp_path / "samples" / "end.png").is_file()


def test_a_model_card_recommending_a_diffusers_scheduler_shows_how_to_use_it():
    sampler = {
        "_target_": "ddpm_lightning.diffusion.diffusers_bridge.DiffusersSampler",
        "scheduler": "DDIMScheduler",
        "num_steps": 10,
    }
    section = load_section({"sampler": sampler}, "me/tiny")
    assert "sampler=diffusers sampler.scheduler=DDIMScheduler sampler.num_steps=10" in section
    assert "from ddpm_lightning.diffusion import DiffusersSampler" in section
