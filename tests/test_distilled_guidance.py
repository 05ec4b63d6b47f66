"""Distilled guidance (Meng et al. 2023, "On Distillation of Guided Diffusion Models"): a student
that takes γ as an input starts as its teacher's conditional network, learns two guided teacher
DDIM steps per step at each sample's own γ (on 2-D Gaussian classes, whose teacher is known in
closed form), samples guided at one network call per step, and bad settings are refused in one
line. A tiny guided chain trains end to end in tests/test_distill_rounds.py; the ONNX input in
tests/test_onnx.py, the demo page's one call in tests/test_demo.py."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ddpm_lightning.components import build
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.guidance import guided_output
from ddpm_lightning.diffusion.samplers import DDIMSampler, Step
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.distill import ProgressiveDiffusion, ProgressiveDistillation
from ddpm_lightning.distill.teacher import FrozenTeacher
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.sharing.diffusers_pipeline import pipeline_unet
from ddpm_lightning.training.module import DiffusionModule
from tests.test_distill import (
    COV,
    MLP_SETTINGS,
    NO_NOISE,
    SCHEDULE,
    T,
    answering,
    deterministic_ddim,
    round_settings,
    teacher_module,
    unclipped,
)

# x₀ ~ N(MEANS[y], COV) for the classes 0 and 1; row 2, the null label's, is p(x)'s stand-in.
MEANS = torch.tensor([[0.3, -0.2], [-0.25, 0.3], [0.02, 0.05]], dtype=torch.float64)
# A tiny conditional UNet (d = 8, two levels, T = 20) on 16 × 16 images.
TINY_UNET = {
    "model_channels": 8,
    "channel_multipliers": [1, 2],
    "num_attention_heads": 2,
    "num_timesteps": 20,
    "num_classes": 10,
}


class LabelledGaussian(nn.Module):
    """The optimal predictor of each class's Gaussian in the objective's terms, in float64:
    E[x₀ | z_t, y] = μ_y + α_t Σ (α_t² Σ + σ_t² I)⁻¹ (z_t − α_t μ_y). Counts its calls' batch
    sizes in `calls`."""

    num_classes = 2

    def __init__(self, schedule: NoiseSchedule, objective: str):
        super().__init__()
        self.schedule, self.objective = schedule, objective
        self.calls: list[int] = []

    def exact(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        mean = MEANS[torch.full_like(t, 2) if y is None else y]
        alpha_bar = self.schedule.alphas_cumprod.double()[t][:, None]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        noisy_cov = alpha[..., None] ** 2 * COV + sigma[..., None] ** 2 * torch.eye(2)
        gap = (x.double() - alpha * mean)[..., None]
        x0 = mean + (alpha[..., None] * COV @ torch.linalg.solve(noisy_cov, gap))[..., 0]
        eps = (x.double() - alpha * x0) / sigma
        return {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}[self.objective]

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        self.calls.append(x.shape[0])
        return self.exact(x, t, y).float()


class GuidedGaussian(LabelledGaussian):
    """A perfect student of distilled guidance of `LabelledGaussian`: γ as an input, its output
    the teacher's guided one, uncond + γ (cond − uncond) (γ = 1 without it)."""

    takes_guidance = True

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, guidance: Tensor | None = None
    ) -> Tensor:
        self.calls.append(x.shape[0])
        cond, uncond = self.exact(x, t, y), self.exact(x, t, None)
        scale = torch.ones(len(x)) if guidance is None else guidance
        return (uncond + scale.double()[:, None] * (cond - uncond)).float()


def guided_round(objective: str = "v", **settings) -> ProgressiveDiffusion:
    schedule = NoiseSchedule("cosine", T)
    return ProgressiveDiffusion(
        schedule, LabelledGaussian(schedule, objective), 8, objective=objective, **settings
    )


@pytest.mark.parametrize("objective", ["v", "x0"])
def test_a_guided_target_is_two_guided_teacher_steps(objective):
    """At a fixed γ, one student DDIM step with the target lands where two teacher steps of the
    guided sampler (γ = 2.5 at every step) do, and not where the unguided ones do."""
    diffusion = guided_round(objective, guidance=[1, 3], guidance_interval=None)
    schedule, teacher = diffusion.schedule, diffusion.teacher
    full, half = deterministic_ddim(schedule, 8), deterministic_ddim(schedule, 4)
    guided = Denoiser(
        teacher, schedule, objective, clip_x0=False, guidance_scale=2.5, guidance_interval=None
    )
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(500) % 2
    for i, t in enumerate(half.steps()):
        z = torch.randn(500, 2, generator=generator)
        times = torch.full((500,), t)
        target = diffusion.distillation_target(z, times, y, torch.full((500,), 2.5))
        two_steps = z
        for j in (2 * i, 2 * i + 1):
            two_steps = full.advance(guided, Step(j, full.steps()[j], two_steps, y, NO_NOISE))
        student = unclipped(answering(target), schedule, objective)
        one_step = half.advance(student, Step(i, t, z, None, NO_NOISE))
        torch.testing.assert_close(one_step, two_steps, rtol=0, atol=1e-5)
        if i == 0:
            unguided = diffusion.distillation_target(z, times, y)
            assert (unguided - target).abs().max() > 0.05


