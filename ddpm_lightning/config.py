"""Locate and compose the Hydra configs, from a source checkout or an installed wheel."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent


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


if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", project_root)


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config as the command line would, for tests and notebooks.

    Outside a Hydra run there is no run folder: pass `paths.output_dir=DIR` in `overrides`.
    """
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])
