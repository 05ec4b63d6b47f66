"""Configs: composing conf/ as the command line does (compose.py) and the type and range of
every key, checked right after composition (schema.py). Names load on first use, so
`ddpm_lightning.config.location` stays free of torch."""

from __future__ import annotations

import importlib
from typing import Any

EXPORTS = {
    "best_precision": "compose",
    "compose_config": "compose",
    "hydra_command": "compose",
    "config_dir": "location",
    "project_root": "location",
    "validate_config": "schema",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in EXPORTS:
        raise AttributeError(f"module 'ddpm_lightning.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ddpm_lightning.config.{EXPORTS[name]}"), name)
