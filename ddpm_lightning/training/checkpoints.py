"""Read training checkpoints safely (`weights_only=True`) and rebuild the `DiffusionModule`."""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.module import DiffusionModule, current_hyperparameters


def read_checkpoint(ckpt_path: str | Path | None, mmap: bool = False) -> dict:
    """The checkpoint dict, loaded without running pickled code; one-line errors otherwise.

    Hyperparameters written by an earlier release get today's `_target_` paths.
    """
    if ckpt_path is None:
        raise ConfigError(
            "ckpt_path is required: pass ckpt_path=PATH/last.ckpt from a training run "
            "or a shipped model, pretrained=mnist"
        )
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; pass a .ckpt file from a training run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"ckpt_path={path} is not a loadable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"hyper_parameters", "state_dict"} <= set(
        checkpoint
    ):
        raise ConfigError(
            f"ckpt_path={path} is not a ddpm_lightning checkpoint (no hyper_parameters/state_dict)"
        )
    checkpoint["hyper_parameters"] = current_hyperparameters(checkpoint["hyper_parameters"])
    return checkpoint


def load_module(ckpt_path: str | Path | None) -> DiffusionModule:
    """The module stored in a checkpoint, on the CPU in eval mode."""
    checkpoint = read_checkpoint(ckpt_path)
    module = DiffusionModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
