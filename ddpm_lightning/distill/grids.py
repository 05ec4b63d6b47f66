"""The timesteps of one progressive-distillation round: the teacher's DDIM grid of N steps and
the student's of N/2, every student time a teacher time (Salimans & Ho 2022, Algorithm 2)."""

from __future__ import annotations

from ddpm_lightning.diffusion.samplers import SPACINGS, timestep_sequence
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError

CLEAN = -1


def ddim_grid(schedule: NoiseSchedule, num_steps: int, spacing: str) -> list[int]:
    """The timesteps `DDIMSampler(num_steps, spacing)` visits, then −1: the clean image its last
    step lands on (num_steps + 1 values)."""
    return [*timestep_sequence(schedule, num_steps, spacing), CLEAN]


def halving_grids(
    schedule: NoiseSchedule, teacher_steps: int, spacing: str
) -> tuple[list[int], list[int]]:
    """(teacher, student) grids of N + 1 and N/2 + 1 timesteps ending at −1, student[i] =
    teacher[2i]: student step i (t → t'') replaces teacher steps 2i and 2i+1 (t → t' → t'').

    Only spacings whose N/2-step grid is every other time of the N-step one qualify: `trailing`
    always does (round(T − 2i·T/N) − 1); the others end at t = 0 before the step to the clean
    image, and their grids do not nest in general (uniform 50 → 25 does not).
    """
    n = teacher_steps
    if spacing not in SPACINGS:
        raise ConfigError(
            f"distill.spacing={spacing!r} is unknown; choose trailing (the spacings: "
            f"{', '.join(SPACINGS)})"
        )
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 or n % 2:
        raise ConfigError(
            f"distill.teacher_steps={n} must be an even integer ≥ 2: each student step "
            "replaces two teacher steps"
        )
    if n > schedule.num_timesteps:
        raise ConfigError(
            f"distill.teacher_steps={n} exceeds schedule.num_timesteps="
            f"{schedule.num_timesteps}; set it to at most that"
        )
    teacher, student = ddim_grid(schedule, n, spacing), ddim_grid(schedule, n // 2, spacing)
    if student != teacher[::2]:
        raise ConfigError(
            f"distill.spacing={spacing}: the {n // 2}-step DDIM grid is not every other time of "
            f"the {n}-step one, so a student step would not replace two teacher steps; use "
            "distill.spacing=trailing (and sampler.spacing=trailing to sample)"
        )
    return teacher, student
