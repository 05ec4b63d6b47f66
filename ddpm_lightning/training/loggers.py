"""Experiment loggers: a CSV log and a wandb run that a resumed run continues, wandb that never
prompts, a logging interval that fits short runs, and clean shutdown of every logger."""

from __future__ import annotations

import csv
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


def has_wandb_credentials() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc for api.wandb.ai (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_name(base: str) -> str:
    """`base`, plus the command-line overrides of this Hydra job (e.g. `train:schedule=linear`)."""
    try:
        overrides = HydraConfig.get().job.override_dirname
    except ValueError:
        overrides = ""
    return f"{base}:{overrides}" if overrides else base


def recorded_run_id(save_dir: Path) -> str | None:
    """The id of the wandb run logged from `save_dir` before (wandb names the folder of its
    newest run there `wandb/latest-run` -> `[offline-]run-<date>_<time>-<id>`), or None."""
    latest = save_dir / "wandb" / "latest-run"
    if not latest.is_symlink():
        return None
    return Path(os.readlink(latest)).name.rsplit("-", 1)[-1] or None


def wandb_logger(
    project: str = "ddpm-lightning",
    name: str = "train",
    group: str | None = None,
    tags: Sequence[str] = (),
    save_dir: str | Path = ".",
    log_model: bool | Literal["all"] = False,
) -> WandbLogger:
    """A WandbLogger that runs offline without credentials, so it never asks for a login, and
    continues the wandb run logged from `save_dir` before (a run resumed in its folder: the
    same id, which Lightning passes with `resume="allow"`).

    WANDB_MODE, when set, wins (e.g. `WANDB_MODE=disabled`). `log_model`: true uploads the
    checkpoints of `ModelCheckpoint` as artifacts when training ends, `all` as each is saved.
    """
    mode = None
    if not os.environ.get("WANDB_MODE"):
        mode = "online" if has_wandb_credentials() else "offline"
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        name=run_name(name),
        group=group,
        tags=list(tags),
        save_dir=str(save_dir),
        log_model=log_model,
        mode=mode,
        id=recorded_run_id(Path(save_dir)),
    )


class ContinuedMetrics(ExperimentWriter):
    """Lightning's CSV writer, which deletes the metrics.csv it finds, made to continue it: its
    rows and header are kept and new rows appended (under a wider header when new metrics
    come), so a run resumed in its folder keeps one metrics.csv."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing through `ContinuedMetrics`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if not isinstance(self._experiment, ContinuedMetrics):
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedMetrics(log_dir=self.log_dir)
        return self._experiment


class FitLogInterval(L.Callback):
    """Lower `trainer.log_every_n_steps` to the steps of one epoch, or of the whole run when
    `trainer.max_steps` is smaller, so that a short run still records `train/loss`."""

    def __init__(self) -> None:
        self.configured: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.configured is None:
            self.configured = trainer.log_every_n_steps  # type: ignore[attr-defined]
        limits = [self.configured, trainer.num_training_batches]
        if trainer.max_steps > 0:
            limits.append(trainer.max_steps)
        trainer.log_every_n_steps = max(1, int(min(limits)))  # type: ignore[attr-defined]


def finish_loggers(loggers: Sequence[Logger]) -> None:
    """Close wandb runs, so each job of a multirun gets its own; wandb then prints the
    `wandb sync` command of an offline run."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
