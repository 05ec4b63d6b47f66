"""The rounds of progressive distillation (ddpm_lightning/tools/distill_rounds.py): the halving
plan, its refusals, the train command each round gets, and a chain 4 → 2 → 1 of a tiny teacher
that a rerun skips and an interrupted round resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest.mock import patch

import pytest
from conftest import SHORT_RUN, TINY_MODEL, cli_env, tiny_config

from ddpm_lightning import train
from ddpm_lightning.diffusion.samplers import DDIMSampler
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.sharing.folder import write_folder
from ddpm_lightning.tools.distill_rounds import distill_rounds, plan, round_folder
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from ddpm_lightning.training.runinfo import build_module


def test_64_to_1_is_six_halving_rounds():
    rounds = plan(64, 1)
    assert rounds == [(64, 32), (32, 16), (16, 8), (8, 4), (4, 2), (2, 1)]
    assert [round_folder(*steps) for steps in rounds[:2]] == [
        "round_064_to_032",
        "round_032_to_016",
    ]
    assert plan(50, 25) == [(50, 25)] and plan(48, 3) == [(48, 24), (24, 12), (12, 6), (6, 3)]


@pytest.mark.parametrize(
    ("teacher_steps", "final_steps", "message"),
    [
        (48, 1, r"teacher_steps=48 does not halve to rounds.final_steps=1 \(48 → 24 → 12 → 6 → 3 "),
        (50, 1, r"\(50 → 25 is odd\); use teacher_steps = final_steps × 2\^k, e.g. 32"),
        (64, 3, r"teacher_steps=64 does not halve to rounds.final_steps=3 \(it reaches 2\)"),
        (64, 64, r"rounds.final_steps=64 must be below distill.teacher_steps=64"),
        (8, 16, r"rounds.final_steps=16 must be below distill.teacher_steps=8"),
    ],
)
def test_steps_that_do_not_halve_to_the_target_are_refused(teacher_steps, final_steps, message):
    with pytest.raises(ConfigError, match=message) as error:
        plan(teacher_steps, final_steps)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["distill.teacher_steps=25"], "teacher_steps=25 does not halve to rounds.final_steps=1"),
        (["rounds.final_steps=0"], r"rounds.final_steps=0: must be an integer ≥ 1$"),
        (["rounds.minutes=3"], "rounds.minutes is not a setting of the rounds; rounds takes"),
        (["rounds.last_round_minutes=0"], r"rounds.last_round_minutes=0: must be a finite number"),
        (["hydra.run.dir=x"], "the rounds set hydra.run.dir for each round"),
        (["ckpt_path=x.ckpt"], "the rounds set ckpt_path for each round"),
        (["experiment=cifar"], "experiment=cifar: each round is experiment=distill"),
        (
            ["+trainer.max_time=00:01:00:00"],
            r"give rounds.minutes_per_round \(and rounds.last_round_minutes\), not",
        ),
        (["distill=consistency"], "distill.method=consistency: the rounds are progressive"),
        (["trainer.max_epochs=0.5"], "trainer.max_epochs=0.5: must be"),
        (["final_steps"], "give key=value overrides"),
        (["data=nonexistent"], "Could not find 'data/nonexistent'"),
        (["nonsense.key=1"], r"Could not override 'nonsense.key'. To append .* use \+nonsense"),
    ],
)
def test_bad_arguments_are_refused_before_any_round(tmp_path, arguments, message):
    chain = tmp_path / "chain"
    steps = (
        [] if arguments[0].startswith("distill.teacher_steps=") else ["distill.teacher_steps=64"]
    )
    with pytest.raises(ConfigError, match=message) as error:
        distill_rounds([f"rounds.dir={chain}", *steps, *arguments])
    assert "\n" not in str(error.value)
    assert not chain.exists()


class FakeTrain:
    """A train command that records its overrides and writes the run folder's last.ckpt (an
    empty file), exiting with `codes` in turn (then 0)."""

    def __init__(self, *codes: int):
        self.calls: list[list[str]] = []
        self.codes = list(codes)

    def __call__(self, overrides: list[str]) -> int:
        self.calls.append(overrides)
        folder = Path(value(overrides, "hydra.run.dir"))
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        (folder / "checkpoints" / "last.ckpt").touch()
        return self.codes.pop(0) if self.codes else 0


def value(overrides: list[str], key: str) -> str | None:
    """The value an override list gives `key` (the last one), or None."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").split("=", 1)[0] == key]
    return values[-1] if values else None


