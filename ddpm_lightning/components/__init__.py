"""The components that configs, checkpoints and model folders may build (networks, noise
schedules, samplers, optimizers), by kind and name: files name components, never code."""

from ddpm_lightning.components.build import build, component_settings, plain_settings
from ddpm_lightning.components.registry import KINDS, REGISTRY, TARGETS, factory, register

__all__ = [
    "KINDS",
    "REGISTRY",
    "TARGETS",
    "build",
    "component_settings",
    "factory",
    "plain_settings",
    "register",
]
