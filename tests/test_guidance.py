import pytest
import torch
from torch import nn

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    balanced_labels,
    check_labels,
    drop_labels,
    guided_output,
)
from ddpm_lightning.diffusion.samplers import DDIMSampler, DDPMSampler
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError


class ToyConditional(nn.Module):
    """A fixed model whose output depends on x, t and the label (null = index 3); counts calls."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.shift = torch.tensor([0.7, -1.3, 2.1, 0.25])
        self.batches: list[torch.Tensor] = []

    def forward(self, x, t, y):
        self.batches.append(y.clone())
        view = (-1, *[1] * (x.dim() - 1))
        return torch.sin(x) * (t.view(view) + 1) + self.shift[y].view(view)


def toy_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 1, 4, 4, generator=g), torch.arange(6), torch.tensor([0, 1, 2, 2, 1, 0])


def test_guidance_scale_one_is_the_conditional_output_in_one_pass():
    model = ToyConditional()
    x, t, y = toy_inputs()
    out = guided_output(model, x, t, y, 1.0)
    assert torch.equal(out, model(x, t, y))
    assert [len(b) for b in model.batches] == [6, 6], "γ = 1 skips the unconditional pass"


def test_guidance_scale_zero_is_the_unconditional_output():
    model = ToyConditional()
    x, t, y = toy_inputs()
    assert torch.equal(guided_output(model, x, t, y, 0.0), model(x, t, torch.full_like(y, 3)))


@pytest.mark.parametrize("scale", [2.0, 3.5, -0.5])
def test_doubled_batch_equals_two_calls(scale):
    model = ToyConditional()
    x, t, y = toy_inputs()
    out = guided_output(model, x, t, y, scale)
    assert len(model.batches) == 1 and len(model.batches[0]) == 12, "one call, doubled batch"
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 3))
    torch.testing.assert_close(out, uncond + scale * (cond - uncond), rtol=0, atol=1e-6)


def test_guidance_on_an_unconditional_model_is_a_config_error():
    x, t, y = toy_inputs()
    with pytest.raises(ConfigError, match="guidance_scale=2.0 needs a conditional"):
        guided_output(lambda x, t, y: x, x, t, y, 2.0)


def test_label_dropout_rate():
    y = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    dropped = drop_labels(y, 0.1, 10, torch.Generator().manual_seed(1))
    rate = (dropped == 10).double().mean().item()
    # Binomial standard error √(0.1·0.9/200,000) ≈ 0.00067; allow 4.5σ.
    assert rate == pytest.approx(0.1, abs=0.003)
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept]), "kept labels are unchanged"
    assert torch.equal(drop_labels(y, 0.0, 10), y)


def test_balanced_labels_and_checks():
    labels = balanced_labels(64, 10)
    counts = torch.bincount(labels, minlength=10)
    assert counts.sum() == 64 and counts.max() - counts.min() <= 1 and labels.max() < 10
    assert torch.equal(labels, labels.sort().values)
    check_labels(torch.tensor([0, 9]), 10)
    with pytest.raises(ConfigError, match=r"\[0, 10\)"):
        check_labels(torch.tensor([3, 10]), 10)
    with pytest.raises(ConfigError, match=r"\[0, 10\)"):
        check_labels(torch.tensor([-1]), 10)
    with pytest.raises(ConfigError, match="unconditional"):
        check_labels(torch.tensor([1]), None)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_samplers_never_request_the_null_label(scale):
    model = ToyConditional()
    schedule = NoiseSchedule("cosine", 20)
    sampler = DDIMSampler(schedule, num_steps=5, progress=False)
    y = torch.tensor([0, 1, 2, 0])
    sampler.sample(Denoiser(model, schedule, "eps", guidance_scale=scale), (4, 1, 2, 2), y=y)
    assert len(model.batches) == 5
    for labels in model.batches:
        assert torch.equal(labels[:4], y), "the requested labels, never the null one"
        assert (labels[4:] == 3).all(), "the second half, if any, is the unconditional pass"


MEANS, S = torch.tensor([-0.5, 0.1, 0.6]), 0.1


def class_conditional_denoiser(schedule: NoiseSchedule, objective: str) -> nn.Module:
    """The exact predictor for x₀ | y=c ~ N(MEANS[c], S²) per pixel (classes equally likely);
    the null label gets the exact unconditional predictor of the three-Gaussian mixture.

    Per class: E[x₀ | x_t, c] = μ_c + √ᾱ s² (x_t − √ᾱ μ_c) / (ᾱ s² + 1 − ᾱ); unconditionally the
    same means weighted by p(c | x_t) ∝ N(x_t; √ᾱ μ_c, ᾱ s² + 1 − ᾱ) over all pixels.
    """

    class Exact(nn.Module):
        num_classes = 3

        def forward(self, x, t, y):
            a = schedule.alphas_cumprod[t].double().view(-1, 1, 1, 1)
            x = x.double()
            var = a * S**2 + 1 - a
            mu = MEANS.double().view(1, 3, 1, 1, 1)
            x0_per_class = mu + a.sqrt().unsqueeze(1) * S**2 * (
                x.unsqueeze(1) - a.sqrt().unsqueeze(1) * mu
            ) / var.unsqueeze(1)
            log_lik = -((x.unsqueeze(1) - a.sqrt().unsqueeze(1) * mu) ** 2).flatten(2).sum(2) / (
                2 * var.view(-1, 1)
            )
            weights = log_lik.softmax(dim=1).view(-1, 3, 1, 1, 1)
            choices = torch.cat([x0_per_class, (weights * x0_per_class).sum(1, keepdim=True)], 1)
            x0 = choices[torch.arange(len(y)), y]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            out = {"eps": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[objective]
            return out.float()

    return Exact()


@pytest.mark.parametrize("objective", ["eps", "x0", "v"])
@pytest.mark.parametrize("sampler_name", ["ddpm", "ddim"])
def test_guidance_scale_one_reproduces_each_class_mean(objective, sampler_name):
    schedule = NoiseSchedule("cosine", 200)
    if sampler_name == "ddpm":
        sampler = DDPMSampler(schedule, progress=False)
    else:
        sampler = DDIMSampler(schedule, num_steps=50, eta=0.0, progress=False)
    network = class_conditional_denoiser(schedule, objective)
    y = balanced_labels(3000, 3)
    x = sampler.sample(
        Denoiser(network, schedule, objective, clip_x0=False, guidance_scale=1.0),
        (3000, 1, 2, 2),
        seed=0,
        y=y,
    )
    for c in range(3):
        values = x[y == c]
        # 4,000 values per class: standard error of the mean 0.1/√4000 ≈ 0.0016.
        assert values.mean().item() == pytest.approx(MEANS[c].item(), abs=0.01)
        assert values.std().item() == pytest.approx(S, abs=0.02)


def test_guidance_scale_zero_ignores_the_label():
    schedule = NoiseSchedule("cosine", 200)
    sampler = DDIMSampler(schedule, num_steps=50, eta=0.0, progress=False)
    network = class_conditional_denoiser(schedule, "eps")
    denoiser = Denoiser(
        network, schedule, "eps", clip_x0=False, guidance_scale=0, guidance_interval=None
    )
    y = balanced_labels(3000, 3)
    x = sampler.sample(
        denoiser,
        (3000, 1, 2, 2),
        seed=0,
        y=y,
    )
    shares = torch.stack([(x.flatten(1).mean(1) - m).abs() for m in MEANS]).argmin(0)
    for c in range(3):
        # Every requested class gets the mixture: about a third of each class's samples
        # lands near each mean (binomial standard error √(2/9/1000) ≈ 0.015).
        share = torch.bincount(shares[y == c], minlength=3).double() / (y == c).sum()
        assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.double), atol=0.06)


def test_guidance_interval_guides_only_inside_it():
    schedule = NoiseSchedule("cosine", 20)
    sigmas = schedule.sigmas()
    low, high = float(sigmas[5]), float(sigmas[12])
    model = ToyConditional()
    denoiser = Denoiser(model, schedule, "eps", guidance_scale=2.0, guidance_interval=[low, high])
    scales = [denoiser.guidance_scale_at(t) for t in range(20)]
    assert scales == [None] * 6 + [2.0] * 7 + [None] * 7, "(σ_5, σ_12]: timesteps 6 … 12"
    sampler = DDIMSampler(schedule, num_steps=20, progress=False)
    sampler.sample(denoiser, (4, 1, 2, 2), y=torch.tensor([0, 1, 2, 0]))
    assert [len(b) for b in model.batches] == [4] * 7 + [8] * 7 + [4] * 6, "t = 19 … 0"


@pytest.mark.parametrize("interval", [[0.0, 1e6], [1e5, 1e6]])
def test_guidance_interval_over_all_or_no_steps_is_plain_guidance_or_none(interval):
    schedule = NoiseSchedule("cosine", 50)
    y = torch.tensor([0, 1, 2, 2, 1])

    def draw(**options):
        sampler = DDIMSampler(schedule, num_steps=10, eta=1.0, progress=False)
        denoiser = Denoiser(ToyConditional(), schedule, "eps", **options)
        return sampler.sample(denoiser, (5, 1, 3, 3), seed=3, y=y)

    within = interval[0] < schedule.sigmas().min()
    expected = draw(guidance_scale=2.5 if within else 1.0, guidance_interval=None)
    assert torch.equal(draw(guidance_scale=2.5, guidance_interval=interval), expected)
    assert not torch.equal(
        expected, draw(guidance_scale=1.0 if within else 2.5, guidance_interval=None)
    )


@pytest.mark.parametrize("interval", [[1.0], [2.0, 1.0], [-1.0, 3.0], [1.0, 1.0]])
def test_bad_guidance_interval_is_a_config_error(interval):
    with pytest.raises(ConfigError, match=r"sampler\.guidance_interval"):
        Denoiser(
            ToyConditional(),
            NoiseSchedule("cosine", 20),
            "eps",
            guidance_scale=2.0,
            guidance_interval=interval,
        )


def test_the_denoiser_guides_conditional_networks_only():
    """γ defaults to DEFAULT_GUIDANCE_SCALE for a conditional network; an unconditional one
    refuses γ ≠ 1 in one line naming the key and keeps no interval."""
    schedule = NoiseSchedule("cosine", 20)
    conditional = Denoiser(ToyConditional(), schedule, "eps")
    assert conditional.guidance_scale == DEFAULT_GUIDANCE_SCALE
    assert conditional.guidance_interval == (0.3, 4.0)
    assert Denoiser(ToyConditional(), schedule, "eps", guidance_scale=0).guidance_scale == 0.0
    unconditional = Denoiser(lambda x, t, y: x, schedule, "eps", guidance_interval=[0.3, 5])
    assert unconditional.guidance_scale is None and unconditional.guidance_interval is None
    assert Denoiser(lambda x, t, y: x, schedule, "eps", guidance_scale=1.0).guidance_scale == 1
    with pytest.raises(ConfigError, match="sampler.guidance_scale=3.0 needs a conditional"):
        Denoiser(lambda x, t, y: x, schedule, "eps", guidance_scale=3.0)