def test_each_round_trains_the_previous_students_steps(tmp_path, capsys):
    """Round 2's teacher is round 1's last.ckpt at its student steps, its samplers take the
    round's student steps, a time budget becomes +trainer.max_time without an epoch limit, and
    rounds.json records both rounds; the command line's other overrides reach every round."""
    chain, fake = tmp_path / "chain", FakeTrain()
    arguments = [
        "distill.teacher=mnist",
        "distill.teacher_steps=4",
        f"rounds.dir={chain}",
        "rounds.minutes_per_round=10.5",
        "optimizer.lr=3e-5",
    ]
    last = distill_rounds(arguments, runner=fake)
    assert last == chain / "round_002_to_001" / "checkpoints" / "last.ckpt"
    first, second = fake.calls
    assert value(first, "distill.teacher") == "mnist"
    assert value(second, "distill.teacher") == str(chain / "round_004_to_002/checkpoints/last.ckpt")
    for overrides, (teacher_steps, student_steps) in zip(fake.calls, [(4, 2), (2, 1)], strict=True):
        assert value(overrides, "experiment") == "distill"
        assert value(overrides, "distill.teacher_steps") == str(teacher_steps)
        assert value(overrides, "callbacks.sample_grid.sampler.num_steps") == str(student_steps)
        assert value(overrides, "callbacks.fld.sampler.num_steps") == str(student_steps)
        assert value(overrides, "trainer.max_time") == "00:00:10:30"
        assert value(overrides, "trainer.max_epochs") == "-1"
        assert value(overrides, "optimizer.lr") == "3e-5"
        assert value(overrides, "ckpt_path") is None
        folder = chain / round_folder(teacher_steps, student_steps)
        assert value(overrides, "hydra.run.dir") == str(folder)
    record = json.loads((chain / "rounds.json").read_text())
    assert (record["teacher"], record["teacher_steps"]) == ("mnist", 4)
    assert [(r["teacher"], r["teacher_steps"], r["student_steps"]) for r in record["rounds"]] == [
        ("mnist", 4, 2),
        (str(chain / "round_004_to_002/checkpoints/last.ckpt"), 2, 1),
    ]
    assert [r["checkpoint"] for r in record["rounds"]] == [
        "round_004_to_002/checkpoints/last.ckpt",
        "round_002_to_001/checkpoints/last.ckpt",
    ]
    assert all(r["finished"] and r["wall_seconds"] >= 0 for r in record["rounds"])
    printed = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("round 1/2 (4 → 2 steps): ") for line in printed) == 2
    assert sum(line.startswith("round 2/2 (2 → 1 steps): ") for line in printed) == 2


TEN, THIRTY = "00:00:10:00", "00:00:30:00"


@pytest.mark.parametrize(
    ("minutes", "max_times", "max_epochs"),
    [
        (
            ["rounds.minutes_per_round=10", "rounds.last_round_minutes=30"],
            [TEN, TEN, THIRTY],
            ["-1"] * 3,
        ),
        (["rounds.last_round_minutes=30"], [None, None, THIRTY], [None, None, "-1"]),
        (["rounds.last_round_minutes=30", "trainer.max_epochs=2"], [None, None, THIRTY], ["2"] * 3),
    ],
)
def test_the_last_round_can_train_longer(tmp_path, minutes, max_times, max_epochs):
    """rounds.last_round_minutes budgets the last round only: the others keep
    minutes_per_round, or without it experiment=distill's epochs; an epoch limit on the command
    line stays. rounds.json records each budget, and a rerun with another is refused in one line
    (its finished round would be skipped), with the same one skips every round."""
    fake = FakeTrain()
    arguments = ["distill.teacher=mnist", "distill.teacher_steps=8", f"rounds.dir={tmp_path}"]
    distill_rounds([*arguments, *minutes], runner=fake)
    assert [value(overrides, "trainer.max_time") for overrides in fake.calls] == max_times
    assert [value(overrides, "trainer.max_epochs") for overrides in fake.calls] == max_epochs
    record = json.loads((tmp_path / "rounds.json").read_text())
    assert [entry["max_time"] for entry in record["rounds"]] == max_times
    other = [m for m in minutes if not m.startswith("rounds.last_round_minutes")]
    with pytest.raises(
        ConfigError, match=r"records round 3/3 \(2 → 1 steps\) with \+trainer"
    ) as error:
        distill_rounds([*arguments, *other, "rounds.last_round_minutes=20"], runner=fake)
    assert "not 00:00:20:00" in str(error.value) and "\n" not in str(error.value)
    distill_rounds([*arguments, *minutes], runner=fake)
    assert len(fake.calls) == 3