def test_each_sample_gets_the_target_of_its_own_guidance_scale():
    diffusion = guided_round(guidance=[1, 3])
    z = torch.randn(1, 2, generator=torch.Generator().manual_seed(1)).repeat(4, 1)
    t, y = diffusion.student_times[1].repeat(4), torch.zeros(4, dtype=torch.long)
    scales = torch.tensor([1.0, 1.5, 2.0, 3.0])
    batched = diffusion.distillation_target(z, t, y, scales)
    alone = [
        diffusion.distillation_target(z[:1], t[:1], y[:1], scales[i : i + 1]) for i in range(4)
    ]
    torch.testing.assert_close(batched, torch.cat(alone), rtol=0, atol=1e-6)
    assert torch.pdist(batched).min() > 1e-3
    torch.testing.assert_close(batched[:1], diffusion.distillation_target(z[:1], t[:1], y[:1]))


def test_the_students_guidance_input_follows_its_samplers_interval():
    """Each sample's γ is uniform in distill.guidance at the student's times whose σ lies in the
    interval, where its sampler guides (`guidance_scale_at`), and 1 at the others; without an
    interval (the default) at every time."""
    diffusion = guided_round(guidance=[1.5, 3], guidance_interval=(0.3, 4))
    times = diffusion.student_times[:-1].repeat_interleave(2000)
    drawn = diffusion.draw_guidance(times, torch.Generator().manual_seed(2))
    assert drawn is not None
    sampler = Denoiser(diffusion.teacher, diffusion.schedule, "v", guidance_scale=2.0)
    guided = torch.tensor([sampler.guidance_scale_at(int(t)) is not None for t in times])
    assert 0 < guided.sum() < len(times)
    assert torch.equal(drawn[~guided], torch.ones(int((~guided).sum())))
    inside = drawn[guided]
    assert inside.min() >= 1.5 and inside.max() <= 3 and inside.std() > 0.3
    assert guided_round().draw_guidance(times) is None
    everywhere = guided_round(guidance=[1.5, 3]).draw_guidance(times)
    assert everywhere is not None and everywhere.min() >= 1.5


def test_a_guided_student_as_teacher_is_called_once_per_step_with_its_guidance():
    """A later round's teacher, itself a student of distilled guidance, gives its guided output
    in one call of the batch per teacher step: the target of the guidance it replaced."""
    schedule = NoiseSchedule("cosine", T)
    student_teacher = GuidedGaussian(schedule, "v")
    guided = ProgressiveDiffusion(schedule, FrozenTeacher(student_teacher), 8, guidance=[1, 3])
    plain = guided_round(guidance=[1, 3])
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    t = guided.student_times[torch.arange(64) % 4]
    y, scales = torch.arange(64) % 2, 1 + 2 * torch.rand(64, generator=torch.Generator())
    target = guided.distillation_target(z, t, y, scales)
    assert student_teacher.calls == [64, 64]
    torch.testing.assert_close(target, plain.distillation_target(z, t, y, scales))
    assert plain.teacher.calls == [128, 128]


def tiny_unet(name: str, **changes) -> nn.Module:
    torch.manual_seed(0)
    return build("model", {"name": name, **TINY_UNET, **changes}).eval()


@pytest.mark.parametrize("name", ["unet", "unet_mp"])
def test_a_student_gaining_the_guidance_embedding_starts_as_the_teachers_network(name):
    """From the teacher's weights (its own zero-initialised γ embedding beside them) a student
    gives the teacher's conditional output at every γ; once that embedding has weights, γ
    changes the output in one call, and no γ is γ = 1."""
    teacher = tiny_unet(name)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    student = tiny_unet(name, guidance_embedding=True)
    student.load_state_dict({**student.state_dict(), **teacher.state_dict()})
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(3, 1, 16, 16, generator=generator)
    t, y = torch.tensor([0, 7, 19]), torch.tensor([2, 10, 5])
    with torch.no_grad():
        expected = teacher(x, t, y)
        assert expected.std() > 0.01
        for gamma in (None, 0.0, 1.0, 4.0):
            scales = None if gamma is None else torch.full((3,), gamma)
            assert torch.equal(student(x, t, y, scales), expected)
        if name == "unet":
            student.guidance_embedding.output.weight.normal_()
        else:
            student.emb_guidance_gain.fill_(1.0)
        calls = []
        student.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
        two = guided_output(student, x, t, y, 2.0)
        assert calls == [3] and (two - expected).abs().max() > 1e-3
        torch.testing.assert_close(student(x, t, y), student(x, t, y, torch.ones(3)))
        torch.testing.assert_close(two, student(x, t, y, torch.full((3,), 2.0)))


