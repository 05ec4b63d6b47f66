"""The LightningModule of a progressive-distillation round: a DiffusionModule whose network,
the student, learns two teacher steps per step."""

from __future__ import annotations

import inspect
from typing import Any

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.distill.consistency import ConsistencyDiffusion
from ddpm_lightning.distill.progressive import ProgressiveDiffusion
from ddpm_lightning.distill.settings import distill_settings
from ddpm_lightning.distill.teacher import (
    FrozenTeacher,
    check_guided_teacher,
    check_teacher,
    check_teacher_guide,
)
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.module import DiffusionModule


class ProgressiveDistillation(DiffusionModule):
    """One round of progressive distillation (Salimans & Ho 2022, Algorithm 2) as a Lightning
    fit: the student, this module's network started from `teacher`'s weights, learns in each
    step of the `teacher_steps`/2-step DDIM grid what the teacher does in two steps of the
    `teacher_steps` grid (`ProgressiveDiffusion`); with `distill.method=consistency`, it
    learns the consistency function on the `teacher_steps` grid (`ConsistencyDiffusion`,
    sampled by `sampler=consistency`). Training, validation (`val/loss` is the
    distillation loss), the EMA callback, checkpoints and resuming are DiffusionModule's.

    The other arguments are the student's DiffusionModule settings, which must match the
    teacher's (`check_teacher`). `distill` (settings.py) records the round; checkpoints keep it
    beside the hyperparameters, as `checkpoint["distill"]`, so that `sample`, `evaluate` and
    `export` read a round's checkpoint as the DiffusionModule it is. Conditional models: the
    teacher sees the student's labels, the null label where DiffusionModule drops them, so the
    student learns both maps; guidance stays a sampling setting. With `distill.guidance`
    (distilled guidance, Meng et al. 2023) the student is built with `model.guidance_embedding`
    on, γ's embedding starting at zero, and learns the guided teacher's steps at every γ of the
    range in one call per step; it sees real labels only (no label dropout): its unconditional
    output is never asked for when γ is an input. With `guide` (the weaker model that
    `distill.guide` names) the teacher is autoguided at `distill.guide_scale` (`FrozenTeacher`),
    and the student learns the guided teacher's steps without a guide of its own.
    """

    def __init__(
        self,
        teacher: DiffusionModule,
        distill: dict[str, Any],
        model: dict[str, Any],
        schedule: dict[str, Any],
        diffusion: dict[str, Any] | None = None,
        optimizer: dict[str, Any] | None = None,
        lr_schedule: dict[str, Any] | None = None,
        data_shape: tuple[int, ...] = (1, 32, 32),
        dataset: str | None = None,
        dataset_record: dict[str, Any] | None = None,
        guide: DiffusionModule | None = None,
    ):
        settings = distill_settings(distill)
        if (guide is None) != ("guide" not in settings):
            raise ValueError("pass guide= (the model) exactly when distill names a guide")
        guidance = settings.get("guidance")
        if guidance is not None:
            check_guided_teacher(teacher, settings["teacher"])
            model = {**model, "guidance_embedding": True}
        super().__init__(
            model, schedule, diffusion, optimizer, lr_schedule, data_shape, dataset, dataset_record
        )
        self.distill = settings
        self.hparams["distill"] = self.distill
        check_teacher(teacher, self, self.distill["teacher"])
        if guide is not None:
            check_teacher_guide(guide, teacher, self.distill["guide"])
        self.model.load_state_dict({**self.model.state_dict(), **teacher.model.state_dict()})
        if guidance is not None:
            self.p_uncond = 0.0
        schedule_module, objective = self.diffusion.schedule, self.diffusion.objective.value
        frozen = FrozenTeacher(
            teacher.model,
            None if guide is None else guide.model,
            self.distill.get("guide_scale", 1.0),
        )
        loss = self.diffusion.loss_type.value
        if self.distill["method"] == "consistency":
            self.diffusion = ConsistencyDiffusion(
                schedule_module,
                Denoiser(frozen, schedule_module, objective, clip_x0=False),
                self.distill["teacher_steps"],
                spacing=self.distill["spacing"],
                objective=objective,
                loss=loss,
            )
            return
        self.diffusion = ProgressiveDiffusion(
            schedule_module,
            frozen,
            self.distill["teacher_steps"],
            spacing=self.distill["spacing"],
            weighting=self.distill["weighting"],
            objective=objective,
            loss=loss,
            guidance=guidance,
            guidance_interval=self.distill.get("guidance_interval"),
        )

    def save_hyperparameters(self, *args: Any, **kwargs: Any) -> None:
        """DiffusionModule's record of its arguments, less the teacher and its guide: networks
        whose weights are not this module's (`distill.teacher` and `distill.guide` name where
        they came from)."""
        caller = inspect.currentframe()
        kwargs.setdefault("frame", caller.f_back if caller else None)
        super().save_hyperparameters(*args, ignore=["teacher", "guide"], **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """DiffusionModule's checkpoint, the round's `distill` record moved out of the
        hyperparameters to `checkpoint["distill"]`."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["distill"] = checkpoint["hyper_parameters"].pop("distill")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resume only a checkpoint of the same round (equal `distill` records)."""
        saved = checkpoint.get("distill")
        if saved != self.distill:
            found = "no distillation round" if saved is None else f"the round {saved}"
            raise ConfigError(
                f"the checkpoint to resume holds {found}, not distill={self.distill}: resume "
                "with its distill settings, or name it in distill.teacher to distill from it"
            )
        super().on_load_checkpoint(checkpoint)
