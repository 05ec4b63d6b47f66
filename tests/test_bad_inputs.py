"""Reported figures are the computed ones, and files or settings that cannot be right stop in
one line naming the file or key: samples.npz metadata, damaged weights, settings a model folder
or checkpoint leaves out or gets wrong, mismatched resumes, sampler options a sampler does not
take, SIGTERM mid-sampling, and the tools' own inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ddpm_lightning import classifier as classifier_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning import train as train_command
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.sharing import load_folder
from ddpm_lightning.sharing.folder import CONFIG_NAME, write_folder
from ddpm_lightning.tools import curves
from ddpm_lightning.tools.summarize import load_jobs
from ddpm_lightning.training.checkpoints import load_module
from ddpm_lightning.training.safety import check_resume_checkpoint, find_last_checkpoint
from tests.conftest import (
    PYTHON,
    REPO_ROOT,
    cli_env,
    run_main,
    tiny_model_folder,
    tiny_overrides,
    writing_config,
)

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]


def one_line(message: str, *parts: str) -> None:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    for part in parts:
        assert part in message, message


def write_npz(path: Path, labels=None, metadata=None, count: int = 16) -> Path:
    arrays = {"images": np.random.default_rng(0).integers(0, 256, (count, 1, 32, 32), np.uint8)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if metadata is not None:
        arrays["metadata"] = np.array(json.dumps(metadata))
    np.savez(path, **arrays)
    return path


def test_scores_and_counts_are_computed_never_read_from_the_metadata(tmp_path):
    claims = {"dataset": "mnist", "fld": 0.001, "num_samples": 10000, "seed": 4}
    samples = write_npz(tmp_path / "noise.npz", metadata=claims)
    metrics = evaluate(writing_config("evaluate", tmp_path / "out", f"samples={samples}"))
    assert metrics["num_samples"] == 16 and metrics["fld"] > 50
    assert metrics["seed"] == 4
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["fld"] == metrics["fld"] and written["num_samples"] == 16


@pytest.mark.parametrize(
    ("labels", "metadata", "message"),
    [
        ([99] * 16, {"dataset": "mnist"}, "labels lie in [99, 99]; mnist has the classes 0 to 9"),
        ([0.5] * 16, {"dataset": "mnist"}, "labels are a float64 array of shape (16,)"),
        (["a"] * 16, {"dataset": "mnist"}, "labels are a <U1 array of shape (16,)"),
        ([1] * 15, {"dataset": "mnist"}, "need 16 integer class indices"),
        (None, [1, 2], "its metadata is list [1, 2]"),
        (None, 5, "its metadata is int 5"),
        (None, {"dataset": 3}, "its metadata's dataset 3 is not a name"),
    ],
)
def test_bad_labels_and_metadata_in_samples_are_one_line(labels, metadata, message, tmp_path):
    samples = write_npz(tmp_path / "bad.npz", labels=labels, metadata=metadata)
    with pytest.raises(DataError) as error:
        evaluate(writing_config("evaluate", tmp_path / "out", f"samples={samples}"))
    one_line(str(error.value), f"samples={samples}", message)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_samples_and_a_model_together_are_refused(tmp_path, trained):
    samples = write_npz(tmp_path / "s.npz", metadata={"dataset": "mnist"})
    config = writing_config(
        "evaluate", tmp_path / "o", f"samples={samples}", f"ckpt_path={trained}"
    )
    with pytest.raises(ConfigError, match=r"^pass samples= or ckpt_path=, not both"):
        evaluate(config)


def damaged_folder(tmp_path: Path) -> Path:
    """A model folder whose weights hold NaN, with a SHA-256 that matches them."""
    folder = tiny_model_folder(tmp_path / "clean")
    module = load_folder(folder)
    state = {
        key: torch.full_like(value, float("nan")) for key, value in module.state_dict().items()
    }
    write_folder(tmp_path / "nan", dict(module.hparams), state, {})
    return tmp_path / "nan"


def test_non_finite_samples_stop_before_any_file(tmp_path, monkeypatch, capsys):
    folder = damaged_folder(tmp_path)
    out = tmp_path / "out"
    argv = [f"pretrained={folder}", "num_samples=4", "sampler.num_steps=2", f"out_dir={out}"]
    code, stderr = run_main(sample_command.main, argv, monkeypatch, capsys)
    assert code == 1
    one_line(stderr, "4 of 4 samples hold NaN or infinite values")
    assert not list(out.glob("*.npz")) and not list(out.glob("*.png"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("diffusion", None, "diffusion is missing"),
        ("diffusion", {"loss": "l2"}, "diffusion.objective is missing"),
        ("diffusion", ["v"], "diffusion is list ['v'], not a mapping"),
        ("model", "unet", "model is str unet, not a mapping"),
        ("data_shape", [32, 32], "data_shape is [32, 32], not (C, H, W)"),
        ("data_shape", None, "data_shape is missing"),
        ("dataset", 7, "dataset is 7, not a dataset's name"),
    ],
)
def test_a_folder_with_a_missing_or_malformed_setting_is_one_line(key, value, message, tmp_path):
    folder = tiny_model_folder(tmp_path / "f")
    config = json.loads((folder / CONFIG_NAME).read_text())
    if value is None:
        del config[key]
    else:
        config[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(DataError) as error:
        load_folder(folder)
    one_line(str(error.value), str(folder / CONFIG_NAME), message)


def test_checkpoints_with_settings_of_the_wrong_form_are_one_line(tmp_path, trained):
    checkpoint = torch.load(trained, weights_only=True)
    path = tmp_path / "bad.ckpt"
    torch.save({**checkpoint, "hyper_parameters": [1, 2]}, path)
    with pytest.raises(ConfigError) as error:
        load_module(path)
    one_line(str(error.value), f"ckpt_path={path}", "hyper_parameters is a list")
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "model"}
    torch.save({**checkpoint, "hyper_parameters": hparams}, path)
    with pytest.raises(ConfigError, match=r"hyper_parameters\.model is missing"):
        load_module(path)


def test_weights_of_another_network_in_a_checkpoint_are_one_line(tmp_path, trained):
    checkpoint = torch.load(trained, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    conditional = {**hparams, "model": {**hparams["model"], "num_classes": 10}}
    path = tmp_path / "swapped.ckpt"
    torch.save({**checkpoint, "hyper_parameters": conditional}, path)
    with pytest.raises(ConfigError) as error:
        load_module(path)
    one_line(str(error.value), f"ckpt_path={path}", "weights do not fit", "1 missing")


def test_a_schedule_of_other_timesteps_than_the_network_is_one_line(
    data_root, tmp_path, monkeypatch, capsys
):
    argv = tiny_overrides(data_root, tmp_path, "model.num_timesteps=10", "trainer.max_steps=1")
    code, stderr = run_main(train_command.main, argv, monkeypatch, capsys)
    assert code == 1
    one_line(stderr, "model.num_timesteps=10 but schedule.num_timesteps=20")


def test_resuming_a_checkpoint_of_another_dataset_is_refused(trained):
    hparams = torch.load(trained, weights_only=True)["hyper_parameters"]
    with pytest.raises(ConfigError) as error:
        check_resume_checkpoint(trained, {**hparams, "dataset": "fashion_mnist"})
    one_line(str(error.value), "dataset ('mnist' in the checkpoint, 'fashion_mnist' now)")


def job_run(root: Path, num: int, checkpoint: Path, overrides: list[str], age: int) -> Path:
    """multiruns/sweep/<num>/ with last.ckpt written `age` seconds ago and its overrides.yaml."""
    run = root / "multiruns" / "sweep" / str(num)
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    target = run / "checkpoints" / "last.ckpt"
    target.write_bytes(checkpoint.read_bytes())
    os.utime(target, (time.time() - age, time.time() - age))
    return target


def test_each_sweep_job_resumes_its_own_checkpoint(tmp_path, trained, capsys):
    first = job_run(tmp_path, 0, trained, ["seed=1"], 100)
    second = job_run(tmp_path, 1, trained, ["seed=2"], 50)
    assert find_last_checkpoint(tmp_path, None, None, ["seed=1", "ckpt_path=last"]) == first
    assert find_last_checkpoint(tmp_path, None, None, ["ckpt_path=last", "seed=2"]) == second
    assert "skipped 1 newer: 1: another job of the sweep" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="none of the 2 checkpoints"):
        find_last_checkpoint(tmp_path, None, None, ["seed=3"])


def test_ckpt_path_last_skips_a_run_whose_config_record_is_truncated(tmp_path, trained, capsys):
    good = job_run(tmp_path, 0, trained, ["seed=1"], 100)
    broken = job_run(tmp_path, 1, trained, ["seed=1"], 50).parent.parent
    (broken / ".hydra" / "config.yaml").write_text("task_name: [train\n  seed: 4")
    assert find_last_checkpoint(tmp_path, "train") == good
    assert "1: unreadable .hydra/config.yaml" in capsys.readouterr().out


def test_labels_beyond_the_conditional_models_classes_stop_training(
    data_root, tmp_path, monkeypatch, capsys
):
    argv = tiny_overrides(data_root, tmp_path, "model=unet_cond", "model.num_classes=5", *SHORT)
    code, stderr = run_main(train_command.main, argv, monkeypatch, capsys)
    assert code == 1
    one_line(stderr, "labels in [0, 9] but model.num_classes=5")


@pytest.mark.parametrize(
    "overrides",
    [
        ["sampler=heun", "+sampler.eta=1"],
        ["sampler=ddim", "+sampler.kwargs.foo=1"],
        ["sampler=ddpm", "+sampler.num_steps=5"],
        ["sampler=ddpm", "+sampler.spacing=karras"],
        ["trainer.precision=16-true"],
        ["trainer.precision=bf16-true"],
    ],
)
def test_sampler_and_precision_settings_that_do_not_apply_are_one_line(
    overrides, tmp_path, monkeypatch, capsys
):
    folder = tiny_model_folder(tmp_path / "f")
    out = tmp_path / "out"
    argv = [f"pretrained={folder}", "num_samples=2", f"out_dir={out}", *overrides]
    code, stderr = run_main(sample_command.main, argv, monkeypatch, capsys)
    assert code == 1
    one_line(stderr, "error: ")
    assert ("sampler" in stderr) or ("trainer.precision" in stderr), stderr
    assert not list(out.glob("*.npz"))


def terminated_while_drawing(command: str, tmp_path: Path) -> tuple[int, str]:
    """Run `command` on 4,000 samples of a tiny model, send SIGTERM once it has started
    drawing; (exit code, stderr)."""
    folder = tiny_model_folder(tmp_path / "f")
    arguments = [
        f"pretrained={folder}",
        "num_samples=4000",
        "sampler.num_steps=20",
        f"out_dir={tmp_path / 'out'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    process = subprocess.Popen(
        [PYTHON, "-m", f"ddpm_lightning.{command}", *arguments],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if b"network calls" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr.decode()


@pytest.mark.parametrize(("command", "output"), [("sample", "*.npz"), ("evaluate", "*.json")])
def test_sigterm_while_drawing_stops_at_once_and_writes_nothing(command, output, tmp_path):
    code, stderr = terminated_while_drawing(command, tmp_path)
    assert code == 128 + signal.SIGTERM, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: stopped by SIGTERM; no output was left half written"]
    assert "Traceback" not in stderr
    assert not list((tmp_path / "out").glob(output))


def test_a_task_name_too_long_for_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    argv = ["task_name=" + "x" * 5000, f"paths.log_dir={tmp_path}"]
    code, stderr = run_main(train_command.main, argv, monkeypatch, capsys)
    assert code == 1
    one_line(stderr, "task_name=xxxxxxxxxxxxxxxxxxxx… has 5000 characters")
    assert not list(tmp_path.iterdir())


def test_summarize_marks_a_job_with_a_corrupt_record_failed(tmp_path, capsys):
    for num, overrides in ((0, "- seed=1\n"), (1, "- seed: [2\n")):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
        (tmp_path / str(num) / ".hydra" / "overrides.yaml").write_text(overrides)
    jobs = load_jobs(tmp_path)
    assert [(job.num, job.overrides, job.score) for job in jobs] == [
        (0, {"seed": "1"}, None),
        (1, {}, None),
    ]
    assert "warning: job 1 counted as failed:" in capsys.readouterr().out


def test_classifier_checks_its_export_folder_before_training(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    argv = [f"export_dir={blocker}", f"paths.output_dir={tmp_path / 'run'}"]

    def no_training(*args, **kwargs):
        raise AssertionError("the data or the trainer was built before the check")

    monkeypatch.setattr(classifier_command, "instantiate", no_training)
    code, stderr = run_main(classifier_command.main, argv, monkeypatch, capsys)
    assert code == 1
    one_line(stderr, f"export_dir={blocker} cannot be written")


def test_curves_writes_the_png_it_names(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    metrics = tmp_path / "run" / "csv" / "metrics.csv"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("step,val/fld\n10,5.0\n20,4.0\n")
    folder = tmp_path / "pictures"
    folder.mkdir()
    curves.main(["--run", "a", str(tmp_path / "run"), "0.1", "--out", str(folder)])
    written = folder / curves.DEFAULT_OUT
    assert written.is_file() and f"wrote {written}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        curves.main(["--run", "a", str(tmp_path / "run"), "0.1", "--out", str(tmp_path / "x")])
    one_line(capsys.readouterr().err, "--out", "must be a .png file or a folder")


def test_a_sha256_that_is_no_digest_is_one_line(tmp_path):
    folder = tiny_model_folder(tmp_path / "f")
    config = json.loads((folder / CONFIG_NAME).read_text())
    (folder / CONFIG_NAME).write_text(json.dumps({**config, "sha256": 12345}))
    with pytest.raises(DataError) as error:
        load_folder(folder)
    one_line(str(error.value), "sha256 is 12345, not the 64 hex digits")


def test_a_lock_that_is_a_folder_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    (run / ".lock").mkdir(parents=True)
    argv = [*tiny_overrides(data_root, run, *SHORT), f"hydra.run.dir={run}"]
    code, stderr = run_main(train_command.main, argv, monkeypatch, capsys)
    assert code == 1
    one_line(stderr, f"{run / '.lock'} is a folder where the lock file belongs")


def test_curves_against_a_column_reads_its_points_sorted(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    table = tmp_path / "summary.csv"
    table.write_text("job,network_evaluations,fld\n0,4,110.3\n1,1,847.0\n2,,9.0\n3,2,845.9\n")
    curve = curves.read_column_curve("ddim", table, "network_evaluations", "fld")
    assert (curve.hours, curve.values) == ([1.0, 2.0, 4.0], [847.0, 845.9, 110.3])
    out = tmp_path / "calls.png"
    curves.main(
        [
            "--run",
            "ddim",
            str(table),
            "--x",
            "network_evaluations",
            "--metric",
            "fld",
            "--log-x",
            "--log-y",
            "--out",
            str(out),
        ]
    )
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        curves.main(["--run", "ddim", str(table), "0.1", "--x", "network_evaluations"])
    one_line(capsys.readouterr().err, "--run ddim", "give LABEL PATH with --x")
    with pytest.raises(SystemExit):
        curves.main(["--run", "ddim", str(table), "--x", "calls", "--metric", "fld"])
    one_line(capsys.readouterr().err, "has no column calls")
