"""Locate and compose the Hydra configs, from a source checkout or an installed wheel."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.config.defaults import store_defaults
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


store_defaults()


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config as the command line would, for tests and notebooks.

    Outside a Hydra run there is no run folder: pass `paths.output_dir=DIR` in `overrides`.
    """
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


# `task_name` is a folder name Hydra makes before any command runs; filesystems hold 255 bytes.
MAX_TASK_NAME = 200


def check_task_name(argv: list[str]) -> None:
    """Refuse, before Hydra makes the run folder, a `task_name=` on the command line longer
    than a folder name can be: one line and exit 1, where Hydra would end in a traceback."""
    for argument in argv:
        key, _, value = argument.lstrip("+").partition("=")
        if key == "task_name" and len(value.encode()) > MAX_TASK_NAME:
            print(
                f"error: task_name={value[:20]}… has {len(value)} characters; it names a folder, "
                f"so keep it to {MAX_TASK_NAME}",
                file=sys.stderr,
            )
            raise SystemExit(1)


def checked_command_line(entry: Callable[[], Any]) -> Callable[[], Any]:
    """`entry` (a Hydra main) after `check_task_name` of the command line."""

    @functools.wraps(entry)
    def main() -> Any:
        check_task_name(sys.argv[1:])
        return entry()

    return main


def stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM's handler while a command runs: one line and exit 143 (128 + SIGTERM) at once.
    Outputs are written to temporary files and renamed into place, so none is left half
    written; without this, Lightning notes the signal and the work runs on to its end."""
    print("error: stopped by SIGTERM; no output was left half written", file=sys.stderr)
    raise SystemExit(128 + signal.SIGTERM)


def hydra_command(config_name: str, run: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """The command-line entry point that composes conf/`config_name`.yaml with the user's
    overrides, checks it against its schema and calls `run(cfg)`, a user error ending in one
    line and exit 1, SIGTERM in one line and exit 143."""

    @functools.wraps(run)
    def checked(cfg: DictConfig) -> Any:
        validate_config(cfg, config_name)
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            return run(cfg)
        finally:
            signal.signal(signal.SIGTERM, previous)

    command = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    return checked_command_line(command(report_errors(checked)))
