"""diffusers' schedulers as a `Sampler`: `sampler=diffusers sampler.scheduler=NAME`.

The scheduler (any class of the diffusers library that takes `trained_betas` and
`prediction_type`) is built from the model's NoiseSchedule: its β_t as `trained_betas`, T as
`num_train_timesteps`; it then drives the denoiser as in diffusers' own pipelines. It is handed
v = √ᾱ_t ε̂ − √(1−ᾱ_t) x̂₀ of the denoiser's (x̂₀, ε̂), already guided and clipped, whatever the
network predicts: v gives both back without a division. diffusers is the optional `hf` extra,
imported only when such a sampler is built.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

from torch import Tensor

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.diffusion.samplers import NumSteps, Sampler, Step, StepCallback, step_count
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError, import_optional

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
# The schedulers the tests run against the exact denoiser of Gaussian data.
TESTED_SCHEDULERS = (
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "EulerDiscreteScheduler",
    "UniPCMultistepScheduler",
)
SCHEDULE_OPTIONS = ("num_train_timesteps", "trained_betas", "prediction_type")
# Defaults where a scheduler takes them: steps that start at T−1 (Lin et al. 2024, "Common
# diffusion noise schedules and sample steps are flawed") and no clipping of its own (the
# denoiser's clip_x0 clips x̂₀ for every scheduler alike).
DEFAULT_OPTIONS = {"timestep_spacing": "trailing", "clip_sample": False}
LIST_SCHEDULERS = (
    "python -c \"import diffusers; print([n for n in dir(diffusers) if n.endswith('Scheduler')])\""
)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def schedule_options(schedule: NoiseSchedule, objective: str) -> dict[str, Any]:
    """The scheduler arguments that make a diffusers scheduler follow `schedule` (T, β_t)
    and the objective (eps → epsilon, x0 → sample, v → v_prediction)."""
    return {
        "num_train_timesteps": schedule.num_timesteps,
        "trained_betas": schedule.betas.cpu().tolist(),
        "prediction_type": PREDICTION_TYPES[objective],
    }


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class called `name`, or a ConfigError saying how to list them."""
    diffusers = import_optional("diffusers", "sampler=diffusers", "hf")
    cls = getattr(diffusers, str(name), None)
    backends = getattr(cls, "_backends", None)  # diffusers' stand-in for a class it cannot load
    if backends:
        raise ConfigError(
            f"sampler.scheduler={name} needs {' and '.join(backends)}, which diffusers did not "
            "find: install them, or pick another scheduler"
        )
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ConfigError(
            f"sampler.scheduler={name} is not a scheduler class of diffusers (e.g. "
            f"{', '.join(TESTED_SCHEDULERS)}); list them all with: {LIST_SCHEDULERS}"
        )
    return cls


def build_scheduler(
    cls: type, schedule: NoiseSchedule, objective: str, kwargs: dict[str, Any]
) -> Any:
    """`cls(**kwargs)` following `schedule` and `objective` (`schedule_options`), with
    `DEFAULT_OPTIONS` where it takes them and `kwargs` does not set them."""
    fixed = sorted(set(kwargs) & set(SCHEDULE_OPTIONS))
    if fixed:
        raise ConfigError(
            f"sampler.kwargs.{fixed[0]} is set by the model (its noise schedule; the "
            "prediction is handed over as v); drop it"
        )
    accepted = inspect.signature(cls).parameters
    missing = [key for key in SCHEDULE_OPTIONS if key not in accepted]
    if missing:
        raise ConfigError(
            f"sampler.scheduler={cls.__name__} takes no {missing[0]}, so it cannot follow the "
            f"model's noise schedule; use one that does, e.g. {', '.join(TESTED_SCHEDULERS)}"
        )
    defaults = {key: value for key, value in DEFAULT_OPTIONS.items() if key in accepted}
    try:
        return cls(**{**defaults, **kwargs, **schedule_options(schedule, objective)})
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise ConfigError(
            f"sampler.kwargs={kwargs} are not options of {cls.__name__}: {first_line(exc)}"
        ) from None


