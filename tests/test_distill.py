"""Progressive distillation (Salimans & Ho 2022) on 2-D Gaussian data, whose teacher is known in
closed form: the target is two teacher DDIM steps exactly, a round learns that map, and teachers
a student cannot start from are refused in one line."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from torch import Tensor

from ddpm_lightning.config import compose_config
from ddpm_lightning.data.images import InMemoryDataModule, TensorBatches
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.gaussian import Network
from ddpm_lightning.diffusion.samplers import DDIMSampler, Step
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.distill import ProgressiveDiffusion, ProgressiveDistillation, distill_round
from ddpm_lightning.distill.grids import halving_grids
from ddpm_lightning.distill.settings import distill_settings
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models.mlp import MLP
from ddpm_lightning.train import build_fit_module, load_teacher
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from ddpm_lightning.training.module import MODULE_KEYS, DiffusionModule
from ddpm_lightning.training.safety import LastCheckpoint

MEAN = torch.tensor([0.3, -0.2], dtype=torch.float64)
COV = torch.tensor([[0.04, 0.015], [0.015, 0.02]], dtype=torch.float64)
T = 1000
MLP_SETTINGS = {"name": "mlp", "in_dim": 2, "hidden_dim": 64, "num_layers": 3, "num_timesteps": T}
SCHEDULE = {"name": "cosine", "num_timesteps": T}
# The step noise of deterministic DDIM (η = 0), which draws none.
NO_NOISE: Any = None


def exact_gaussian(schedule: NoiseSchedule, objective: str, cov: Tensor = COV) -> Network:
    """The optimal predictor for x₀ ~ N(MEAN, cov) in the objective's terms, in float64:
    E[x₀ | z_t] = μ + α_t Σ (α_t² Σ + σ_t² I)⁻¹ (z_t − α_t μ), ε̂ = (z_t − α_t x̂)/σ_t."""

    def model(x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        alpha_bar = schedule.alphas_cumprod.double()[t][:, None]
        alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        noisy_cov = alpha[..., None] ** 2 * cov + sigma[..., None] ** 2 * torch.eye(2)
        gap = (x.double() - alpha * MEAN)[..., None]
        x0 = MEAN + (alpha[..., None] * cov @ torch.linalg.solve(noisy_cov, gap))[..., 0]
        eps = (x.double() - alpha * x0) / sigma
        return {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}[objective].float()

    return model


class ExactNetwork(MLP):
    """An MLP's weights (handed to the student) answering with `exact_gaussian` of `cov`."""

    def __init__(self, schedule: NoiseSchedule, objective: str, cov: Tensor = COV):
        super().__init__(2, MLP_SETTINGS["hidden_dim"], MLP_SETTINGS["num_layers"], T)
        self.exact = exact_gaussian(schedule, objective, cov)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        return self.exact(x, t)


class GaussianPoints(InMemoryDataModule):
    """Points x: (B, 2) ~ N(MEAN, COV), labels 0: 20,000 to train on, 1,000 to test."""

    @property
    def data_shape(self) -> tuple[int]:
        return (2,)

    def load(self) -> tuple[TensorBatches, TensorBatches]:
        generator = torch.Generator().manual_seed(0)
        factor = torch.linalg.cholesky(COV)
        splits = []
        for n in (20_000, 1_000):
            normal = torch.randn(n, 2, generator=generator, dtype=torch.float64)
            splits.append(TensorBatches((MEAN + normal @ factor.T).float(), torch.zeros(n).long()))
        return splits[0], splits[1]


def teacher_module(objective: str) -> DiffusionModule:
    """A DiffusionModule of an MLP on 2-D points whose network is `ExactNetwork`."""
    teacher = DiffusionModule(MLP_SETTINGS, SCHEDULE, {"objective": objective}, data_shape=(2,))
    network = ExactNetwork(teacher.diffusion.schedule, objective)
    network.load_state_dict(teacher.model.state_dict())
    teacher.model = network
    return teacher


def deterministic_ddim(schedule: NoiseSchedule, num_steps: int) -> DDIMSampler:
    """DDIM η = 0 on the trailing grid: the sampler of the rounds."""
    return DDIMSampler(
        schedule,
        num_steps=num_steps,
        eta=0.0,
        spacing="trailing",
        progress=False,
        batch_size=100_000,
    )


def unclipped(network: Network, schedule: NoiseSchedule, objective: str) -> Denoiser:
    """`network` as the rounds' sampler sees it: x̂₀ not clipped."""
    return Denoiser(network, schedule, objective, clip_x0=False)


