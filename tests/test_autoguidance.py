"""Autoguidance (Karras et al. 2024): the model's x̂₀ guided away from a weaker model's on
Gaussian data, where both denoisers are exact, and through the sample command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddpm_lightning import sample as sample_command
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.guidance import check_guide_pairing
from ddpm_lightning.diffusion.samplers import DDIMSampler
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import evaluate
from tests.conftest import run_command, tiny_model_folder, writing_config

MU, S_GOOD, S_WEAK = 0.3, 0.2, 0.4
T = 100


def gaussian_network(schedule: NoiseSchedule, objective: str, s: float, calls: list | None = None):
    """The exact predictor of data ~ N(MU, s²) per pixel in the objective's terms:
    E[x₀ | x_t] = μ + √ᾱ s² (x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ), ε from x₀ by Ho et al. 2020, eq. 4."""

    def network(x, t, y=None):
        if calls is not None:
            calls.append(int(t[0]))
        a = schedule.alphas_cumprod[t].reshape(-1, *([1] * (x.dim() - 1))).double()
        x = x.double()
        x0 = MU + a.sqrt() * s**2 * (x - a.sqrt() * MU) / (a * s**2 + 1 - a)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[objective].float()

    return network


def x0_gain(schedule: NoiseSchedule, t: int, s: float) -> float:
    """∂E[x₀ | x_t]/∂x_t for N(MU, s²) data: √ᾱ s²/(ᾱ s² + 1 − ᾱ)."""
    a = float(schedule.alphas_cumprod[t])
    return a**0.5 * s**2 / (a * s**2 + 1 - a)


def guided_denoiser(schedule, scale, interval=None, calls=None, objective="v") -> Denoiser:
    """The exact N(MU, S_GOOD²) denoiser (predicting `objective`) guided away from the exact
    N(MU, S_WEAK²) one (predicting ε), x̂₀ unclipped."""
    weak = Denoiser(
        gaussian_network(schedule, "eps", S_WEAK, calls), schedule, "eps", clip_x0=False
    )
    return Denoiser(
        gaussian_network(schedule, objective, S_GOOD),
        schedule,
        objective,
        clip_x0=False,
        guidance_scale=scale,
        guidance_interval=interval,
        guide=weak,
    )


@pytest.mark.parametrize("scale", [1.0, 2.0, 3.0])
def test_the_guided_x0_is_the_weak_one_plus_gamma_times_the_difference(scale):
    """x̂₀ = x̂₀_weak + γ (x̂₀ − x̂₀_weak) whatever each network predicts (here v against ε):
    for Gaussian data a line in x_t of slope k_weak + γ (k − k_weak), through x̂₀(√ᾱ μ) = μ."""
    schedule = NoiseSchedule("cosine", T)
    denoiser = guided_denoiser(schedule, scale)
    x = torch.linspace(-2, 2, 9).reshape(9, 1)
    for t in (5, 50, 95):
        x0, eps = denoiser.predict(x, t, None)
        k_good, k_weak = x0_gain(schedule, t, S_GOOD), x0_gain(schedule, t, S_WEAK)
        a = float(schedule.alphas_cumprod[t])
        expected = MU + (k_weak + scale * (k_good - k_weak)) * (x.double() - a**0.5 * MU)
        torch.testing.assert_close(x0.double(), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            eps.double(), (x.double() - a**0.5 * x0.double()) / (1 - a) ** 0.5, atol=1e-5, rtol=0
        )


def test_guiding_away_from_a_broader_model_narrows_the_samples():
    """Away from N(MU, S_WEAK²), S_WEAK > S_GOOD, every x̂₀ leans less on x_t: deterministic
    DDIM samples keep the mean and shrink their spread (measured on 4,000 values: 0.187
    unguided, below S_GOOD because T = 100 starts from N(0, 1) rather than the exact marginal;
    0.089 at γ = 2)."""
    schedule = NoiseSchedule("cosine", T)
    spreads = []
    for scale in (1.0, 2.0):
        sampler = DDIMSampler(schedule, num_steps=50, eta=0.0, batch_size=4000, progress=False)
        samples = sampler.sample(guided_denoiser(schedule, scale), (4000, 1), seed=0)
        assert abs(float(samples.mean()) - MU) < 0.02
        spreads.append(float(samples.std()))
    assert abs(spreads[0] - S_GOOD) < 0.02
    assert spreads[1] < spreads[0] - 0.03


def test_the_guide_is_called_only_inside_the_guidance_interval():
    """σ ∈ (0.3, 4]: the guide's calls are the visited timesteps whose σ lies there, one each."""
    schedule = NoiseSchedule("cosine", T)
    calls: list[int] = []
    sampler = DDIMSampler(schedule, num_steps=20, eta=1.0, batch_size=8, progress=False)
    denoiser = guided_denoiser(schedule, 2.0, interval=(0.3, 4), calls=calls)
    sampler.sample(denoiser, (8, 1), seed=0)
    sigmas = schedule.sigmas()
    inside = [t for t in sampler.steps() if 0.3 < float(sigmas[t]) <= 4]
    assert calls == inside and 0 < len(inside) < 20


