"""The `distill:` settings of a round, which its checkpoints record: how the student learns from
which teacher. Each method's settings are declared once, in its signature here; the config
schema and the generated reference read the same declarations."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from ddpm_lightning.diffusion.samplers import Spacing
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import Range, checked


@checked("distill")
def progressive(
    # A shipped model (mnist), a model folder, a Hub repo id, or a .ckpt of training or a round.
    teacher: str,
    # The teacher's deterministic DDIM (eta 0) steps; the student learns teacher_steps / 2.
    teacher_steps: Annotated[int, Range(ge=2)],
    # trailing: the spacing whose half-step grid is every other time of the full one.
    spacing: Spacing = "trailing",
    # Weight on the x-error: snr_plus_one (SNR + 1, the v-loss) | truncated_snr (max(SNR, 1)).
    weighting: Literal["snr_plus_one", "truncated_snr"] = "snr_plus_one",
) -> dict[str, Any]:
    """Progressive distillation (Salimans & Ho 2022): the settings with defaults filled in."""
    return {
        "method": "progressive",
        "teacher": str(teacher),
        "teacher_steps": teacher_steps,
        "spacing": spacing,
        "weighting": weighting,
    }


@checked("distill")
def consistency(
    # A shipped model (mnist), a model folder, a Hub repo id, or a .ckpt of training or a round.
    teacher: str,
    # N: the teacher's DDIM (eta 0) grid; the student maps neighbouring times on it alike.
    teacher_steps: Annotated[int, Range(ge=2)],
    # The grid's spacing, as sampler.spacing.
    spacing: Spacing = "trailing",
) -> dict[str, Any]:
    """Consistency distillation (Song et al. 2023, Algorithm 2): the settings with defaults
    filled in."""
    return {
        "method": "consistency",
        "teacher": str(teacher),
        "teacher_steps": teacher_steps,
        "spacing": spacing,
    }


METHODS = {"progressive": progressive, "consistency": consistency}
REQUIRED = {
    "teacher": "a shipped model (mnist), a model folder or a .ckpt",
    "teacher_steps": "the teacher's DDIM steps, e.g. 50 (progressive: a 25-step student)",
}


def distill_settings(distill: dict[str, Any]) -> dict[str, Any]:
    """`distill` checked against its method's signature, with the defaults filled in; one line
    naming an unknown key, an unknown method or a missing setting."""
    settings = dict(distill)
    method = settings.pop("method", "progressive")
    if method not in METHODS:
        raise ConfigError(f"distill.method={method} is unknown; choose one of {', '.join(METHODS)}")
    keys = list(inspect.signature(METHODS[method]).parameters)
    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise ConfigError(
            f"distill.{unknown[0]} is not a distillation setting; distill takes "
            f"method, {', '.join(keys)}"
        )
    missing = [key for key in REQUIRED if settings.get(key) is None]
    if missing:
        raise ConfigError(f"distill.{missing[0]} is required: {REQUIRED[missing[0]]}")
    return METHODS[method](**settings)
