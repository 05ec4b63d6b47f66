"""Load training checkpoints safely (`weights_only=True`) back into a `DiffusionModule`."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.module import DiffusionModule


def load_module(ckpt_path: str | Path | None, map_location: str | torch.device = "cpu"):
    """The module stored in a checkpoint, in eval mode; one-line errors for bad paths/files."""
    if ckpt_path is None:
        raise ConfigError(
            "ckpt_path is required: pass ckpt_path=PATH/last.ckpt from a training run"
        )
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; pass a .ckpt file from a training run")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"ckpt_path={path} is not a loadable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"hyper_parameters", "state_dict"} <= set(
        checkpoint
    ):
        raise ConfigError(
            f"ckpt_path={path} is not a ddpm_lightning checkpoint (no hyper_parameters/state_dict)"
        )
    module = DiffusionModule(**checkpoint["hyper_parameters"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval()
