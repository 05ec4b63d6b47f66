"""The teacher of a distillation round: its frozen network, and the check that a student of the
given settings can start from its weights and learn its steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.module import DiffusionModule


class FrozenTeacher:
    """The teacher's network, in eval mode and without gradients, held outside the student's
    module tree: never in its state_dict, optimizer or model summary, and shared rather than
    copied by `deepcopy` (the EMA callback deep-copies the whole LightningModule). It follows
    its inputs to their device on the first call there."""

    def __init__(self, network: nn.Module):
        self.network = network.eval().requires_grad_(False)
        self.device = next(network.parameters(), torch.empty(0)).device

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenTeacher:
        return self

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The teacher's output (B, …) for x_t: (B, …) at t: (B,)."""
        if x.device != self.device:
            self.network.to(x.device)
            self.device = x.device
        return self.network(x, t, y)


def first_difference(teacher: dict[str, Any], student: dict[str, Any]) -> str | None:
    """The first key, sorted, whose value differs between two flat settings dicts, or None."""
    keys = sorted(set(teacher) | set(student))
    return next((key for key in keys if teacher.get(key) != student.get(key)), None)


def check_teacher(teacher: DiffusionModule, student: DiffusionModule, source: str) -> None:
    """Refuse, in one line naming the key and the fix, a teacher whose data shape, objective,
    schedule or network settings differ from the student's: the student starts from the
    teacher's weights and learns its steps on the same data."""
    where = f"distill.teacher={source}"
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
    for group in ("schedule", "model"):
        key = first_difference(teacher.hparams[group], student.hparams[group])
        if key is not None:
            value = teacher.hparams[group].get(key)
            raise ConfigError(
                f"{where} has {group}.{key}={value} but {group}.{key}="
                f"{student.hparams[group].get(key)}: set {group}.{key}={value} (the student "
                "starts from the teacher's weights)"
            )