def answering(output: Tensor) -> Network:
    """A network whose output is `output` whatever it is asked."""
    return lambda x, t, y=None: output


def round_settings(teacher_steps: int = 2, **changes) -> dict:
    return {"teacher": "exact-gaussian", "teacher_steps": teacher_steps, **changes}


# ε-prediction is checked on the linear schedule: at the cosine schedule's last timestep
# SNR ≈ 2·10⁻⁹, and x̂ = (z − σ ε̂)/α magnifies float32 rounding by 1/α ≈ 2·10⁴ (measured
# 1e-3 there, ≤ 5e-7 for v and x0) — why the paper distils v- or x-predicting students.
@pytest.mark.parametrize(
    ("objective", "schedule_name"), [("v", "cosine"), ("x0", "cosine"), ("eps", "linear")]
)
def test_one_student_step_with_the_target_is_two_teacher_steps(objective, schedule_name):
    schedule = NoiseSchedule(schedule_name, T)
    teacher = exact_gaussian(schedule, objective)
    diffusion = ProgressiveDiffusion(schedule, teacher, 8, objective=objective)
    assert diffusion.student_times.tolist() == [*deterministic_ddim(schedule, 4).steps(), -1]
    exact = unclipped(teacher, schedule, objective)
    assert_a_student_step_is_two_teacher_steps(diffusion, exact, schedule, objective)


def assert_a_student_step_is_two_teacher_steps(
    diffusion: ProgressiveDiffusion, teacher: Denoiser, schedule: NoiseSchedule, objective: str
) -> None:
    """Round 8 → 4: at each student time, one student DDIM step predicting `diffusion`'s
    target lands where two DDIM steps of `teacher` do, within 1e-5."""
    full, half = deterministic_ddim(schedule, 8), deterministic_ddim(schedule, 4)
    generator = torch.Generator().manual_seed(0)
    for i, t in enumerate(half.steps()):
        z = torch.randn(500, 2, generator=generator)
        target = diffusion.distillation_target(z, torch.full((500,), t))
        two_steps = z
        for j in (2 * i, 2 * i + 1):
            two_steps = full.advance(teacher, Step(j, full.steps()[j], two_steps, None, NO_NOISE))
        student = unclipped(answering(target), schedule, objective)
        one_step = half.advance(student, Step(i, t, z, None, NO_NOISE))
        torch.testing.assert_close(one_step, two_steps, rtol=0, atol=1e-5)


def test_mixed_timesteps_in_a_batch_get_their_own_targets():
    schedule = NoiseSchedule("cosine", T)
    diffusion = ProgressiveDiffusion(schedule, exact_gaussian(schedule, "v"), 8)
    times = diffusion.student_times[:-1]
    z = torch.randn(len(times), 2, generator=torch.Generator().manual_seed(1))
    batched = diffusion.distillation_target(z, times)
    one_by_one = torch.cat(
        [diffusion.distillation_target(z[i : i + 1], times[i : i + 1]) for i in range(4)]
    )
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not all on the student's grid"):
        diffusion.distillation_target(z, times + 1)


def test_the_student_is_trained_where_its_sampler_steps():
    """50 → 25 on the shipped models' schedule: the student learns exactly the times that
    `sampler=ddim sampler.num_steps=25 sampler.eta=0 sampler.spacing=trailing` visits, each
    replacing the two of DDIM-50 around the odd teacher time."""
    schedule = NoiseSchedule("cosine", T)
    teacher, student = halving_grids(schedule, 50, "trailing")
    assert teacher == [*DDIMSampler(schedule, num_steps=50, spacing="trailing").steps(), -1]
    assert student == [*DDIMSampler(schedule, num_steps=25, spacing="trailing").steps(), -1]
    assert student[:3] == [999, 959, 919] and teacher[:3] == [999, 979, 959]
    assert student[-2:] == [39, -1] and teacher[-3:] == [39, 19, -1]
    diffusion = ProgressiveDiffusion(schedule, exact_gaussian(schedule, "v"), 50)
    drawn = diffusion.sample_timesteps(10_000, torch.device("cpu"))
    assert set(drawn.tolist()) == set(student[:-1])


