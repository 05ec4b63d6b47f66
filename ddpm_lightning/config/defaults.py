"""Every network's, schedule's and sampler's defaults, read off its own signature (the one place
they are written) into a structured config: `schema/<kind>/<name>` in Hydra's ConfigStore.
conf/<kind>/<option>.yaml extends it and only overrides, so no default is written twice and the
command line can still set every key (`sampler.eta=0`)."""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from ddpm_lightning.components.registry import PARTIAL_KINDS, REGISTRY, conf_target
from ddpm_lightning.diffusion.schedules import BETA_SCHEDULES

# The kinds whose YAML options extend their class's defaults; optimizers are torch's.
KINDS = ("model", "schedule", "sampler")
# Arguments a component gets from the module at run time, never from settings.
RUNTIME = frozenset({"schedule", "objective", "progress"})


def keyword_defaults(function: Any) -> dict[str, Any]:
    """The arguments of `function` that have defaults, tuples as lists (what configs hold)."""
    return {
        name: list(p.default) if isinstance(p.default, tuple) else p.default
        for name, p in inspect.signature(function).parameters.items()
        if p.default is not inspect.Parameter.empty and name not in RUNTIME
    }


def class_defaults(kind: str, name: str) -> dict[str, Any]:
    """The defaults of the component `kind`/`name`: its class's and its bases' `__init__`
    arguments (a subclass's win), and for a schedule its β function's options."""
    component = REGISTRY[kind][name]
    found: dict[str, Any] = {}
    if not inspect.isclass(component):
        return {**keyword_defaults(component), **({"name": name} if kind == "schedule" else {})}
    for klass in reversed(inspect.getmro(component)):
        if "__init__" in vars(klass) and klass.__module__.startswith("ddpm_lightning."):
            found.update(keyword_defaults(vars(klass)["__init__"]))
    if kind == "schedule":
        found.update(name=name, **keyword_defaults(BETA_SCHEDULES[name]))
    return found


def structured_config(kind: str, name: str) -> type:
    """A dataclass with `_target_` (and `_partial_`) and every default of `kind`/`name`; its
    fields are typed `Any`, so the schema (not OmegaConf) judges the values users give."""
    fields: list[tuple[str, Any, Any]] = [("_target_", str, conf_target(kind, name))]
    if kind in PARTIAL_KINDS:
        fields.append(("_partial_", bool, True))
    for key, value in class_defaults(kind, name).items():
        mutable = isinstance(value, (list, dict))
        default = (
            field(default_factory=functools.partial(copy.deepcopy, value)) if mutable else value
        )
        fields.append((key, Any, default))
    return make_dataclass(f"{name.title().replace('_', '')}{kind.title()}Defaults", fields)


def store_defaults() -> None:
    """Store `schema/<kind>/<name>` for every registered network, schedule and sampler."""
    store = ConfigStore.instance()
    for kind in KINDS:
        for name in REGISTRY[kind]:
            store.store(group=f"schema/{kind}", name=name, node=structured_config(kind, name))
