"""A resumed run continues in its own folder: the same metrics.csv, checkpoints and logger runs,
no warnings, and the rows of an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import model_checkpoint
from lightning.pytorch.utilities.rank_zero import WarningCache

from ddpm_lightning import train as train_command
from ddpm_lightning.training.loggers import wandb_logger
from tests.conftest import run_command, tiny_overrides

# 3 epochs of 2 steps (N = 6): the pre-empted run stops at step 3, in the middle of epoch 1.
RUN = [
    "trainer.max_epochs=3",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "logger=[csv,tensorboard]",
]
# What seeds decide; the throughput columns (train/time, train/samples, …) are wall time, and
# counted from the start of each process.
SEEDED = ("step", "epoch", "lr-Adam", "train/loss", "val/loss", "test/loss")
LIGHTNING_WARNINGS = ("dirpath has changed", "monitored key", "exists and is not empty")


class Preempt(L.Callback):
    """SIGTERM as a cluster sends it, after optimizer step `step`: Lightning's handler sets this
    flag, and the run saves last.ckpt and exits 143."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer._signal_connector.received_sigterm = True


def arguments(data_root: Path, logs: Path, *overrides: str) -> list[str]:
    """A tiny run whose folder Hydra makes under `logs` (no `paths.output_dir`)."""
    given = tiny_overrides(data_root, logs, f"paths.log_dir={logs}", *RUN, *overrides)
    return [o for o in given if not o.startswith("paths.output_dir=")]


def seeded_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv", newline="") as file:
        return [{key: row[key] for key in SEEDED} for row in csv.DictReader(file)]


def the_run(logs: Path) -> Path:
    (run,) = (logs / "train" / "runs").iterdir()
    return run


def test_a_preempted_run_resumes_in_its_folder_as_if_never_stopped(
    data_root, tmp_path, monkeypatch, capsys, recwarn
):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    code, _, stderr = run_command(
        train_command.main, arguments(data_root, whole), monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    preempt = [f"+callbacks.preempt._target_={__name__}.Preempt", "+callbacks.preempt.step=3"]
    code, _, stderr = run_command(
        train_command.main, arguments(data_root, halves, *preempt), monkeypatch, capsys
    )
    assert code == 143, stderr[-2000:]
    run = the_run(halves)

    monkeypatch.setattr(model_checkpoint, "warning_cache", WarningCache())
    recwarn.clear()
    code, lines, stderr = run_command(
        train_command.main, arguments(data_root, halves, "ckpt_path=last"), monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    assert the_run(halves) == run and lines[0] == f"run folder: {run}"
    printed = "\n".join([*lines, stderr, *(str(w.message) for w in recwarn)])
    assert not [text for text in LIGHTNING_WARNINGS if text in printed], printed[-3000:]
    checkpoints = sorted(path.name for path in (run / "checkpoints").iterdir())
    assert checkpoints == ["epoch_002.ckpt", "last.ckpt"]
    assert sorted(path.name for path in (run / "csv").iterdir()) == ["hparams.yaml", "metrics.csv"]
    events = sorted((run / "tensorboard").iterdir())
    assert all(path.is_file() for path in events), "one TensorBoard version, continued"
    assert seeded_rows(run) == seeded_rows(the_run(whole))
    info = json.loads((run / "run_info.json").read_text())
    assert "ckpt_path=last" not in info["command"]
    assert [resume["command"][-1] for resume in info["resumes"]] == ["ckpt_path=last"]
    log = (run / "train.log").read_text().splitlines()
    assert log.count(f"run folder: {run}") == 2, "the start and the resume"
    assert log[-1] == f"run folder: {run} (checkpoint: checkpoints/last.ckpt)"


def test_a_run_in_use_is_not_resumed_by_a_second_command(data_root, tmp_path, monkeypatch, capsys):
    logs = tmp_path / "logs"
    preempt = [f"+callbacks.preempt._target_={__name__}.Preempt", "+callbacks.preempt.step=1"]
    run_command(train_command.main, arguments(data_root, logs, *preempt), monkeypatch, capsys)
    run = the_run(logs)
    (run / ".lock").write_text(f'{{"pid": {os.getpid()}, "host": "{socket.gethostname()}"}}')
    code, _, stderr = run_command(
        train_command.main, arguments(data_root, logs, "ckpt_path=last"), monkeypatch, capsys
    )
    assert code == 1 and f"error: {run} is in use by the training run of PID" in stderr


def test_a_resumed_wandb_logger_continues_the_recorded_run(tmp_path):
    """wandb's `latest-run` link in the run folder names the run to continue."""
    (tmp_path / "wandb" / "offline-run-20260101_000000-abc123xy").mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to("offline-run-20260101_000000-abc123xy")
    logger = wandb_logger(save_dir=tmp_path)
    assert (logger._wandb_init["id"], logger._wandb_init["resume"]) == ("abc123xy", "allow")
    fresh = wandb_logger(save_dir=tmp_path / "new")
    assert fresh._wandb_init["id"] is None