def test_a_rerun_skips_finished_rounds_and_resumes_an_interrupted_one(tmp_path, capsys):
    chain = tmp_path / "chain"
    arguments = ["distill.teacher=mnist", "distill.teacher_steps=8", f"rounds.dir={chain}"]
    interrupted = FakeTrain(0, 130)
    with pytest.raises(SystemExit) as stop:
        distill_rounds(arguments, runner=interrupted)
    assert stop.value.code == 130 and len(interrupted.calls) == 2
    assert "error: round 2/3 (4 → 2 steps) stopped (exit code 130)" in capsys.readouterr().err
    record = json.loads((chain / "rounds.json").read_text())
    assert [r["finished"] for r in record["rounds"]] == [True, False]
    resumed = FakeTrain()
    distill_rounds(arguments, runner=resumed)
    assert [value(call, "distill.teacher_steps") for call in resumed.calls] == ["4", "2"]
    assert value(resumed.calls[0], "ckpt_path") == str(
        chain / "round_004_to_002/checkpoints/last.ckpt"
    )
    assert value(resumed.calls[1], "ckpt_path") is None
    finished = (chain / "rounds.json").read_text()
    again = FakeTrain()
    distill_rounds(arguments, runner=again)
    assert again.calls == [] and (chain / "rounds.json").read_text() == finished
    assert "round 3/3 (2 → 1 steps): done before, in" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="records rounds from distill.teacher=mnist"):
        distill_rounds(["distill.teacher=fashion_mnist", *arguments[1:]], runner=again)


def train_in_process(overrides: list[str]) -> int:
    """The train command's exit code, run in this process."""
    with patch.object(sys, "argv", ["train", *overrides]):
        try:
            train.main()
        except SystemExit as exit_:
            return int(exit_.code or 0)
    return 0


def tiny_teacher(folder: Path, data_root: Path, *overrides: str) -> Path:
    """A model folder of the tiny UNet (T = 20, v-prediction) as the train config builds it
    with `overrides`, randomly initialised: a teacher whose settings the rounds' students
    share."""
    cfg = tiny_config(data_root, folder, "seed=0", *overrides)
    module = build_module(cfg, (1, 32, 32))
    write_folder(folder, dict(module.hparams), module.state_dict(), {})
    return folder


def tiny_chain(tmp_path: Path, data_root: Path, *overrides: str) -> list[str]:
    """Arguments of rounds 4 → 2 → 1 from `tiny_teacher`, each round 3 steps of the
    synthetic data on the CPU, teacher and rounds with `overrides`."""
    teacher = tiny_teacher(tmp_path / "teacher", data_root, *overrides)
    return [
        f"distill.teacher={teacher}",
        "distill.teacher_steps=4",
        "rounds.final_steps=1",
        f"rounds.dir={tmp_path / 'chain'}",
        f"data.root={data_root}",
        "data.batch_size=16",
        "trainer.accelerator=cpu",
        "callbacks.rich_progress_bar=null",
        "callbacks.fld=null",
        "callbacks.sample_grid=null",
        "test=false",
        "trainer.log_every_n_steps=1",
        *TINY_MODEL,
        *SHORT_RUN,
        *overrides,
    ]


