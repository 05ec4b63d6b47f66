"""Experiment loggers: wandb that never prompts, a logging interval that fits short runs, and
clean shutdown of every logger."""

from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, WandbLogger


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


def wandb_logger(
    project: str = "ddpm-lightning",
    name: str = "train",
    group: str | None = None,
    tags: Sequence[str] = (),
    save_dir: str | Path = ".",
    log_model: bool = False,
) -> WandbLogger:
    """A WandbLogger that runs offline without credentials, so it never asks for a login.

    WANDB_MODE, when set, wins (e.g. `WANDB_MODE=disabled`).
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
    )


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
