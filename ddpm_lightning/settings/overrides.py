"""Hydra's command-line overrides (`[+|++|~]key=value`): their parts, and this command's."""

from __future__ import annotations

import re

from hydra.core.hydra_config import HydraConfig

OVERRIDE = re.compile(r"^(?P<prefix>[+~]{0,2})(?P<key>[\w.@/-]+)=(?P<value>.*)$", re.DOTALL)


def override_key(override: str) -> str:
    """The dotted key (or config group) `override` sets, adds or deletes."""
    return override.lstrip("+~").split("=", 1)[0]


def command_overrides() -> list[str] | None:
    """This Hydra command's overrides; None outside a command (Python, composed configs)."""
    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def set_on_the_command_line(key: str) -> bool:
    """Whether this command's overrides set `key` (outside a Hydra command: no)."""
    return any(override_key(override) == key for override in command_overrides() or [])
