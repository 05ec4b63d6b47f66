"""Model folders: `config.json` (what rebuilds the module, the recommended sampler and the run's
record) beside `model.safetensors` (the weights), readable without unpickling anything; a
folder may ship the weaker model that autoguidance guides it away from as a model folder of the
same kind inside it, `guide/`.

config.json's `sha256` is the weights file's, checked on every load. Its components (model,
schedule, optimizer, sampler) are named settings of the package's registry, and a `_target_` is
taken only as one of the exact strings earlier releases wrote: a downloaded config never names
code (`ddpm_lightning.components`).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ddpm_lightning import __version__
from ddpm_lightning.components import component_settings, plain_settings
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.evaluation.fld import sha256
from ddpm_lightning.training.checkpoints import build_module as build_from_settings
from ddpm_lightning.training.checkpoints import load_weights, module_settings
from ddpm_lightning.training.module import MODULE_KEYS, DiffusionModule
from ddpm_lightning.training.outputs import replacing

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GUIDE_DIR = "guide"


def model_files(
    out_dir: Path,
    hyper_parameters: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    extra: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The config of a model folder for `out_dir` and the bytes of its `config.json` and
    `model.safetensors`, by name, built in memory (nothing is written).

    hyper_parameters: the DiffusionModule's arguments (a checkpoint's `hyper_parameters`);
    extra: the recommended `sampler`, `ema`, `global_step`, `training` and `evaluation`.
    """
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    config = {
        "library_name": "ddpm_lightning",
        "ddpm_lightning_version": __version__,
        **{key: hyper_parameters[key] for key in MODULE_KEYS if key in hyper_parameters},
        "num_parameters": sum(value.numel() for value in tensors.values()),
        **extra,
    }
    config["data_shape"] = list(config["data_shape"])
    config = plain_settings(config, str(out_dir / CONFIG_NAME))
    weights = save(tensors, metadata={"format": "pt"})
    config["sha256"] = hashlib.sha256(weights).hexdigest()
    text = json.dumps(config, indent=2) + "\n"
    return config, {CONFIG_NAME: text.encode(), WEIGHTS_NAME: weights}


def write_folder(
    out_dir: Path,
    hyper_parameters: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write `model.safetensors` and `config.json` (see `model_files`) into `out_dir`, both in
    place of the old pair at once (`replacing`); return the config."""
    config, files = model_files(out_dir, hyper_parameters, state_dict, extra)
    with replacing(out_dir, tuple(files)) as folder:
        for name, data in files.items():
            (folder / name).write_bytes(data)
    return config


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a model folder, with its components named (`plain_settings`); one line
    naming the file and the key for anything that would select code."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise DataError(f"{folder} is not a model folder: it has no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    required = ("model", "schedule", "sha256")
    if not isinstance(config, dict) or not all(key in config for key in required):
        raise DataError(f"{path} is not a ddpm_lightning model config (it needs {required})")
    try:
        module = module_settings({k: config[k] for k in MODULE_KEYS if k in config}, str(path))
        rest = plain_settings({k: v for k, v in config.items() if k not in MODULE_KEYS}, str(path))
        if rest.get("sampler") is not None:
            rest["sampler"] = component_settings("sampler", rest["sampler"])
    except ConfigError as exc:
        message = str(exc)
        raise DataError(
            message if message.startswith(str(path)) else f"{path}: {message}"
        ) from None
    return {**module, **rest}


def read_weights(folder: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """model.safetensors of a model folder, after its SHA-256 matched config.json's."""
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        raise DataError(f"{folder} is not a model folder: it has no {WEIGHTS_NAME}")
    if not (isinstance(expected_sha256, str) and re.fullmatch(r"[0-9a-f]{64}", expected_sha256)):
        raise DataError(
            f"{folder / CONFIG_NAME}: sha256 is {str(expected_sha256)[:40]}, not the 64 hex "
            f"digits of {WEIGHTS_NAME}'s SHA-256; export the folder again"
        )
    actual = sha256(path)
    if actual != expected_sha256:
        raise DataError(
            f"{path}: its SHA-256 {actual[:12]}… does not match config.json's "
            f"{expected_sha256[:12]}…; the file is damaged or was changed: export it again"
        )
    try:
        return load_file(path)
    except SafetensorError as exc:
        raise DataError(f"{path} is not a readable safetensors file ({exc})") from None


def build_module(
    config: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str | Path
) -> DiffusionModule:
    """The DiffusionModule of `config` with `state_dict` loaded, on the CPU in eval mode;
    `source` names the folder in errors."""
    settings = {key: config[key] for key in MODULE_KEYS if key in config}
    try:
        module = build_from_settings(settings, f"{source}: {CONFIG_NAME}")
        return load_weights(
            module, state_dict, str(source), f"{WEIGHTS_NAME} does not match {CONFIG_NAME}"
        )
    except ConfigError as exc:
        raise DataError(str(exc)) from None


def shipped_guide(folder: Path) -> Path | None:
    """The model folder `folder` ships as its guide (`GUIDE_DIR`), if it ships one."""
    guide = Path(folder) / GUIDE_DIR
    return guide if (guide / CONFIG_NAME).is_file() else None


def load_folder(folder: str | Path) -> DiffusionModule:
    """The module of a model folder: JSON and safetensors only, SHA-256 and weights checked."""
    folder = Path(folder)
    config = read_config(folder)
    return build_module(config, read_weights(folder, config["sha256"]), folder)