@pytest.mark.usefixtures("one_thread")
def test_a_tiny_chain_trains_two_rounds_and_a_rerun_skips_them(tmp_path, data_root, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    arguments = tiny_chain(tmp_path, data_root)
    chain = tmp_path / "chain"
    last = distill_rounds(arguments, runner=train_in_process)
    folders = sorted(path.name for path in chain.iterdir() if path.is_dir())
    assert folders == ["round_002_to_001", "round_004_to_002"]
    for folder, teacher_steps in zip(folders, (2, 4), strict=True):
        checkpoint = read_checkpoint(chain / folder / "checkpoints" / "last.ckpt")
        assert checkpoint["distill"]["teacher_steps"] == teacher_steps
        assert checkpoint["global_step"] == 3
    assert last == chain / "round_002_to_001" / "checkpoints" / "last.ckpt"
    record = (chain / "rounds.json").read_text()
    assert [r["finished"] for r in json.loads(record)["rounds"]] == [True, True]
    contents = sorted(str(path) for path in chain.rglob("*"))
    distill_rounds(arguments, runner=train_in_process)
    assert (chain / "rounds.json").read_text() == record
    assert sorted(str(path) for path in chain.rglob("*")) == contents


@pytest.mark.usefixtures("one_thread")
def test_a_guided_chain_distils_guidance_in_every_round(tmp_path, data_root, monkeypatch, capsys):
    """distill.guidance goes to each round: every student takes γ, the second round's teacher
    (the first's student) included, its γ embedding trained; the 4 → 2 student samples guided
    at one call of the batch per step, γ given where the sampler guides; the closing sample
    command guides."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    arguments = [*tiny_chain(tmp_path, data_root, "model=unet_cond"), "distill.guidance=[1,2]"]
    chain = tmp_path / "chain"
    distill_rounds(arguments, runner=train_in_process)
    (done,) = [line for line in capsys.readouterr().out.splitlines() if "rounds done" in line]
    assert done.endswith(
        "sampler.spacing=trailing sampler.guidance_scale=2 sampler.guidance_interval=null"
    )
    assert json.loads((chain / "rounds.json").read_text())["guidance"] == [1.0, 2.0]
    for folder in ("round_004_to_002", "round_002_to_001"):
        checkpoint = read_checkpoint(chain / folder / "checkpoints" / "last.ckpt")
        assert checkpoint["distill"]["guidance"] == [1.0, 2.0]
        assert checkpoint["hyper_parameters"]["model"]["guidance_embedding"] is True
        assert checkpoint["state_dict"]["model.guidance_embedding.output.weight"].abs().sum() > 0
    module = load_module(chain / "round_004_to_002" / "checkpoints" / "last.ckpt")
    sampler = module.make_sampler(
        DDIMSampler, num_steps=2, eta=0.0, spacing="trailing", guidance_scale=1.5, progress=False
    )
    calls: list[tuple[int, float | None]] = []

    def count(network, args, kwargs, output):
        guidance = kwargs.get("guidance")
        calls.append((len(args[0]), None if guidance is None else guidance.unique().item()))

    module.model.register_forward_hook(count, with_kwargs=True)
    module.generate(sampler, 4, seed=0)
    denoiser = sampler.denoiser
    assert denoiser is not None
    expected = [(4, denoiser.guidance_scale_at(t)) for t in sampler.steps()]
    assert calls == expected and len(calls) == sampler.network_evaluations() == 2
    assert (4, 1.5) in calls
    with pytest.raises(ConfigError, match=r"records rounds of distill.guidance=\[1.0, 2.0\]"):
        distill_rounds(arguments[:-1], runner=train_in_process)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_the_command_runs_each_round_as_a_train_process(tmp_path, data_root):
    """`python -m ddpm_lightning.tools.distill_rounds`: each round a train process of its own
    with its train.log."""
    import subprocess

    arguments = tiny_chain(tmp_path, data_root)
    command = [sys.executable, "-m", "ddpm_lightning.tools.distill_rounds", *arguments]
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    chain = tmp_path / "chain"
    for folder in ("round_004_to_002", "round_002_to_001"):
        assert (chain / folder / "checkpoints" / "last.ckpt").is_file()
        assert (chain / folder / "train.log").is_file()
    lines = [line for line in result.stdout.splitlines() if line.startswith("round")]
    assert [line.split(":")[0] for line in lines] == [
        "rounds folder",
        *["round 1/2 (4 → 2 steps)"] * 2,
        *["round 2/2 (2 → 1 steps)"] * 2,
        "rounds done",
    ]
