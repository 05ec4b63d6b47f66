"""Locate and compose the Hydra configs, from a source checkout or an installed wheel."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.errors import report_errors

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """`conf/` shipped inside the wheel, else the checkout's top-level `conf/`."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/train.yaml next to {PACKAGE_DIR}; reinstall ddpm_lightning")


def project_root() -> str:
    """The checkout's root when running from source, else the current directory."""
    root = PACKAGE_DIR.parent
    return str(root if (root / "pyproject.toml").is_file() else Path.cwd())


def best_precision(accelerator: str = "auto") -> str:
    """`trainer.precision` by default: bf16-mixed when the run may use a CUDA GPU that
    supports bfloat16 (`accelerator` auto, gpu or cuda), else 32-true."""
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


for _name, _resolver in (("project_root", project_root), ("best_precision", best_precision)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config as the command line would, for tests and notebooks.

    Outside a Hydra run there is no run folder: pass `paths.output_dir=DIR` in `overrides`.
    """
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


def hydra_command(config_name: str, run: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """The command-line entry point that composes conf/`config_name`.yaml with the user's
    overrides, checks it against its schema and calls `run(cfg)`, a user error ending in one
    line and exit 1."""

    @functools.wraps(run)
    def checked(cfg: DictConfig) -> Any:
        validate_config(cfg, config_name)
        return run(cfg)

    command = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    return command(report_errors(checked))
