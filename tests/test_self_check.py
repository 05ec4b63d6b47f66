"""The self-check: a conditional model's own classification of its samples, and the drawing
again of the samples it puts in another class."""

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from ddpm_lightning.config import compose_config
from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.samplers import DDIMSampler
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.diffusion.self_check import (
    check_seed,
    check_timesteps,
    label_errors,
    off_own_class,
    self_check_settings,
)
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.training import drawing
from ddpm_lightning.training.checkpoints import load_module
from ddpm_lightning.training.drawing import Drawing, draw_checked_samples
from tests.test_conditional import conditional  # noqa: F401  (a fixture)

TRAINER = {"_target_": "lightning.Trainer", "accelerator": "cpu", "devices": 1}


class ClassMeans(nn.Module):
    """An x0-predicting network whose x̂₀ under label y is the constant image means[y],
    whatever x_t is; `noisy` adds x_t, so the noise matters."""

    def __init__(self, means, noisy=False):
        super().__init__()
        self.means = nn.Parameter(torch.tensor(means), requires_grad=False)
        self.noisy = noisy

    def forward(self, x_t, t, y):
        out = self.means[y].view(-1, 1, 1, 1).expand_as(x_t)
        return out + x_t if self.noisy else out


def x0_diffusion(num_timesteps=100):
    return GaussianDiffusion(NoiseSchedule(num_timesteps=num_timesteps), objective="x0")


def test_check_timesteps_are_the_midpoints_of_equal_parts():
    assert check_timesteps(1000, 10).tolist() == list(range(50, 1000, 100))
    assert check_timesteps(100, 4).tolist() == [12, 37, 62, 87]
    assert check_timesteps(1000, 1).tolist() == [500]


def test_label_errors_are_the_squared_distances_of_the_class_means():
    means = [-0.5, 0.0, 0.75]
    images = torch.tensor([0.75, -0.5, 0.0, 0.75]).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    errors = label_errors(
        ClassMeans(means), x0_diffusion(), images, 3, check_timesteps(100, 5), [1, 2, 3, 4]
    )
    expected = (images[:, 0, 0, 0].view(-1, 1) - torch.tensor(means).view(1, -1)) ** 2
    assert errors.shape == (4, 3)
    assert torch.allclose(errors, expected)
    assert off_own_class(errors, torch.tensor([2, 0, 1, 1]), 0.0).tolist() == [
        False,
        False,
        False,
        True,
    ]


def test_each_images_noise_comes_from_its_seed_alone():
    network, diffusion = ClassMeans([-0.2, 0.3], noisy=True), x0_diffusion()
    images = torch.rand(3, 1, 4, 4) * 2 - 1
    timesteps = check_timesteps(100, 3)
    seeds = [check_seed(0, i) for i in range(3)]
    together = label_errors(network, diffusion, images, 2, timesteps, seeds, batch_size=4)
    alone = label_errors(network, diffusion, images[2:], 2, timesteps, seeds[2:])
    assert torch.allclose(together[2:], alone)
    other = label_errors(network, diffusion, images[2:], 2, timesteps, [check_seed(1, 2)])
    assert not torch.allclose(other, alone)
    assert check_seed(0, 1) != check_seed(1, 0)


@pytest.mark.parametrize(
    ("margin", "off"), [(0.0, [False, False, True]), (0.05, [True, False, True])]
)
def test_a_sample_passes_when_every_other_label_is_worse_by_the_margin(margin, off):
    errors = torch.tensor([[1.0, 1.04, 2.0], [1.0, 1.06, 2.0], [0.5, 1.0, 1.0]])
    assert off_own_class(errors, torch.tensor([0, 0, 1]), margin).tolist() == off


def draw(module, check, labels=None, num_samples=6):
    """draw_checked_samples with 3 deterministic DDIM steps and seed 0 on the CPU."""
    drawing = Drawing(pretrained=None, ckpt_path=None, sampler={}, trainer=TRAINER, seed=0)
    settings = {"num_samples": num_samples, "self_check": check}
    make_sampler = partial(DDIMSampler, num_steps=3, eta=0.0)
    return draw_checked_samples(drawing, module, make_sampler, labels, settings)