@pytest.mark.parametrize("objective", ["v", "x0", "eps"])
@pytest.mark.parametrize("weighting", ["snr_plus_one", "truncated_snr"])
def test_the_loss_is_the_weighted_error_of_x(objective, weighting):
    """Whatever the objective, the loss is w(λ_t)‖x̃ − x̂‖²: SNR + 1 or max(SNR, 1)."""
    schedule = NoiseSchedule("linear", T)
    diffusion = ProgressiveDiffusion(
        schedule, exact_gaussian(schedule, objective), 8, weighting=weighting, objective=objective
    )
    generator = torch.Generator().manual_seed(2)
    x0 = MEAN.float() + 0.2 * torch.randn(64, 2, generator=generator)
    noise = torch.randn(64, 2, generator=generator)
    t = diffusion.student_times[torch.arange(64) % 4]
    output = torch.randn(64, 2, generator=generator)
    loss = diffusion.training_loss(answering(output), x0, t=t, noise=noise)
    z = diffusion.q_sample(x0, t, noise)
    target = diffusion.distillation_target(z, t)
    x_student = diffusion.predict_x0_eps(z, t, output)[0].double()
    x_target = diffusion.predict_x0_eps(z, t, target)[0].double()
    alpha_bar = schedule.alphas_cumprod.double()[t]
    snr = alpha_bar / (1 - alpha_bar)
    weight = snr + 1 if weighting == "snr_plus_one" else snr.clamp(min=1)
    expected = (weight * ((x_student - x_target) ** 2).mean(1)).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


# Measured with seeds 0 and 1 for v and x0 after 200 steps: one-step error 4e-4 – 9e-4 (mean
# abs), sample mean off by ≤ 5e-5, covariance by ≤ 0.84 % (relative Frobenius; its Monte Carlo
# error is ~1 %). The target is the teacher's two-step Gaussian, not the data's: two DDIM steps
# shrink the covariance (96 % off COV), and a student only learns its teacher's steps. The
# ε-predicting student cannot take this step: at SNR ≈ 2·10⁻⁹ its x̂ is off by ~1.
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("objective", ["v", "x0"])
def test_a_round_learns_two_teacher_steps_in_one(objective, tmp_path):
    """Round 2 → 1: the student's single DDIM step from held-out z_T matches the teacher's two
    (mean abs error < 0.005), and its samples match the teacher's: its two-step map is affine,
    z ↦ A z + b, so they are N(b, A Aᵀ) (mean within 0.002, covariance within 5 %)."""
    torch.manual_seed(0)
    teacher = teacher_module(objective)
    before = copy.deepcopy(teacher.model.state_dict())
    student = distill_round(
        teacher,
        GaussianPoints(batch_size=256),
        round_settings(),
        trainer={
            "max_steps": 200,
            "accelerator": "cpu",
            "default_root_dir": str(tmp_path),
            "enable_checkpointing": False,
            "limit_val_batches": 0,
        },
        optimizer={"name": "adam", "lr": 3e-3},
        lr_schedule={"warmup_steps": 0, "cosine_decay": True},
        ema_decay=0.999,
    )
    schedule = teacher.diffusion.schedule
    two, one = deterministic_ddim(schedule, 2), deterministic_ddim(schedule, 1)
    teacher_net = unclipped(teacher.model, schedule, objective)
    student_net = unclipped(student.model.eval(), schedule, objective)
    held_out = torch.randn(4000, 2, generator=torch.Generator().manual_seed(123))
    teacher_map = two.sample(teacher_net, (4000, 2), noise=held_out)
    student_map = one.sample(student_net, (4000, 2), noise=held_out)
    assert (student_map - teacher_map).abs().mean().item() < 0.005
    corners = torch.cat([torch.zeros(1, 2), torch.eye(2)])
    images = two.sample(teacher_net, (3, 2), noise=corners).double()
    b, A = images[0], (images[1:] - images[0]).T
    samples = one.sample(student_net, (20_000, 2), seed=1).double()
    assert (samples.mean(0) - b).abs().max().item() < 0.002
    covariance_error = (samples.T.cov() - A @ A.T).norm() / (A @ A.T).norm()
    assert covariance_error.item() < 0.05
    assert all(torch.equal(before[key], value) for key, value in teacher.model.state_dict().items())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"diffusion": {"objective": "eps"}},
            "predicts diffusion.objective=v but diffusion.objective=eps: set diffusion.objective=v",
        ),
        (
            {"data_shape": (3,), "model": {**MLP_SETTINGS, "in_dim": 3}},
            r"generates data of shape \(2,\) but the data gives \(3,\)",
        ),
        (
            {"schedule": {"name": "linear", "num_timesteps": T}},
            "has schedule.name=cosine but schedule.name=linear: set schedule.name=cosine",
        ),
        (
            {"model": {**MLP_SETTINGS, "hidden_dim": 32}},
            "has model.hidden_dim=64 but model.hidden_dim=32: set model.hidden_dim=64",
        ),
    ],
)
def test_a_teacher_the_student_cannot_start_from_is_refused(changes, message):
    settings = {
        "model": MLP_SETTINGS,
        "schedule": SCHEDULE,
        "diffusion": {"objective": "v"},
        "data_shape": (2,),
        **changes,
    }
    with pytest.raises(ConfigError, match=f"^distill.teacher=exact-gaussian {message}") as error:
        ProgressiveDistillation(teacher_module("v"), round_settings(), **settings)
    assert "\n" not in str(error.value)


