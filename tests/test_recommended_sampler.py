"""A model folder's recommended sampler: `sample` and `evaluate` use it for `pretrained=` unless
the command line chooses a sampler, so a distilled student samples with the steps it learned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddpm_lightning import sample as sample_command
from ddpm_lightning.sharing.recommended import chooses_sampler, with_recommended_sampler
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
    used = with_recommended_sampler(drawing(student), [f"pretrained={student}"])
    assert {key: used.sampler[key] for key in STUDENT} == STUDENT
    assert capsys.readouterr().out == (
        f"sampler: ddim, num_steps=3, eta=0.0, spacing=trailing, the one pretrained={student} "
        "recommends (sampler=… chooses another)\n"
    )
    guided = with_recommended_sampler(drawing(student), ["sampler.batch_size=7"])
    assert guided.sampler == {**STUDENT, "batch_size": 50}
    for overrides in (["sampler.num_steps=50"], None):
        assert with_recommended_sampler(drawing(student), overrides) == drawing(student)
    plain = tiny_model_folder(student.parent / "plain")
    assert with_recommended_sampler(drawing(plain), []) == drawing(plain)


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
