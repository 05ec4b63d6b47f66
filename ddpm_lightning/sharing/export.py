"""Export a trained model as a model folder: config.json, model.safetensors, README.md (the
model card) and samples.png, from a training checkpoint or another model folder, with the
run's record (overrides, training time, metrics) carried into the config and the card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf

from ddpm_lightning.components import build
from ddpm_lightning.errors import DataError
from ddpm_lightning.evaluation.pictures import grid, to_pil
from ddpm_lightning.sharing.card import model_card
from ddpm_lightning.sharing.folder import (
    CONFIG_NAME,
    MODULE_KEYS,
    WEIGHTS_NAME,
    build_module,
    read_config,
    read_weights,
    write_folder,
)
from ddpm_lightning.training.checkpoints import read_checkpoint

CARD_NAME = "README.md"
SAMPLES_NAME = "samples.png"
METRIC_KEYS = (
    "fld",
    "mean_confidence",
    "requested_label_accuracy",
    "num_samples",
    "seed",
    "sampler",
)
Source = tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]


def run_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides of the Hydra run in `run_dir`, when recorded."""
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    # Hydra writes overrides.yaml as a list of strings; OmegaConf types any container.
    return cast("list[str]", OmegaConf.to_container(OmegaConf.load(overrides)))


def checkpoint_source(ckpt_path: str | Path) -> Source:
    """(hyper_parameters, EMA state_dict, record) of a training checkpoint; the record has
    the EMA flag, the global step and the overrides of the run folder it sits in."""
    checkpoint = read_checkpoint(ckpt_path)
    record = {
        "ema": "current_model_state" in checkpoint,
        "global_step": checkpoint.get("global_step"),
        "training": {"overrides": run_overrides(Path(ckpt_path).resolve().parent.parent)},
    }
    return checkpoint["hyper_parameters"], checkpoint["state_dict"], record


def folder_source(folder: Path) -> Source:
    """(hyper_parameters, state_dict, record) of a model folder, to export it again."""
    config = read_config(folder)
    state_dict = read_weights(folder, config["sha256"])
    kept = ("ema", "global_step", "training", "evaluation")
    record: dict[str, Any] = {key: config[key] for key in kept if key in config}
    return {key: config[key] for key in MODULE_KEYS if key in config}, state_dict, record


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{what}={path} is not a readable JSON file ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{what}={path} is not a JSON object")
    return value


def evaluation_record(metrics: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """What the card reports of an evaluate command's metrics.json and its overrides."""
    return {**{key: metrics[key] for key in METRIC_KEYS if key in metrics}, "overrides": overrides}


def run_record(record_path: Path | None, metrics_path: Path | None) -> dict[str, Any]:
    """The `record=` JSON (keys train_overrides, training_time, device, global_step, ema,
    metrics, evaluate_overrides; all optional) and the `metrics=` metrics.json as the
    config's `ema`, `global_step`, `training` and `evaluation` entries."""
    found: dict[str, Any] = {}
    if record_path is not None:
        record = read_json(record_path, "record")
        found |= {key: record[key] for key in ("ema", "global_step") if key in record}
        training = {
            "overrides": record.get("train_overrides"),
            "time": record.get("training_time"),
            "device": record.get("device"),
        }
        found["training"] = {key: value for key, value in training.items() if value is not None}
        if "metrics" in record:
            found["evaluation"] = evaluation_record(
                record["metrics"], record.get("evaluate_overrides")
            )
    if metrics_path is not None:
        found["evaluation"] = evaluation_record(
            read_json(metrics_path, "metrics"), run_overrides(Path(metrics_path).resolve().parent)
        )
    return found


def merge_records(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s entries; `training` is merged key by key."""
    merged = {**base, **update}
    merged["training"] = {**(base.get("training") or {}), **(update.get("training") or {})}
    return merged


def write_samples(
    config: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path, num_samples: int
) -> bool:
    """samples.png: `num_samples` images of the recommended sampler, seed 0, on the CPU, in
    rows of 8; False (nothing written) for data that are not images."""
    if len(config["data_shape"]) != 3:
        return False
    module = build_module(config, state_dict, path.parent)
    sampler = module.make_sampler(build("sampler", config["sampler"]), progress=False)
    images = module.generate(sampler, num_samples, seed=0)
    picture = to_pil(grid(images, nrow=8))
    (picture.convert("L") if images.shape[1] == 1 else picture).save(path, optimize=True)
    return True


def export_folder(
    out_dir: Path,
    source: Source,
    sampler: dict[str, Any],
    name: str,
    num_samples: int = 64,
) -> dict[str, Path]:
    """Write the model folder of `source` (see checkpoint_source) into `out_dir`, with
    `sampler` (a sampler config) as the recommended sampler; `name` is what `pretrained=`
    takes in the card; num_samples=0 skips samples.png. The written files by name."""
    hyper_parameters, state_dict, record = source
    out_dir = Path(out_dir)
    config = write_folder(out_dir, hyper_parameters, state_dict, {"sampler": sampler, **record})
    pictured = num_samples > 0 and write_samples(
        config, state_dict, out_dir / SAMPLES_NAME, num_samples
    )
    if not pictured:
        (out_dir / SAMPLES_NAME).unlink(missing_ok=True)
    (out_dir / CARD_NAME).write_text(model_card(config, name, num_samples if pictured else 0))
    names = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME] + ([SAMPLES_NAME] if pictured else [])
    return {file: out_dir / file for file in names}