def test_a_flow_teacher_is_refused():
    """Distillation takes DDIM steps on the ᾱ path; a flow model's x_t lie on another."""
    teacher = DiffusionModule(MLP_SETTINGS, SCHEDULE, {"objective": "flow"}, data_shape=(2,))
    settings = {"model": MLP_SETTINGS, "schedule": SCHEDULE, "data_shape": (2,)}
    refusal = r"^distillation of distill.teacher=.* predicts diffusion.objective=flow: distil"
    with pytest.raises(ConfigError, match=refusal):
        ProgressiveDistillation(
            teacher, round_settings(), diffusion={"objective": "flow"}, **settings
        )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"teacher_steps": 25}, "distill.teacher_steps=25 must be an even integer"),
        ({"teacher_steps": 2000}, "distill.teacher_steps=2000 exceeds schedule.num_timesteps"),
        (
            {"teacher_steps": 50, "spacing": "uniform"},
            "distill.spacing=uniform: the 25-step DDIM grid is not every other time of the "
            "50-step one.*use distill.spacing=trailing",
        ),
        ({"spacing": "linear"}, "distill.spacing='linear' is unknown; choose one of uniform"),
        ({"weighting": "snr"}, "distill.weighting='snr' is unknown"),
        ({"method": "rectified"}, "distill.method=rectified is unknown"),
        ({"student_steps": 1}, "distill.student_steps is not a distillation setting"),
        ({"teacher": None}, "distill.teacher is required"),
    ],
)
def test_bad_distill_settings_are_refused(changes, message):
    settings = {"model": MLP_SETTINGS, "schedule": SCHEDULE, "diffusion": {"objective": "v"}}
    with pytest.raises(ConfigError, match=message):
        ProgressiveDistillation(
            teacher_module("v"), round_settings(**changes), data_shape=(2,), **settings
        )


def test_settings_an_earlier_teacher_leaves_out_count_at_their_defaults():
    """The shipped teachers' files predate `schedule.log_snr_shift`: a student whose
    settings name it at its default (0) starts from them; at another value it is refused."""
    settings = {"model": MLP_SETTINGS, "diffusion": {"objective": "v"}, "data_shape": (2,)}
    ProgressiveDistillation(
        teacher_module("v"),
        round_settings(),
        schedule={**SCHEDULE, "log_snr_shift": 0.0},
        **settings,
    )
    with pytest.raises(
        ConfigError,
        match=r"has schedule.log_snr_shift=0.0 but schedule.log_snr_shift=1.0: set "
        r"schedule.log_snr_shift=0.0",
    ):
        ProgressiveDistillation(
            teacher_module("v"),
            round_settings(),
            schedule={**SCHEDULE, "log_snr_shift": 1.0},
            **settings,
        )


def test_the_teacher_is_no_part_of_the_student():
    """Not in the state_dict, the hyperparameters or the EMA's deep copy; the student starts
    from its weights."""
    teacher = teacher_module("v")
    student = ProgressiveDistillation(
        teacher,
        round_settings(),
        model=MLP_SETTINGS,
        schedule=SCHEDULE,
        diffusion={"objective": "v"},
        data_shape=(2,),
    )
    assert set(student.state_dict()) == {f"model.{key}" for key in teacher.model.state_dict()}
    assert all(
        torch.equal(value, teacher.model.state_dict()[key])
        for key, value in student.model.state_dict().items()
    )
    assert "teacher" not in student.hparams and "teacher" not in student.hparams_initial
    assert student.hparams["distill"] == distill_settings(round_settings())
    assert copy.deepcopy(student).diffusion.teacher is student.diffusion.teacher
    assert not any(p.requires_grad for p in teacher.model.parameters())


