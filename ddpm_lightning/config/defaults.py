"""Every component's defaults (`ddpm_lightning.components.defaults`, read off its own signature)
as a structured config `schema/<kind>/<name>` in Hydra's ConfigStore, which
conf/<kind>/<option>.yaml extends and only overrides, so no default is written twice and the
command line can still set every key (`sampler.eta=0`)."""

from __future__ import annotations

import copy
import functools
from dataclasses import field, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from ddpm_lightning.components.defaults import class_defaults, components
from ddpm_lightning.components.registry import PARTIAL_KINDS, conf_target
from ddpm_lightning.data import DATA_MODULES

# The kinds whose YAML options extend their component's defaults.
KINDS = ("data", "model", "schedule", "optimizer", "sampler")


def target(kind: str, name: str) -> str:
    """The `_target_` conf/ selects `kind`/`name` by: the registry's, or a data module's path."""
    if kind != "data":
        return conf_target(kind, name)
    module = DATA_MODULES[name]
    return f"{module.__module__}.{module.__qualname__}"


def structured_config(kind: str, name: str) -> type:
    """A dataclass with `_target_` (and `_partial_`) and every default of `kind`/`name`; its
    fields are typed `Any`, so the schema (not OmegaConf) judges the values users give."""
    fields: list[tuple[str, Any, Any]] = [("_target_", str, target(kind, name))]
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
    """Store `schema/<kind>/<name>` for every component of every kind."""
    store = ConfigStore.instance()
    for kind in KINDS:
        for name in components(kind):
            store.store(group=f"schema/{kind}", name=name, node=structured_config(kind, name))