def test_an_unconditional_model_takes_gamma_only_with_a_guide():
    """γ ≠ 1 needs a conditional model, or a guide (then γ defaults to AUTOGUIDANCE_SCALE, 1.5,
    and the Denoiser keeps its interval); a guide on other noise levels is refused in one line."""
    schedule = NoiseSchedule("cosine", T)
    network = gaussian_network(schedule, "v", S_GOOD)
    with pytest.raises(ConfigError, match="needs a conditional checkpoint"):
        Denoiser(network, schedule, "v", guidance_scale=2.0)
    weak = Denoiser(gaussian_network(schedule, "eps", S_WEAK), schedule, "eps", clip_x0=False)
    guided = Denoiser(network, schedule, "v", guide=weak)
    assert guided.settings()["guidance_scale"] == 1.5
    assert guided.settings()["guidance_interval"] == [0.3, 4.0]
    other = NoiseSchedule("linear", T)
    weak_other = Denoiser(gaussian_network(other, "eps", S_WEAK), other, "eps")
    with pytest.raises(ConfigError, match=r"^guide= has other noise levels than the model"):
        Denoiser(network, schedule, "v", guide=weak_other)


class Student:
    """A stand-in for a network of distilled guidance: it takes γ as an input."""

    takes_guidance = True


@pytest.mark.parametrize(
    ("guide", "guide_sigmas", "network", "objectives", "message"),
    [
        (Student(), [0.5, 1.0], object(), None, r"^g= takes γ as an input \(a student of"),
        (object(), [0.5, 1.0], Student(), None, r"^g= mixes .* the teacher takes γ .*: drop g=$"),
        (
            object(),
            [0.5, 2.0],
            object(),
            None,
            r"^g= has other noise levels than the teacher "
            r"\(another noise schedule\)",
        ),
        (object(), [0.5], object(), None, r"\(T = 1 against 2\)"),
        (object(), [0.5, 2.0], object(), ("flow", "v"), r"\(diffusion.objective=flow against v\)"),
    ],
)
def test_a_guide_pairs_only_at_the_same_noise_levels_and_without_a_guidance_input(
    guide, guide_sigmas, network, objectives, message
):
    """The check autoguided sampling and an autoguided teacher share names the key and what
    differs, in one line."""
    with pytest.raises(ConfigError, match=message) as error:
        check_guide_pairing(
            guide,
            guide_sigmas,
            network,
            [0.5, 1.0],
            key="g=",
            model="teacher",
            objectives=objectives,
        )
    assert "\n" not in str(error.value)


def test_two_networks_trained_as_usual_at_the_same_noise_levels_pair():
    check_guide_pairing(
        object(), [0.5, 1.0], object(), [0.5, 1.0], key="g=", model="model", objectives=("v", "eps")
    )


def sampled(argv: list[str], out, monkeypatch, capsys) -> dict:
    code, _, stderr = run_command(
        sample_command.main, [*argv, f"hydra.run.dir={out}"], monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    return json.loads(str(np.load(out / "samples.npz")["metadata"]))


def test_the_sample_command_draws_with_a_guide_and_records_it(tmp_path, monkeypatch, capsys):
    """guide=FOLDER changes the images against the same model unguided, γ = 1.5 at every step is
    recorded with the guide; a guide of other data is refused in one line naming guide=."""
    model = tiny_model_folder(tmp_path / "model", seed=0)
    weak = tiny_model_folder(tmp_path / "weak", seed=1)
    argv = [f"pretrained={model}", "num_samples=4", "sampler.num_steps=4", "gif_images=1"]
    plain = sampled(argv, tmp_path / "plain", monkeypatch, capsys)
    guided = sampled([*argv, f"guide={weak}"], tmp_path / "guided", monkeypatch, capsys)
    assert "guide" not in plain and guided["guide"] == str(weak)
    assert guided["sampler"]["guidance_scale"] == 1.5
    assert guided["sampler"]["guidance_interval"] is None
    images = [np.load(tmp_path / name / "samples.npz")["images"] for name in ("plain", "guided")]
    assert np.abs(images[0].astype(int) - images[1].astype(int)).max() > 0
    other = tiny_model_folder(tmp_path / "colour", seed=1, shape=(3, 32, 32))
    code, _, stderr = run_command(
        sample_command.main,
        [*argv, f"guide={other}", f"hydra.run.dir={tmp_path / 'refused'}"],
        monkeypatch,
        capsys,
    )
    assert code != 0
    assert f"guide={other} models data of shape (3, 32, 32)" in stderr


def test_evaluate_refuses_a_guide_it_would_not_use(tmp_path):
    """A guide with samples= (already drawn) or metric=bpd (the model's own likelihood) is a
    one-line error, before anything is scored."""
    model = tiny_model_folder(tmp_path / "model")
    weak = tiny_model_folder(tmp_path / "weak", seed=1)
    npz = tmp_path / "samples.npz"
    np.savez(npz, images=np.zeros((2, 32, 32, 1), np.uint8))
    cases = [
        ([f"samples={npz}"], rf"^guide={weak} guides fresh samples .* drop one of them$"),
        ([f"pretrained={model}", "metric=bpd"], rf"^metric=bpd .* guide={weak} .*: drop guide=$"),
    ]
    for overrides, message in cases:
        cfg = writing_config("evaluate", tmp_path / "out", *overrides, f"guide={weak}")
        with pytest.raises(ConfigError, match=message):
            evaluate(cfg)
    assert not (tmp_path / "out" / "metrics.json").exists()
