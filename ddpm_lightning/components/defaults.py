"""Every component's defaults and what each setting allows, read off its own signature (the one
place they are written), with the `Denoiser` a sampler draws through and the β function a
schedule takes; the config schema, the configs' defaults and model cards all read them here."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from ddpm_lightning.components.registry import OPTIMIZER_SETTINGS, REGISTRY
from ddpm_lightning.data import DATA_MODULES
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.schedules import BETA_SCHEDULES
from ddpm_lightning.settings import Setting, declared, unified

# Arguments a component gets from the module at run time, never from settings.
RUNTIME = frozenset({"schedule", "objective", "progress", "guide"})


def components(kind: str) -> Mapping[str, Callable[..., Any]]:
    """The components of `kind` by name: the registry's, or for data the data modules."""
    return DATA_MODULES if kind == "data" else REGISTRY[kind]


def declaring(kind: str, name: str) -> list[Callable[..., Any]]:
    """The functions whose signatures declare the settings of `kind`/`name`, the first to give
    a setting a default declaring it: the `__init__` of its class, then of its bases in this
    package (or the function itself), then a schedule's β function or the `Denoiser` a
    sampler draws through; of a class from elsewhere (torch's optimizers, one registered by a
    user) its own `__init__`."""
    component = components(kind)[name]
    if not inspect.isclass(component):
        return [component]
    found = [
        vars(klass)["__init__"]
        for klass in inspect.getmro(component)
        if "__init__" in vars(klass) and klass.__module__.startswith("ddpm_lightning.")
    ]
    if kind == "schedule":
        return found + [BETA_SCHEDULES[name]]
    if kind == "sampler":
        return (found or [component.__init__]) + [Denoiser.__init__]
    return found or [component.__init__]


def keyword_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The arguments of `function` that have defaults, tuples as lists (what configs hold)."""
    return {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty and name not in RUNTIME
    }


def class_defaults(kind: str, name: str) -> dict[str, Any]:
    """The defaults of the component `kind`/`name` (a subclass's win over its bases'); its
    `name` where it takes one (a schedule's β function, a dataset); of torch's optimizers,
    those `OPTIMIZER_SETTINGS` declares."""
    found: dict[str, Any] = {}
    for function in declaring(kind, name):
        for key, value in keyword_defaults(function).items():
            found.setdefault(key, value)
    if "name" in found:
        found["name"] = name
    if kind == "optimizer":
        return {key: found[key] for key in class_settings(kind, name)}
    return found


def declarations(kind: str, name: str) -> list[Any]:
    """Where the settings of `kind`/`name` are declared (`declaring`), for a torch optimizer
    its entry of `OPTIMIZER_SETTINGS` (none for one registered without: every argument keeps
    torch's default)."""
    if kind != "optimizer":
        return declaring(kind, name)
    return [OPTIMIZER_SETTINGS[name]] if name in OPTIMIZER_SETTINGS else []


def class_settings(kind: str, name: str) -> dict[str, Setting]:
    """What each setting of `kind`/`name` allows, as the first of its declarations to give it
    a default declares it (a TypedDict's keys have none: all count)."""
    found: dict[str, Setting] = {}
    for source in declarations(kind, name):
        keys = declared(source) if typing.is_typeddict(source) else keyword_defaults(source)
        for key in keys:
            found.setdefault(key, declared(source)[key])
    return found


def kind_settings(kind: str) -> dict[str, Setting]:
    """What each key of a `kind` section allows, over every component of the kind: a key that
    several take (`sampler.num_steps`) is declared alike by all (`unified`)."""
    merged: dict[str, Setting] = {}
    for name in components(kind):
        for key, setting in class_settings(kind, name).items():
            merged[key] = unified(f"{kind}.{key}", merged.get(key), setting)
    return merged
