"""Distillation from an autoguided teacher (`distill.guide`): on 2-D Gaussian data, whose
denoisers are known in closed form, the teacher's output is the sampler's autoguided x̂₀ and a
round's target is two autoguided DDIM steps; the guide is resolved, recorded and refused as
documented, and a chain guides its first round only."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from test_distill import (
    COV,
    MLP_SETTINGS,
    SCHEDULE,
    ExactNetwork,
    T,
    assert_a_student_step_is_two_teacher_steps,
    round_settings,
    teacher_module,
    unclipped,
)
from test_distill_rounds import FakeTrain, value

from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.distill import ProgressiveDiffusion, ProgressiveDistillation
from ddpm_lightning.distill.settings import distill_settings
from ddpm_lightning.distill.teacher import FrozenTeacher
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.sharing.pretrained import SHIPPED_DIR
from ddpm_lightning.tools.distill_rounds import distill_rounds
from ddpm_lightning.train import build_fit_module, chosen_teacher_guide, load_teacher
from ddpm_lightning.training.module import DiffusionModule

GAMMA = 1.5
# The weaker model: the same mean, a covariance twice as wide.
WIDE = 2 * COV


def pair(objective: str, schedule: NoiseSchedule) -> tuple[ExactNetwork, ExactNetwork]:
    """(the exact denoiser of N(MEAN, COV), that of N(MEAN, WIDE)) in the objective's terms."""
    return ExactNetwork(schedule, objective), ExactNetwork(schedule, objective, WIDE)


def autoguided(strong, weak, schedule: NoiseSchedule, objective: str) -> Denoiser:
    """The sampler's autoguided denoiser of `strong` away from `weak`, at every step, unclipped."""
    guide = unclipped(weak, schedule, objective)
    return Denoiser(
        strong,
        schedule,
        objective,
        clip_x0=False,
        guidance_scale=GAMMA,
        guidance_interval=None,
        guide=guide,
    )


@pytest.mark.parametrize(("objective", "schedule_name"), [("v", "cosine"), ("eps", "linear")])
def test_the_teacher_gives_the_samplers_autoguided_x0(objective, schedule_name):
    """Mixing the two outputs gives the x̂₀ = x̂₀_guide + γ (x̂₀ − x̂₀_guide) of `Denoiser`, and
    differs from the teacher alone."""
    schedule = NoiseSchedule(schedule_name, T)
    strong, weak = pair(objective, schedule)
    teacher = FrozenTeacher(strong, weak, GAMMA)
    diffusion = GaussianDiffusion(schedule, objective=objective)
    sampler = autoguided(strong, weak, schedule, objective)
    z = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    moved = []
    for t in (50, 400, 800):
        times = torch.full((400,), t)
        x0, _ = diffusion.predict_x0_eps(z, times, teacher(z, times).float())
        expected, _ = sampler.predict(z, t, None)
        torch.testing.assert_close(x0, expected, rtol=0, atol=1e-4)
        alone, _ = diffusion.predict_x0_eps(z, times, strong(z, times).float())
        moved.append(float((x0 - alone).abs().max()))
    assert max(moved) > 1e-2


def test_a_round_target_is_two_autoguided_teacher_steps():
    """One student DDIM step predicting the target lands where two autoguided teacher steps do
    (the sampler's `Denoiser` with the guide)."""
    schedule = NoiseSchedule("cosine", T)
    strong, weak = pair("v", schedule)
    diffusion = ProgressiveDiffusion(schedule, FrozenTeacher(strong, weak, GAMMA), 8)
    guided = autoguided(strong, weak, schedule, "v")
    assert_a_student_step_is_two_teacher_steps(diffusion, guided, schedule, "v")


def guide_module(objective: str = "v", schedule: dict | None = None) -> DiffusionModule:
    """A DiffusionModule whose network is the exact denoiser of N(MEAN, WIDE)."""
    module = DiffusionModule(
        MLP_SETTINGS, schedule or SCHEDULE, {"objective": objective}, data_shape=(2,)
    )
    network = ExactNetwork(module.diffusion.schedule, objective, WIDE)
    network.load_state_dict(module.model.state_dict())
    module.model = network
    return module


def student(distill: dict, guide: DiffusionModule | None) -> ProgressiveDistillation:
    return ProgressiveDistillation(
        teacher_module("v"),
        distill,
        model=MLP_SETTINGS,
        schedule=SCHEDULE,
        diffusion={"objective": "v"},
        data_shape=(2,),
        guide=guide,
    )


def test_the_round_records_its_guide_and_its_teacher_is_autoguided():
    """The record holds the guide and γ (2 unless set); the frozen teacher mixes the two."""
    module = student(round_settings(guide="weak.ckpt"), guide_module())
    assert module.hparams["distill"] == {
        **distill_settings(round_settings()),
        "guide": "weak.ckpt",
        "guide_scale": 2.0,
    }
    assert module.diffusion.teacher.guide is not None
    assert module.diffusion.teacher.guide_scale == 2.0
    assert "guide" not in module.hparams and "guide" not in distill_settings(round_settings())
    scaled = student(round_settings(guide="weak.ckpt", guide_scale=1.5), guide_module())
    assert scaled.hparams["distill"]["guide_scale"] == 1.5
    assert scaled.diffusion.teacher.guide_scale == 1.5


