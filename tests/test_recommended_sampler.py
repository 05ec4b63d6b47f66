"""A model folder's recommended sampler: `sample` and `evaluate` use it for `pretrained=` unless
the command line chooses a sampler, so a distilled student samples with the steps it learned; a
distillation round's checkpoint samples with the steps its student learned, and a flow model
that recommends nothing with a flow sampler."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from ddpm_lightning import export as export_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning.distill.settings import distill_settings
from ddpm_lightning.sharing.learned import checkpoint_learned_sampler, learned_sampler
from ddpm_lightning.sharing.recommended import chooses_sampler, with_recommended_sampler
from ddpm_lightning.training.checkpoints import read_checkpoint
from ddpm_lightning.training.drawing import Drawing
from tests.conftest import run_command, tiny_model_folder

STUDENT = {"name": "ddim", "num_steps": 3, "eta": 0.0, "spacing": "trailing"}


@pytest.fixture
def student(tmp_path):
    """A tiny model folder that recommends DDIM-3, η = 0, trailing."""
    folder = tiny_model_folder(tmp_path / "student")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sampler": STUDENT}))
    return folder


@pytest.mark.parametrize(
    ("overrides", "chooses"),
    [
        ([], False),
        (["pretrained=mnist_fast", "num_samples=8", "seed=1"], False),
        (["sampler=ddpm"], True),
        (["sampler.num_steps=50"], True),
        (["+sampler.kwargs.x=1"], True),
        (["sampler.guidance_scale=1.5", "sampler.batch_size=64"], False),
        (["sampler.guidance_scale=1.5", "sampler.eta=0"], True),
        (["samplers=2"], False),
        (["++sampler.eta=0"], True),
        (["~sampler.spacing"], True),
        (["++sampler.batch_size=8"], False),
    ],
)
def test_which_overrides_choose_the_sampler(overrides, chooses):
    assert chooses_sampler(overrides) is chooses


def drawing(folder) -> Drawing:
    chosen = {"name": "ddim", "num_steps": 50, "eta": 1.0, "spacing": "uniform", "batch_size": 50}
    return Drawing(str(folder), None, chosen, {}, 0)


def test_the_folders_sampler_is_used_unless_one_is_chosen(student, capsys):
    used = with_recommended_sampler(drawing(student), [f"pretrained={student}"], "eps")
    assert {key: used.sampler[key] for key in STUDENT} == STUDENT
    assert capsys.readouterr().out == (
        f"sampler: ddim, num_steps=3, eta=0.0, spacing=trailing, the one pretrained={student} "
        "recommends (sampler=… chooses another)\n"
    )
    guided = with_recommended_sampler(drawing(student), ["sampler.batch_size=7"], "eps")
    assert guided.sampler == {**STUDENT, "batch_size": 50}
    for overrides in (["sampler.num_steps=50"], None):
        assert with_recommended_sampler(drawing(student), overrides, "eps") == drawing(student)
    plain = tiny_model_folder(student.parent / "plain")
    assert with_recommended_sampler(drawing(plain), [], "eps") == drawing(plain)


def test_with_a_guide_gamma_and_interval_are_autoguidances(student):
    """A folder's γ and interval (classifier-free guidance's) apply without a guide; with one,
    they are the command line's, or γ null (autoguidance's default) and every step guided."""
    config = json.loads((student / "config.json").read_text())
    recommended = {**STUDENT, "guidance_scale": 1.25, "guidance_interval": [0.3, 4]}
    (student / "config.json").write_text(json.dumps({**config, "sampler": recommended}))
    plain = with_recommended_sampler(drawing(student), [], "eps")
    assert (plain.sampler["guidance_scale"], plain.sampler["guidance_interval"]) == (1.25, [0.3, 4])
    guided = replace(drawing(student), guide="weak")
    used = with_recommended_sampler(guided, [], "eps").sampler
    assert (used["guidance_scale"], used["guidance_interval"]) == (None, None)
    chosen = replace(
        guided, sampler={**guided.sampler, "guidance_scale": 3.0, "guidance_interval": [0.5, 9]}
    )
    overrides = ["sampler.guidance_scale=3", "sampler.guidance_interval=[0.5,9]"]
    used = with_recommended_sampler(chosen, overrides, "eps").sampler
    assert (used["guidance_scale"], used["guidance_interval"]) == (3.0, [0.5, 9])
    on_the_command_line = replace(guided, pretrained=None, sampler=chosen.sampler)
    used = with_recommended_sampler(on_the_command_line, overrides[:1], "eps").sampler
    assert (used["guidance_scale"], used["guidance_interval"]) == (3.0, None)


def test_the_sample_command_draws_with_the_recommended_steps(
    student, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    argv = [
        f"pretrained={student}",
        "num_samples=2",
        "gif_images=2",
        "gif_frames=2",
        f"hydra.run.dir={out}",
    ]
    code, printed, stderr = run_command(sample_command.main, argv, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    assert any(line.startswith("sampler: ddim, num_steps=3, eta=0.0") for line in printed)
    metadata = json.loads(str(np.load(out / "samples.npz")["metadata"]))
    assert metadata["network_evaluations"] == 3
    assert metadata["sampler"]["spacing"] == "trailing"
    chosen = tmp_path / "chosen"
    argv = [*argv[:-1], "sampler.num_steps=2", f"hydra.run.dir={chosen}"]
    code, printed, stderr = run_command(sample_command.main, argv, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    metadata = json.loads(str(np.load(chosen / "samples.npz")["metadata"]))
    assert metadata["network_evaluations"] == 2 and metadata["sampler"]["spacing"] == "uniform"


def sampled(argv: list[str], out, monkeypatch, capsys) -> tuple[list[str], dict]:
    """Run the sample command into `out`; its printed lines and samples.npz's metadata."""
    code, printed, stderr = run_command(
        sample_command.main, [*argv, f"hydra.run.dir={out}"], monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    return printed, json.loads(str(np.load(out / "samples.npz")["metadata"]))


def round_record(**settings) -> dict:
    return distill_settings({"teacher": "mnist", "teacher_steps": 8, **settings})


@pytest.mark.parametrize(
    ("settings", "sampler"),
    [
        ({}, {"name": "ddim", "num_steps": 4, "eta": 0.0, "spacing": "trailing"}),
        (
            {"spacing": "uniform"},
            {"name": "ddim", "num_steps": 4, "eta": 0.0, "spacing": "uniform"},
        ),
        (
            {"guidance": [1, 2]},
            {**STUDENT, "num_steps": 4, "guidance_scale": 1.25, "guidance_interval": None},
        ),
        (
            {"guidance": [1.5, 3], "guidance_interval": [0.3, 4]},
            {**STUDENT, "num_steps": 4, "guidance_scale": 1.5, "guidance_interval": [0.3, 4.0]},
        ),
        ({"method": "consistency"}, {"name": "consistency", "spacing": "trailing"}),
    ],
)
def test_a_round_record_names_the_sampler_its_student_learned(settings, sampler):
    """Progressive: DDIM η=0 at half the teacher's steps on the round's spacing, a guided
    student at its interval and the default γ 1.25 clipped into the range it learned;
    consistency: consistency sampling."""
    assert learned_sampler(round_record(**settings)) == sampler


@pytest.fixture
def round_checkpoint(trained, tmp_path):
    """The tiny run's checkpoint with the record of a round from 8 to 4 steps."""
    checkpoint = read_checkpoint(trained)
    path = tmp_path / "round.ckpt"
    torch.save({**checkpoint, "distill": round_record()}, path)
    return path


def test_a_plain_checkpoint_learned_no_sampler(trained):
    assert checkpoint_learned_sampler(trained) is None
    assert checkpoint_learned_sampler(None) is None


def source_argv(source: str, request, tmp_path) -> str:
    """`ckpt_path=` of a round's checkpoint, or `pretrained=` of a flow model's folder."""
    if source == "round":
        return f"ckpt_path={request.getfixturevalue('round_checkpoint')}"
    return f"pretrained={tiny_model_folder(tmp_path / 'flow', objective='flow')}"


@pytest.mark.parametrize(
    ("source", "line", "drawn", "chosen", "chosen_drawn"),
    [
        (
            "round",
            "sampler: ddim, num_steps=4, eta=0.0, spacing=trailing, the one the distilled "
            "student in ckpt_path learned (sampler=… chooses another)",
            (4, {"name": "ddim", "spacing": "trailing"}),
            ["sampler.num_steps=2"],
            (2, {"name": "ddim", "spacing": "uniform"}),
        ),
        (
            # The tiny model's T = 20 caps Heun's 25 steps at 20: 2·20 − 1 calls.
            "flow",
            "sampler: flow_heun, num_steps=25, the default for a model of "
            "diffusion.objective=flow (sampler=… chooses another)",
            (39, {"name": "flow_heun"}),
            ["sampler=flow_euler", "sampler.num_steps=3"],
            (3, {"name": "flow_euler"}),
        ),
    ],
)
def test_a_model_samples_with_the_sampler_it_learned_or_needs_unless_told(
    source, line, drawn, chosen, chosen_drawn, request, tmp_path, monkeypatch, capsys
):
    """A round's checkpoint draws with its student's steps; a flow model, which the default
    DDIM cannot draw, with flow_heun; a sampler on the command line wins."""
    argv = [source_argv(source, request, tmp_path), "num_samples=2", "gif_images=2", "gif_frames=2"]
    for overrides, out, (calls, settings) in (
        ([], "default", drawn),
        (chosen, "chosen", chosen_drawn),
    ):
        printed, metadata = sampled([*argv, *overrides], tmp_path / out, monkeypatch, capsys)
        assert (line in printed) == (not overrides)
        assert metadata["network_evaluations"] == calls
        assert {key: metadata["sampler"][key] for key in settings} == settings


def test_an_export_recommends_what_sample_would_use(
    student, round_checkpoint, tmp_path, monkeypatch, capsys
):
    """Without sampler settings on the command line, a round's checkpoint exports with the
    sampler its student learned and a folder re-exports with its own recommendation; a chosen
    sampler wins."""
    cases = [
        ([f"ckpt_path={round_checkpoint}"], {"num_steps": 4, "eta": 0.0, "spacing": "trailing"}),
        ([f"pretrained={student}"], {"num_steps": 3, "eta": 0.0, "spacing": "trailing"}),
        ([f"pretrained={student}", "sampler.num_steps=5"], {"num_steps": 5, "eta": 1.0}),
    ]
    for i, (source, expected) in enumerate(cases):
        out = tmp_path / f"export_{i}"
        argv = [*source, f"out_dir={out}", "samples=false", f"hydra.run.dir={out}_run"]
        code, _, stderr = run_command(export_command.main, argv, monkeypatch, capsys)
        assert code == 0, stderr[-2000:]
        sampler = json.loads((out / "config.json").read_text())["sampler"]
        assert {key: sampler[key] for key in expected} == expected, source


def test_a_flow_model_exports_its_flow_sampler_and_refuses_ddim_before_drawing(
    tmp_path, monkeypatch, capsys
):
    flow = tiny_model_folder(tmp_path / "flow", objective="flow")
    argv = [f"pretrained={flow}", "num_samples=2", "sampler=ddim"]
    code, printed, stderr = run_command(
        sample_command.main, [*argv, f"hydra.run.dir={tmp_path / 'ddim'}"], monkeypatch, capsys
    )
    assert code == 1 and not any(line.startswith("sampling ") for line in printed)
    assert "choose sampler=flow_euler or sampler=flow_heun" in stderr
    exported = tmp_path / "exported"
    argv = [f"pretrained={flow}", f"out_dir={exported}", "samples=false"]
    code, _, stderr = run_command(
        export_command.main, [*argv, f"hydra.run.dir={exported}_run"], monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    sampler = json.loads((exported / "config.json").read_text())["sampler"]
    assert (sampler["name"], sampler["num_steps"]) == ("flow_heun", 25)
