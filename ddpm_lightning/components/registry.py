"""The registry: every class a config or a file may build, by kind and name, and the exact
`_target_` strings that selected them before components had names."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import torch

from ddpm_lightning.diffusion.consistency_sampler import ConsistencySampler
from ddpm_lightning.diffusion.diffusers_bridge import DiffusersSampler
from ddpm_lightning.diffusion.euler_ancestral import EulerAncestralSampler
from ddpm_lightning.diffusion.flow_samplers import FlowEulerSampler, FlowHeunSampler
from ddpm_lightning.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    HeunSampler,
)
from ddpm_lightning.diffusion.schedules import BETA_SCHEDULES, NoiseSchedule
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models import MLP, DiffusersUNet, LucidrainsUNet, UNet, UNetMP
from ddpm_lightning.settings import Range

# The samplers, each by its `name`; conf/ selects each by its class's own path (`TARGETS`).
SAMPLERS = (
    DDPMSampler,
    DDIMSampler,
    DPMSolverSampler,
    HeunSampler,
    EulerAncestralSampler,
    ConsistencySampler,
    DiffusersSampler,
    FlowEulerSampler,
    FlowHeunSampler,
)
# A schedule's name is the β schedule NoiseSchedule computes; it takes the name itself.
REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {
    "model": {
        "unet": UNet,
        "unet_mp": UNetMP,
        "mlp": MLP,
        "diffusers_unet": DiffusersUNet,
        "lucidrains_unet": LucidrainsUNet,
    },
    "schedule": dict.fromkeys(BETA_SCHEDULES, NoiseSchedule),
    "sampler": {sampler.name: sampler for sampler in SAMPLERS},
    "optimizer": {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW},
}
KINDS = tuple(REGISTRY)
DEFAULT_SCHEDULE = inspect.signature(NoiseSchedule).parameters["name"].default


class AdamSettings(TypedDict):
    """The arguments of torch.optim.Adam that conf/optimizer sets, and what they allow: declared
    here, as torch refuses a bad one only with a traceback."""

    # Learning rate after warm-up (lr_schedule), before any decay.
    lr: Annotated[float, Range(gt=0)]


class AdamWSettings(AdamSettings):
    """The arguments of torch.optim.AdamW that conf/optimizer sets, and what they allow."""

    # Decoupled weight decay: each step also shrinks the weights by lr × weight_decay.
    weight_decay: Annotated[float, Range(ge=0)]


# The arguments conf/optimizer gives each optimizer; the others keep torch's defaults.
OPTIMIZER_SETTINGS: dict[str, type] = {"adam": AdamSettings, "adamw": AdamWSettings}

# Built as functools.partial and completed later: samplers with the schedule (and their
# denoiser's settings split off, `DiffusionModule.make_sampler`), optimizers with the parameters.
PARTIAL_KINDS = frozenset({"sampler", "optimizer"})

# The `_target_` strings of conf/ and of checkpoints and model folders written by release 0.1.0
# onwards, each mapped to (kind, name); a None name: the settings' own `name` says which, and
# without one NoiseSchedule's default (`DEFAULT_SCHEDULE`) was built. The first string of a
# component is the one conf/ selects it by (`conf_target`); the others are earlier releases'.
TARGETS: dict[str, tuple[str, str | None]] = {
    "ddpm_lightning.models.UNet": ("model", "unet"),
    "ddpm_lightning.models.UNetMP": ("model", "unet_mp"),
    "ddpm_lightning.models.MLP": ("model", "mlp"),
    "ddpm_lightning.models.DiffusersUNet": ("model", "diffusers_unet"),
    "ddpm_lightning.models.LucidrainsUNet": ("model", "lucidrains_unet"),
    "ddpm_lightning.diffusion.schedules.NoiseSchedule": ("schedule", None),
    "ddpm_lightning.schedules.NoiseSchedule": ("schedule", None),
    "ddpm_lightning.diffusion.samplers.DDPMSampler": ("sampler", "ddpm"),
    "ddpm_lightning.diffusion.samplers.DDIMSampler": ("sampler", "ddim"),
    "ddpm_lightning.diffusion.samplers.DPMSolverSampler": ("sampler", "dpm_solver"),
    "ddpm_lightning.diffusion.samplers.HeunSampler": ("sampler", "heun"),
    "ddpm_lightning.diffusion.diffusers_bridge.DiffusersSampler": ("sampler", "diffusers"),
    **{f"{s.__module__}.{s.__qualname__}": ("sampler", s.name) for s in SAMPLERS},
    "ddpm_lightning.samplers.DDPMSampler": ("sampler", "ddpm"),
    "ddpm_lightning.samplers.DDIMSampler": ("sampler", "ddim"),
    "ddpm_lightning.samplers.DPMSolverSampler": ("sampler", "dpm_solver"),
    "torch.optim.Adam": ("optimizer", "adam"),
    "torch.optim.AdamW": ("optimizer", "adamw"),
}


def conf_target(kind: str, name: str) -> str:
    """The `_target_` string conf/ selects the component `kind`/`name` by."""
    return next(t for t, (k, n) in TARGETS.items() if k == kind and n in (name, None))


def register(kind: str, name: str, component: Callable[..., Any]) -> None:
    """Make `component` buildable as `{kind}.name: {name}` (e.g. your own network as
    `register("model", "my_net", MyNet)` before training or loading it)."""
    if kind not in REGISTRY:
        raise ConfigError(f"register: kind={kind!r} is not one of {', '.join(KINDS)}")
    if not callable(component):
        raise ConfigError(f"register: {kind} {name!r} must be a class or function")
    REGISTRY[kind][name] = component


def factory(kind: str, name: object, where: str) -> Callable[..., Any]:
    """The registered class of `kind` called `name`; one line naming `where.name` otherwise."""
    table = REGISTRY[kind]
    if not isinstance(name, str) or name not in table:
        raise ConfigError(
            f"{where}.name={str(name)[:80]!r} is not a registered {kind}: choose one of "
            f"{', '.join(sorted(table))}"
        )
    return table[name]