@pytest.mark.parametrize(
    ("distill", "guide", "message"),
    [
        (
            {"guide": "weak.ckpt", "guidance": [1, 2]},
            guide_module,
            "distill.guide=weak.ckpt autoguides the teacher, distill.guidance distils its "
            "classifier-free guidance: set one of them",
        ),
        ({"guide_scale": 2}, None, "distill.guide_scale=2 needs distill.guide"),
        ({"guide": 3}, None, "distill.guide=3 must name a model"),
        (
            {"guide": "eps.ckpt"},
            lambda: guide_module("eps"),
            "distill.guide=eps.ckpt predicts diffusion.objective=eps but the teacher v",
        ),
        (
            {"guide": "linear.ckpt"},
            lambda: guide_module(schedule={"name": "linear", "num_timesteps": T}),
            "distill.guide=linear.ckpt has other noise levels than the teacher",
        ),
    ],
)
def test_a_guide_that_cannot_guide_the_teacher_is_refused(distill, guide, message):
    with pytest.raises(ConfigError, match=f"^{message}") as error:
        student(round_settings(**distill), guide and guide())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("distill", "expected"),
    [
        ({"teacher": "mnist"}, str(SHIPPED_DIR / "mnist" / "guide")),
        ({"teacher": "mnist", "guide": False}, None),
        ({"teacher": "mnist", "guide": "weak.ckpt"}, "weak.ckpt"),
        ({"teacher": "mnist_cond", "guidance": [1, 2]}, None),
        ({"teacher": "logs/run/checkpoints/last.ckpt"}, None),
        ({"teacher": "mnist_fast"}, None),
    ],
)
def test_the_teacher_folder_ships_the_default_guide(distill, expected):
    """null: the guide a teacher folder ships, unless distilled guidance is asked for; a .ckpt
    teacher (an earlier round) and a folder without a guide have none."""
    assert chosen_teacher_guide(distill) == expected


def test_a_teacher_that_is_no_model_is_named_in_one_line():
    with pytest.raises(ConfigError, match="^distill.teacher: pretrained=nothing_here is not"):
        chosen_teacher_guide({"teacher": "nothing_here"})


def test_the_shipped_teacher_is_autoguided_by_its_guide_unless_told_otherwise():
    """`experiment=distill` from `pretrained=mnist` builds a student whose teacher is guided by
    the folder's guide at γ = 2; `distill.guide=false` keeps the record of a plain round."""
    teacher = load_teacher("mnist")
    builds = {}
    for extra in ([], ["distill.guide=false"]):
        cfg = compose_config(
            "train", ["experiment=distill", "paths.output_dir=/tmp/unused", *extra]
        )
        builds[bool(extra)] = build_fit_module(cfg, tuple(teacher.data_shape))
    guided, plain = builds[False], builds[True]
    assert guided.distill["guide"] == str(SHIPPED_DIR / "mnist" / "guide")
    assert guided.distill["guide_scale"] == 2.0
    assert guided.diffusion.teacher.guide is not None
    assert "guide" not in plain.distill and plain.diffusion.teacher.guide is None
    settings = OmegaConf.to_container(
        compose_config("train", ["experiment=distill", "paths.output_dir=/tmp/unused"]).distill
    )
    assert plain.distill == distill_settings({**settings, "guide": False})


def test_a_chain_guides_its_first_round_only(tmp_path):
    """Later rounds learn the previous student with the guide switched off; rounds.json and the
    chain's folder name say the chain is autoguided, and a rerun without the guide is refused."""
    fake = FakeTrain()
    arguments = ["distill.teacher=mnist", "distill.teacher_steps=4", "distill.guide_scale=2"]
    last = distill_rounds([*arguments, f"paths.log_dir={tmp_path}"], runner=fake)
    chain = tmp_path / "distill_rounds" / "mnist_4_autoguided"
    assert last.parent.parent.parent == chain
    first, second = fake.calls
    assert value(first, "distill.guide") is None and value(first, "distill.guide_scale") == "2"
    assert value(second, "distill.guide") == "false"
    assert value(second, "distill.guide_scale") == "null"
    record = (chain / "rounds.json").read_text()
    assert str(SHIPPED_DIR / "mnist" / "guide") in record
    with pytest.raises(ConfigError, match="records rounds from a teacher autoguided by"):
        distill_rounds(
            [*arguments[:2], "distill.guide=false", f"rounds.dir={chain}"], runner=FakeTrain()
        )


def test_a_named_guide_needs_its_model_and_a_model_its_name():
    with pytest.raises(ValueError, match="pass guide="):
        student(round_settings(guide="weak.ckpt"), None)
    with pytest.raises(ValueError, match="pass guide="):
        student(round_settings(), guide_module())