def drawn_from(module, labels, first):
    """The samples of labels (N,) drawn with the indices first … first + N − 1, unchecked."""
    sampler = module.make_sampler(partial(DDIMSampler, num_steps=3, eta=0.0), progress=False)
    indices = range(first, first + len(labels))
    return module.generate(sampler, len(labels), 0, labels=labels, indices=indices)


def test_every_failed_sample_is_drawn_again_with_the_next_indices(conditional):  # noqa: F811
    module, labels = load_module(conditional), torch.arange(6)
    # No x̂₀ error is 1,000 times another label's: every sample fails every round.
    images, _, record = draw(module, {"rounds": 2, "num_levels": 2, "margin": 999.0}, labels)
    assert record == {
        "rounds": 2,
        "num_levels": 2,
        "margin": 999.0,
        "checked": [6, 6],
        "redrawn": [6, 6],
    }
    assert torch.allclose(images, drawn_from(module, labels, 12), atol=1e-6), "indices 12-17"
    assert not torch.allclose(images, drawn_from(module, labels, 0), atol=1e-3)


def test_only_the_failed_samples_are_drawn_again_and_checked(conditional, monkeypatch):  # noqa: F811
    module, labels = load_module(conditional), torch.tensor([3, 1, 4, 1, 5, 9])
    # Round 1 fails samples 1 and 4 of the six; round 2, of those two, sample 4 again.
    verdicts = iter([torch.tensor([0, 1, 0, 0, 1, 0]), torch.tensor([0, 1])])
    monkeypatch.setattr(drawing, "off_own_class", lambda *args: next(verdicts).bool())
    images, _, record = draw(module, {"rounds": 2, "num_levels": 1, "margin": 0.0}, labels)
    assert record["checked"] == [6, 2] and record["redrawn"] == [2, 1]
    first = drawn_from(module, labels, 0)
    kept = [0, 2, 3, 5]
    assert torch.allclose(images[kept], first[kept], atol=1e-6)
    assert torch.allclose(images[1], drawn_from(module, labels[[1, 4]], 6)[0], atol=1e-6)
    assert torch.allclose(images[4], drawn_from(module, labels[[4]], 12)[0], atol=1e-6)


def test_no_rounds_no_check(conditional):  # noqa: F811
    module, labels = load_module(conditional), torch.arange(6)
    images, _, record = draw(module, {"rounds": 0, "num_levels": 2, "margin": 999.0}, labels)
    assert record is None
    assert torch.allclose(images, drawn_from(module, labels, 0), atol=1e-6)


def test_evaluate_records_the_check(conditional, tmp_path):  # noqa: F811
    metrics = evaluate(
        compose_config(
            "evaluate",
            [
                f"ckpt_path={conditional}",
                "num_samples=10",
                "sampler.num_steps=2",
                "self_check.rounds=1",
                "self_check.num_levels=1",
                "self_check.margin=999",
                f"out_dir={tmp_path}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    )
    assert metrics["self_check"]["checked"] == [10] and metrics["self_check"]["redrawn"] == [10]


@pytest.mark.parametrize(
    ("override", "key"),
    [("self_check.rounds=-1", "self_check.rounds"), ("self_check.margin=-0.1", "margin")],
)
def test_bad_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key):
        validate_config(compose_config("evaluate", ["pretrained=mnist_cond", override]), "evaluate")


def test_settings_are_checked():
    assert self_check_settings(rounds=1, num_levels=10, margin=0.05)["margin"] == 0.05
    with pytest.raises(ConfigError, match="num_levels"):
        self_check_settings(rounds=1, num_levels=0, margin=0.05)


def test_unconditional_samples_are_never_checked(trained):
    images, _, record = draw(
        load_module(trained), {"rounds": 2, "num_levels": 2, "margin": 0.05}, num_samples=4
    )
    assert record is None and images.shape[0] == 4 and np.isfinite(images.numpy()).all()
