"""From settings to objects. A component's settings are plain values under a registered name
(`{name: unet, model_channels: 16, …}`); a `_target_` is taken only as one of the exact strings
in TARGETS and becomes that name. No other Hydra instruction (`_args_`, `_recursive_`, …) is
ever read, and nothing is imported by a string, so a downloaded file cannot run code."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ddpm_lightning.components.registry import (
    DEFAULT_SCHEDULE,
    OPTIMIZER_SETTINGS,
    PARTIAL_KINDS,
    TARGETS,
    factory,
)
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import check, declared

# Hydra reads keys of this form (`_target_`, `_partial_`, `_args_`, `_recursive_`, …).
INSTRUCTION = re.compile(r"^_.+_$")


def shown(value: object) -> str:
    """`value` for a one-line message: its repr, at most 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def as_plain(value: Any) -> Any:
    """An OmegaConf node as plain dicts and lists (interpolations resolved); others as they are."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def join(where: str, key: object) -> str:
    """The dotted key `key` below `where` ('' is the top)."""
    return f"{where}.{key}" if where else str(key)


def check_plain(value: Any, where: str) -> None:
    """Refuse any Hydra instruction inside `value` (nested mappings and lists included)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and INSTRUCTION.match(key):
                raise ConfigError(
                    f"{join(where, key)} is refused: settings are plain values, and only a "
                    "component's own `name` (or a known `_target_` in its place) selects code"
                )
            check_plain(item, join(where, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")


def known_target(value: Mapping[str, Any], where: str) -> tuple[str, str | None]:
    """(kind, name) of the mapping's `_target_`, an exact entry of TARGETS; one line otherwise."""
    target = value["_target_"]
    known = TARGETS.get(target) if isinstance(target, str) else None
    if known is None:
        raise ConfigError(
            f"{where}._target_={shown(target)} is refused: settings name registered components "
            "(e.g. model.name: unet), never code; register your own with "
            "ddpm_lightning.components.register"
        )
    return known


def component_settings(kind: str, value: Any, where: str | None = None) -> dict[str, Any]:
    """The settings of one `kind` component as `{'name': …, **options}`: a mapping with a
    registered `name`, or with a known `_target_` (mapped to its name); nothing in it may name
    code. `where` (default `kind`) names the key in messages."""
    where = where or kind
    value = as_plain(value)
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where} must be a mapping of settings with a name (e.g. {{name: ...}}), "
            f"not {shown(value)}"
        )
    settings = dict(value)
    if "_target_" in settings:
        target_kind, name = known_target(settings, where)
        del settings["_target_"]
        if target_kind != kind:
            raise ConfigError(f"{where}._target_ names a {target_kind}, not a {kind}")
        settings.pop("_convert_", None)  # how Hydra passed containers: plain here anyway
        partial = settings.pop("_partial_", kind in PARTIAL_KINDS)
        if partial is not (kind in PARTIAL_KINDS):
            raise ConfigError(f"{where}._partial_={shown(partial)} is refused for a {kind}")
        if name is not None:
            if "name" in settings:
                raise ConfigError(f"{where} has both _target_ and name: keep name only")
            settings = {"name": name, **settings}
        elif "name" not in settings:
            settings = {"name": DEFAULT_SCHEDULE, **settings}
    check_plain(settings, where)
    factory(kind, settings.get("name"), where)
    return settings


def plain_settings(value: Any, source: str, where: str = "") -> Any:
    """A loaded file's content (a checkpoint's hyperparameters, a folder's config.json) with
    every mapping that has a known `_target_` turned into named settings. An unknown `_target_`
    or any other Hydra instruction anywhere is refused in one line naming `source` (the file)
    and the key below `where`."""
    try:
        return named(value, where)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def named(value: Any, where: str) -> Any:
    """`plain_settings` without the file's name."""
    value = as_plain(value)
    if isinstance(value, Mapping):
        if "_target_" in value:
            kind, _ = known_target(value, where)
            return component_settings(kind, value, where)
        check_plain(dict.fromkeys(value), where)
        return {key: named(item, join(where, key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [named(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def check_optimizer(name: str, options: Mapping[str, Any], where: str) -> None:
    """Refuse an optimizer setting outside what `OPTIMIZER_SETTINGS` declares for it, in one
    line naming `where.key`: torch's optimizers, which cannot be decorated, would only raise
    with a traceback."""
    settings = declared(OPTIMIZER_SETTINGS[name]) if name in OPTIMIZER_SETTINGS else {}
    for key, setting in settings.items():
        if key in options:
            check(f"{where}.{key}", options[key], setting)


def build(kind: str, value: Any, where: str | None = None) -> Any:
    """The `kind` component of `value`'s settings (see `component_settings`): built, or a
    `functools.partial` for samplers and optimizers, which are completed later."""
    where = where or kind
    settings = component_settings(kind, value, where)
    component = factory(kind, settings["name"], where)
    options = {key: item for key, item in settings.items() if key != "name"}
    try:
        signature = inspect.signature(component)
    except (TypeError, ValueError):  # a builtin without a readable signature: not checked
        signature = None
    if signature is not None:
        if "name" in signature.parameters:
            options["name"] = settings["name"]
        try:
            signature.bind_partial(**options)
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc} ({kind} {settings['name']!r})") from None
    if kind == "optimizer":
        check_optimizer(settings["name"], options, where)
    if kind in PARTIAL_KINDS:
        return functools.partial(component, **options)
    return component(**options)
