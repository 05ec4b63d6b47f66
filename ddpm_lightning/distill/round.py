"""One distillation round without the command line: a teacher module, a datamodule and trainer
settings in, the trained student out."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning as L

from ddpm_lightning.distill.module import ProgressiveDistillation
from ddpm_lightning.training.ema import EMA
from ddpm_lightning.training.module import DiffusionModule

# Trainer settings of a round unless given: nothing on screen and no logger.
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


def student_settings(teacher: DiffusionModule) -> dict[str, Any]:
    """The student's DiffusionModule settings that follow its teacher: network, schedule,
    diffusion settings (the objective included) and dataset name."""
    keys = ("model", "schedule", "diffusion", "dataset")
    return {key: copy.deepcopy(teacher.hparams.get(key)) for key in keys}


def distill_round(
    teacher: DiffusionModule,
    datamodule: Any,
    distill: dict[str, Any],
    trainer: dict[str, Any] | None = None,
    optimizer: dict[str, Any] | None = None,
    lr_schedule: dict[str, Any] | None = None,
    ema_decay: float | None = 0.9999,
    callbacks: Sequence[L.Callback] = (),
    ckpt_path: str | None = None,
    guide: DiffusionModule | None = None,
) -> ProgressiveDistillation:
    """Fit one round of `ProgressiveDistillation` from `teacher` on `datamodule` (anything with
    `data_shape` that Lightning takes as a datamodule) and return the student, holding the EMA
    weights when `ema_decay` is set (EMA with warm-up, as in training).

    trainer: `L.Trainer` keyword settings (max_steps, accelerator, default_root_dir, …) over
    QUIET; callbacks: more of them, e.g. `LastCheckpoint`; ckpt_path: a checkpoint of this
    round to resume; guide: the weaker model that autoguides the teacher, which `distill`
    names in its `guide` (then required).
    """
    module = ProgressiveDistillation(
        teacher,
        distill,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        data_shape=tuple(datamodule.data_shape),
        **student_settings(teacher),
        guide=guide,
    )
    averaging = [] if ema_decay is None else [EMA(decay=ema_decay)]
    fit = L.Trainer(**{**QUIET, **(trainer or {})}, callbacks=[*callbacks, *averaging])
    fit.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module
