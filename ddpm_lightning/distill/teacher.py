"""The teacher of a distillation round: its frozen network, and the check that a student of the
given settings can start from its weights and learn its steps."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from ddpm_lightning.diffusion.flow import require_alpha_path
from ddpm_lightning.diffusion.guidance import check_guide_pairing, extrapolated, takes_guidance
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.safety import with_group_defaults


class FrozenTeacher:
    """The teacher's network, in eval mode and without gradients, held outside the student's
    module tree: never in its state_dict, optimizer or model summary, and shared rather than
    copied by `deepcopy` (the EMA callback deep-copies the whole LightningModule). It follows
    its inputs to their device on the first call there. `num_classes` and `takes_guidance` are
    the network's, for `guided_output`.

    With a `guide` (a weaker network of the same objective and schedule, `check_teacher_guide`)
    the teacher is autoguided at γ = `guide_scale` (Karras et al. 2024, eq. 2): F = F_guide +
    γ (F − F_guide), the guide called with the labels if it takes them. Every objective but
    flow gives x̂₀ as the same affine map of F at x_t for both networks, so this is eq. 2 on x̂₀
    (unclipped) as the sampler's `Denoiser.autoguided` applies it."""

    def __init__(
        self, network: nn.Module, guide: nn.Module | None = None, guide_scale: float = 1.0
    ):
        self.network = network.eval().requires_grad_(False)
        self.guide = None if guide is None else guide.eval().requires_grad_(False)
        self.guide_scale = float(guide_scale)
        self.device = next(network.parameters(), torch.empty(0)).device
        self.num_classes: int | None = getattr(network, "num_classes", None)
        self.takes_guidance = takes_guidance(network)

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenTeacher:
        return self

    @torch.no_grad()
    def __call__(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, guidance: Tensor | None = None
    ) -> Tensor:
        """The teacher's output (B, …) for x_t: (B, …) at t: (B,), given γ: (B,) when it takes
        it, autoguided when it has a guide."""
        if x.device != self.device:
            for network in (self.network, self.guide):
                if network is not None:
                    network.to(x.device)
            self.device = x.device
        if guidance is not None:
            return self.network(x, t, y, guidance=guidance)
        output = self.network(x, t, y)
        if self.guide is None:
            return output
        labels = y if getattr(self.guide, "num_classes", None) is not None else None
        weak = self.guide(x, t, labels)
        return extrapolated(weak, output, self.guide_scale)


# The model setting a student may gain over its teacher: γ as an input (distill.guidance).
GUIDANCE_KEY = "guidance_embedding"


def first_difference(teacher: dict[str, Any], student: dict[str, Any]) -> str | None:
    """The first key, `name` first and then sorted, whose value differs between two flat
    settings dicts, or None."""
    keys = sorted(set(teacher) | set(student), key=lambda key: (key != "name", key))
    return next((key for key in keys if teacher.get(key) != student.get(key)), None)


def check_guided_teacher(teacher: DiffusionModule, source: str) -> None:
    """Refuse, in one line, `distill.guidance` for a teacher without classifier-free guidance
    (unconditional) or whose network cannot take γ (model.guidance_embedding is UNet's and
    UNetMP's)."""
    where = f"distill.teacher={source}"
    if teacher.num_classes is None:
        raise ConfigError(
            f"distill.guidance needs a conditional teacher, but {where} is unconditional "
            "(model.num_classes=null): drop distill.guidance or pick a conditional teacher"
        )
    if GUIDANCE_KEY not in inspect.signature(type(teacher.model)).parameters:
        name = teacher.hparams["model"].get("name", type(teacher.model).__name__)
        raise ConfigError(
            f"distill.guidance needs a network that takes γ (model=unet or unet_mp), but "
            f"{where} is model={name}: drop distill.guidance"
        )


def check_teacher(teacher: DiffusionModule, student: DiffusionModule, source: str) -> None:
    """Refuse, in one line naming the key and the fix, a teacher whose data shape, objective,
    schedule or network settings differ from the student's: the student starts from the
    teacher's weights and learns its steps on the same data. Only `model.guidance_embedding`
    may differ, off for the teacher and on for the student (it gains γ's embedding); settings
    a teacher of an earlier release leaves out count at their defaults. A flow teacher is
    refused: its x_t lie on another path than the DDIM steps distillation takes."""
    where = f"distill.teacher={source}"
    require_alpha_path(
        teacher.diffusion.objective.value,
        f"distillation of {where}",
        "distil a teacher of diffusion.objective=v or eps",
    )
    teacher_guided, student_guided = (
        bool(module.hparams["model"].get(GUIDANCE_KEY)) for module in (teacher, student)
    )
    if teacher_guided and not student_guided:
        raise ConfigError(
            f"{where} takes γ as an input (model.guidance_embedding=true, a student of distilled "
            "guidance): distil it with distill.guidance, e.g. [1, 2], as it was"
        )
    if tuple(teacher.data_shape) != tuple(student.data_shape):
        dataset = teacher.hparams.get("dataset") or "its own"
        raise ConfigError(
            f"{where} generates data of shape {tuple(teacher.data_shape)} but the data gives "
            f"{tuple(student.data_shape)}: distill on the teacher's data (data={dataset}) or "
            "pick a teacher trained on this data"
        )
    objective, own = teacher.diffusion.objective.value, student.diffusion.objective.value
    if objective != own:
        raise ConfigError(
            f"{where} predicts diffusion.objective={objective} but diffusion.objective={own}: "
            f"set diffusion.objective={objective}"
        )
    teacher_settings, student_settings = (
        with_group_defaults(module.hparams) for module in (teacher, student)
    )
    for group in ("schedule", "model"):
        theirs, ours = teacher_settings[group], student_settings[group]
        if group == "model":
            theirs, ours = (
                {k: v for k, v in d.items() if k != GUIDANCE_KEY} for d in (theirs, ours)
            )
        key = first_difference(theirs, ours)
        if key is not None:
            value = theirs.get(key)
            raise ConfigError(
                f"{where} has {group}.{key}={value} but {group}.{key}={ours.get(key)}: set "
                f"{group}.{key}={value} (the student starts from the teacher's weights)"
            )


def check_teacher_guide(guide: DiffusionModule, teacher: DiffusionModule, source: str) -> None:
    """Refuse, in one line, a `distill.guide` that does not predict what the teacher predicts
    on its noise levels (objective, schedule), so that the two outputs mix as x̂₀ do."""
    where = f"distill.guide={source}"
    objective, own = guide.diffusion.objective.value, teacher.diffusion.objective.value
    if objective != own:
        raise ConfigError(
            f"{where} predicts diffusion.objective={objective} but the teacher {own}: guide "
            "with a model of the teacher's objective"
        )
    check_guide_pairing(
        guide.model,
        guide.diffusion.schedule.sigmas().tolist(),
        teacher.model,
        teacher.diffusion.schedule.sigmas().tolist(),
        key=where,
        model="teacher",
    )
