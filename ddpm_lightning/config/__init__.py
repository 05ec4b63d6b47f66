"""Configs: composing conf/ as the command line does (compose.py) and the type and range of
every key, checked right after composition (schema.py)."""

from ddpm_lightning.config.compose import (
    best_precision,
    compose_config,
    config_dir,
    hydra_command,
    project_root,
)
from ddpm_lightning.config.schema import validate_config

__all__ = [
    "best_precision",
    "compose_config",
    "config_dir",
    "hydra_command",
    "project_root",
    "validate_config",
]