def test_a_guided_round_builds_its_student_with_the_embedding_and_no_label_dropout():
    teacher = DiffusionModule(
        {"name": "unet", **TINY_UNET}, {"name": "cosine", "num_timesteps": 20}, {"objective": "v"}
    )
    settings = {"teacher": "tiny", "teacher_steps": 4, "guidance": [1, 2]}
    student = ProgressiveDistillation(teacher, settings, **student_arguments(teacher))
    assert student.hparams["model"]["guidance_embedding"] is True and student.p_uncond == 0
    assert student.distill["guidance"] == [1.0, 2.0]
    assert student.distill["guidance_interval"] is None
    weights, own = teacher.model.state_dict(), student.model.state_dict()
    assert all(torch.equal(own[key], value) for key, value in weights.items())
    assert {key.split(".")[0] for key in set(own) - set(weights)} == {"guidance_embedding"}
    with pytest.raises(ConfigError, match="^format=diffusers cannot export a student of distilled"):
        pipeline_unet(student)


def student_arguments(teacher: DiffusionModule) -> dict:
    return {key: teacher.hparams[key] for key in ("model", "schedule", "diffusion")} | {
        "data_shape": (1, 32, 32)
    }


def unet_teacher(**changes) -> DiffusionModule:
    model = {"name": "unet", **TINY_UNET, **changes}
    return DiffusionModule(model, {"name": "cosine", "num_timesteps": 20}, {"objective": "v"})


@pytest.mark.parametrize(
    ("teacher", "changes", "message"),
    [
        ("unet", {"guidance": [2, 1]}, r"distill.guidance=\[2, 1\] must be \[gamma_min,"),
        ("unet", {"guidance": [1]}, r"distill.guidance=\[1\] must be \[gamma_min, gamma_max\]"),
        ("unet", {"guidance": [-1, 2]}, "distill.guidance=.* must be"),
        (
            "unet",
            {"guidance": [1, 2], "guidance_interval": [4, 0.3]},
            r"distill.guidance_interval=\[4, 0.3\] must be \[sigma_low, sigma_high\]",
        ),
        (
            "unet",
            {"guidance_interval": [0.3, 4]},
            "distill.guidance_interval applies to distilled guidance only: set distill.guidance",
        ),
        (
            "unet",
            {"method": "consistency", "guidance": [1, 2]},
            "distill.guidance is progressive distillation's.*set distill.method=progressive",
        ),
        (
            "mlp",
            {"guidance": [1, 2]},
            "distill.guidance needs a conditional teacher, but distill.teacher=exact-gaussian is "
            "unconditional",
        ),
        (
            "labelled_mlp",
            {"guidance": [1, 2]},
            r"distill.guidance needs a network that takes γ \(model=unet or unet_mp\), but "
            "distill.teacher=exact-gaussian is model=mlp",
        ),
        (
            "guided_unet",
            {},
            r"distill.teacher=exact-gaussian takes γ as an input \(model.guidance_embedding=true.*"
            "distil it with distill.guidance",
        ),
    ],
)
def test_bad_guidance_settings_are_refused_in_one_line(teacher, changes, message):
    if teacher in ("mlp", "labelled_mlp"):
        module = teacher_module("v")
        if teacher == "labelled_mlp":
            module.model.num_classes = 2
        arguments = {"model": MLP_SETTINGS, "schedule": SCHEDULE, "diffusion": {"objective": "v"}}
        arguments["data_shape"] = (2,)
    else:
        module = unet_teacher(guidance_embedding=teacher == "guided_unet")
        arguments = student_arguments(module)
        arguments["model"] = {**arguments["model"], "guidance_embedding": False}
    with pytest.raises(ConfigError, match=message) as error:
        ProgressiveDistillation(module, round_settings(teacher_steps=4, **changes), **arguments)
    assert "\n" not in str(error.value)


def test_a_guidance_embedding_needs_a_conditional_network():
    for name in ("unet", "unet_mp"):
        with pytest.raises(ConfigError, match="^model.guidance_embedding=true needs a conditional"):
            tiny_unet(name, num_classes=None, guidance_embedding=True)


def test_sampling_a_guided_student_is_one_call_per_step():
    """DDIM with γ through `Denoiser`: one call of the batch per step, γ as the sampler applies
    it (1 outside the interval: no γ given), as many calls as `network_evaluations` says."""
    schedule = NoiseSchedule("cosine", T)
    student = GuidedGaussian(schedule, "v")
    sampler = DDIMSampler(schedule, num_steps=6, eta=0.0, spacing="trailing", progress=False)
    denoiser = Denoiser(student, schedule, "v", guidance_scale=2.0)
    y = torch.arange(10) % 2
    sampler.sample(denoiser, (10, 2), y=y)
    assert student.calls == [10] * 6 == [10] * sampler.network_evaluations()
    teacher = LabelledGaussian(schedule, "v")
    guided = Denoiser(teacher, schedule, "v", guidance_scale=2.0)
    torch.testing.assert_close(
        sampler.sample(denoiser, (10, 2), y=y), sampler.sample(guided, (10, 2), y=y)
    )
    assert sorted(set(teacher.calls)) == [10, 20]