class DiffusersSampler(Sampler):
    """A diffusers scheduler over `num_steps` of its own timesteps (its `set_timesteps`).

    The loop is diffusers' pipelines' own: x starts as noise × `init_noise_sigma`; each step
    scales it for the network (`scale_model_input`, which gives x_t for every scheduler of the
    DDPM forward process), calls the network at the step's timestep (rounded to the nearest
    trained one), and hands the guided, clipped prediction, as v, to `step`. `eta` is the η of
    schedulers whose `step` takes one (DDIMScheduler), `kwargs` the scheduler's own options.
    """

    name = "diffusers"

    def __init__(
        self,
        schedule: NoiseSchedule,
        # A scheduler class of diffusers that takes trained_betas, e.g. DDIMScheduler.
        scheduler: str = "DPMSolverMultistepScheduler",
        num_steps: NumSteps = 20,
        eta: float = 0.0,
        # The scheduler's own options (e.g. algorithm_type); the model sets its schedule.
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ):
        super().__init__(schedule, **options)
        self.num_steps = step_count(schedule, num_steps)
        self.scheduler = build_scheduler(
            scheduler_class(scheduler), schedule, "v", dict(kwargs or {})
        )
        step_parameters = inspect.signature(self.scheduler.step).parameters
        if float(eta) != 0 and "eta" not in step_parameters:
            raise ConfigError(
                f"sampler.eta={eta}: {scheduler}.step takes no η (DDIMScheduler's does); "
                "set sampler.eta=0"
            )
        self.step_options = {"eta": float(eta)} if "eta" in step_parameters else {}
        self.takes_variance_noise = "variance_noise" in step_parameters
        self.takes_generator = "generator" in step_parameters
        self.reset()

    def reset(self) -> None:
        """New timesteps, which also clears a multistep scheduler's history."""
        try:
            self.scheduler.set_timesteps(self.num_steps)
        except (ValueError, NotImplementedError) as exc:
            raise ConfigError(
                f"sampler.num_steps={self.num_steps} with {type(self.scheduler).__name__}: "
                f"{first_line(exc)}"
            ) from None

    def steps(self) -> list[int]:
        return [round(float(t)) for t in self.scheduler.timesteps]

    def visited(self, start: int | None = None) -> list[tuple[int, int]]:
        """All the scheduler's timesteps: its samples are its own (scaled by
        `init_noise_sigma`), so it starts from pure noise only."""
        if start is not None:
            raise ValueError("sampler=diffusers starts from pure noise only (start=None)")
        return super().visited()

    def advance(
        self, denoiser: Denoiser, step: Step, callback: StepCallback | None = None
    ) -> Tensor:
        """The scheduler's sample `step.x` at its i-th timestep → its sample at the next one; a
        stochastic step takes `step.noise.at_step(i)` where the scheduler accepts it (as our DDIM
        does), else draws from the samples' own generators (`SampleNoise.generators`), so
        samples stay independent of the split."""
        i, t, x = step.i, step.t, step.x
        timestep = self.scheduler.timesteps[i]
        if i == 0:
            x = x * self.scheduler.init_noise_sigma
        x_t = self.scheduler.scale_model_input(x, timestep)
        x0, eps = denoiser.predict(x_t, t, step.y)
        if callback is not None:
            callback(i, t, x_t, x0)
        v = self.alpha_bar(t).sqrt() * eps - (1 - self.alpha_bar(t)).sqrt() * x0
        extra: dict[str, Any] = {}
        if self.takes_variance_noise:
            extra["variance_noise"] = step.noise.at_step(i).to(x.dtype)
        elif self.takes_generator:
            extra["generator"] = cast(SampleNoise, step.noise).generators
        return self.scheduler.step(v, timestep, x, **self.step_options, **extra).prev_sample
