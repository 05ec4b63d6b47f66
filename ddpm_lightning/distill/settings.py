"""The `distill:` settings of a round, which its checkpoints record: how the student learns from
which teacher. Each method's settings are declared once, in its signature here; the config
schema and the generated reference read the same declarations."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from ddpm_lightning.diffusion.guidance import checked_interval
from ddpm_lightning.diffusion.samplers import Spacing
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import Range, checked

# γ of an autoguided teacher unless distill.guide_scale sets it: the deterministic DDIM-32 that
# rounds copy scored FLD 2.30 at γ = 2 against 3.10 at sampling's 1.5 on pretrained=mnist
# (2,000 samples; 2.25 at 2.5, 2.39 at 3); docs/results.md, an autoguided teacher.
DISTILL_GUIDE_SCALE = 2.0


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
    # Distilled guidance: [γ_min, γ_max], each sample's γ uniform in it and a student input;
    # null: the teacher unguided.
    guidance: Annotated[Sequence[float], Range(ge=0)] | None = None,
    # With guidance: noise levels (σ_lo, σ_hi] where it applies, as sampler.guidance_interval;
    # null: every step (sample the student with sampler.guidance_interval=null then).
    guidance_interval: Annotated[Sequence[float], Range(ge=0)] | None = None,
    # Autoguided teacher: a weaker model its steps guide away from (a .ckpt or what pretrained=
    # takes); null: the one a teacher folder ships (guide/) unless guidance is set; false: none.
    guide: object | None = None,
    # The autoguided teacher's γ, at every step; null: 2.
    guide_scale: Annotated[float, Range(ge=0)] | None = None,
) -> dict[str, Any]:
    """Progressive distillation (Salimans & Ho 2022), with `guidance` of a conditional teacher
    distilled too (Meng et al. 2023), or of an autoguided teacher: the settings with defaults
    filled in; the guidance and guide keys only for a guided round, so unguided records stay
    as they were."""
    settings = {
        "method": "progressive",
        "teacher": str(teacher),
        "teacher_steps": teacher_steps,
        "spacing": spacing,
        "weighting": weighting,
        **guide_settings(guide, guide_scale),
    }
    if guidance is None:
        return settings
    if "guide" in settings:
        raise ConfigError(
            f"distill.guide={guide} autoguides the teacher, distill.guidance distils its "
            "classifier-free guidance: set one of them (distill.guide=false for the latter)"
        )
    scales = [float(value) for value in guidance]
    if len(scales) != 2 or scales[0] > scales[1]:
        raise ConfigError(
            f"distill.guidance={list(guidance)} must be [gamma_min, gamma_max] with gamma_min ≤ "
            "gamma_max (one γ: [g, g]), or null to distil the unguided teacher"
        )
    interval = checked_interval(guidance_interval, "distill.guidance_interval")
    return {
        **settings,
        "guidance": scales,
        "guidance_interval": None if interval is None else list(interval),
    }


@checked("distill")
def consistency(
    # A shipped model (mnist), a model folder, a Hub repo id, or a .ckpt of training or a round.
    teacher: str,
    # N: the teacher's DDIM (eta 0) grid; the student maps neighbouring times on it alike.
    teacher_steps: Annotated[int, Range(ge=2)],
    # The grid's spacing, as sampler.spacing.
    spacing: Spacing = "trailing",
    # Autoguided teacher, as progressive's distill.guide.
    guide: object | None = None,
    # The autoguided teacher's γ, at every step; null: 2.
    guide_scale: Annotated[float, Range(ge=0)] | None = None,
) -> dict[str, Any]:
    """Consistency distillation (Song et al. 2023, Algorithm 2): the settings with defaults
    filled in, the guide keys only for an autoguided teacher."""
    return {
        "method": "consistency",
        "teacher": str(teacher),
        "teacher_steps": teacher_steps,
        "spacing": spacing,
        **guide_settings(guide, guide_scale),
    }


def guide_settings(guide: object, guide_scale: float | None) -> dict[str, Any]:
    """{"guide", "guide_scale"} of an autoguided teacher (`guide` a model's name or path, γ's
    default filled in), {} for none (null or false: `distill.guide` is resolved to a model or
    false before a round is built); one line for anything else."""
    if guide is None or guide is False:
        if guide_scale is not None:
            raise ConfigError(
                f"distill.guide_scale={guide_scale} needs distill.guide: name the weaker model "
                "the teacher is guided away from, or drop distill.guide_scale"
            )
        return {}
    if not isinstance(guide, str) or not guide.strip():
        raise ConfigError(
            f"distill.guide={guide!r} must name a model (a .ckpt, a model folder or a shipped "
            "name), or be null (the teacher folder's own guide) or false (none)"
        )
    scale = DISTILL_GUIDE_SCALE if guide_scale is None else float(guide_scale)
    return {"guide": guide, "guide_scale": scale}


METHODS: dict[str, Callable[..., dict[str, Any]]] = {
    "progressive": progressive,
    "consistency": consistency,
}
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
    if method == "consistency" and settings.pop("guidance", None) is not None:
        raise ConfigError(
            "distill.guidance is progressive distillation's: consistency distillation learns "
            "the teacher without classifier-free guidance; set distill.method=progressive or "
            "drop distill.guidance"
        )
    keys = list(inspect.signature(METHODS[method]).parameters)
    unknown = sorted(set(settings) - set(keys))
    if unknown:
        raise ConfigError(
            f"distill.{unknown[0]} is not a distillation setting; distill takes "
            f"method, {', '.join(keys)}"
        )
    if settings.get("guidance") is None and "guidance_interval" in settings:
        raise ConfigError(
            "distill.guidance_interval applies to distilled guidance only: set distill.guidance, "
            "e.g. [1, 2], or drop distill.guidance_interval"
        )
    missing = [key for key in REQUIRED if settings.get(key) is None]
    if missing:
        raise ConfigError(f"distill.{missing[0]} is required: {REQUIRED[missing[0]]}")
    return METHODS[method](**settings)