def run_round(folder, epochs: int, resume: bool = False) -> ProgressiveDistillation:
    """`epochs` epochs of 3 batches of round 4 → 2 with the EMA and a validation batch per
    epoch, ending in `folder/last.ckpt`; resumed from it."""
    torch.manual_seed(0)
    return distill_round(
        teacher_module("v"),
        GaussianPoints(batch_size=128),
        round_settings(teacher_steps=4),
        trainer={
            "max_epochs": epochs,
            "accelerator": "cpu",
            "default_root_dir": str(folder),
            "enable_checkpointing": False,
            "limit_train_batches": 3,
            "limit_val_batches": 1,
        },
        callbacks=[LastCheckpoint(str(folder))],
        ckpt_path=str(folder / "last.ckpt") if resume else None,
    )


@pytest.mark.usefixtures("one_thread")
def test_a_round_resumes_like_training_and_samples_as_a_plain_model(tmp_path):
    """Stopped after 2 epochs and resumed to 4, a round ends with the weights (EMA and raw) of
    one run straight through; its checkpoint loads as a DiffusionModule and records the
    round."""
    straight = run_round(tmp_path / "straight", 4)
    run_round(tmp_path / "resumed", 2)
    resumed = run_round(tmp_path / "resumed", 4, resume=True)
    whole = read_checkpoint(tmp_path / "straight" / "last.ckpt")
    checkpoint = read_checkpoint(tmp_path / "resumed" / "last.ckpt")
    assert checkpoint["global_step"] == whole["global_step"] == 12
    for key in ("state_dict", "current_model_state"):
        for name, value in whole[key].items():
            torch.testing.assert_close(checkpoint[key][name], value, rtol=0, atol=0)
    assert set(checkpoint["hyper_parameters"]) <= set(MODULE_KEYS)
    assert checkpoint["distill"] == distill_settings(round_settings(teacher_steps=4))
    plain = load_module(tmp_path / "resumed" / "last.ckpt")
    assert type(plain) is DiffusionModule
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)
        torch.testing.assert_close(straight.state_dict()[name], value, rtol=0, atol=0)


def test_resuming_another_round_is_refused(tmp_path):
    student = ProgressiveDistillation(
        teacher_module("v"),
        round_settings(teacher_steps=4),
        model=MLP_SETTINGS,
        schedule=SCHEDULE,
        diffusion={"objective": "v"},
        data_shape=(2,),
    )
    other = distill_settings(round_settings(teacher_steps=8))
    with pytest.raises(ConfigError, match="holds the round .* not distill="):
        student.on_load_checkpoint({"distill": other})
    with pytest.raises(ConfigError, match="holds no distillation round"):
        student.on_load_checkpoint({})


def test_the_distill_experiment_samples_on_the_student_grid():
    """conf/experiment/distill.yaml: a round of the shipped MNIST model whose sample grids and
    FLD use the student's DDIM grid, with settings the module takes, and whose FLD is logged
    every epoch (a round lasts a few) where training logs it every 5."""
    cfg = compose_config("train", ["experiment=distill", "paths.output_dir=/tmp/unused"])
    distill = distill_settings(OmegaConf.to_container(cfg.distill))
    assert cfg.task_name == "distill" and distill["teacher"] == "mnist"
    assert cfg.callbacks.fld.every_n_epochs == 1
    trained = compose_config("train", ["paths.output_dir=/tmp/unused"])
    assert trained.callbacks.fld.every_n_epochs == 5
    assert cfg.diffusion.objective == "v" and cfg.schedule.num_timesteps == T
    for callback in ("sample_grid", "fld"):
        sampler = cfg.callbacks[callback].sampler
        assert sampler.num_steps * 2 == distill["teacher_steps"]
        assert sampler.eta == 0 and sampler.spacing == distill["spacing"] == "trailing"


@pytest.mark.parametrize(
    "overrides",
    [
        ["distill.teacher=mnist"],
        ["distill.teacher=fashion_mnist", "data=fashion_mnist"],
        ["distill.teacher=mnist_cond", "model=unet_cond"],
        ["distill.teacher=mnist_cond", "model=unet_cond", "distill.guidance=[1,2]"],
    ],
)
def test_every_shipped_model_is_a_teacher_of_its_documented_command(overrides):
    """The commands of docs/results.md build a student from each shipped model's weights,
    though the model folders predate settings added since (schedule.log_snr_shift)."""
    cfg = compose_config(
        "train", ["experiment=distill", "paths.output_dir=/tmp/unused", *overrides]
    )
    teacher = load_teacher(str(cfg.distill.teacher))
    student = build_fit_module(cfg, tuple(teacher.data_shape))
    assert isinstance(student, ProgressiveDistillation)
    weights = student.model.state_dict()
    assert all(
        torch.equal(weights[key], value) for key, value in teacher.model.state_dict().items()
    )
