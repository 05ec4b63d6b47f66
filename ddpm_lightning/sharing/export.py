"""Export a trained model as a model folder: config.json, model.safetensors, README.md (the
model card) and samples.png, from a training checkpoint or another model folder, with the
run's record (overrides, training time, metrics) carried into the config and the card. The
source and the record are read and checked, and every file is built in memory, before the
folder's old files are replaced, all at once. Nothing in the folder names a path of the
exporting machine (`sharing.portable`)."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf
from PIL import Image

from ddpm_lightning.components import build, component_settings
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.evaluation.pictures import grid, to_pil
from ddpm_lightning.sharing.card import model_card
from ddpm_lightning.sharing.folder import (
    CONFIG_NAME,
    GUIDE_DIR,
    MODULE_KEYS,
    WEIGHTS_NAME,
    build_module,
    model_files,
    read_config,
    read_weights,
)
from ddpm_lightning.sharing.portable import portable_record
from ddpm_lightning.sharing.pretrained import check_guide
from ddpm_lightning.sharing.recommended import autoguided
from ddpm_lightning.training.checkpoints import build_module as build_from_settings
from ddpm_lightning.training.checkpoints import load_weights, read_checkpoint
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.outputs import replacing

CARD_NAME = "README.md"
SAMPLES_NAME = "samples.png"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, SAMPLES_NAME, GUIDE_DIR)
# What a guide's config keeps of its record: enough to say what it is, not how it scored.
GUIDE_RECORD = ("ema", "global_step", "training")
METRIC_KEYS = (
    "fld",
    "mean_confidence",
    "requested_label_accuracy",
    "num_samples",
    "seed",
    "sampler",
    "lenet",
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
    """(hyper_parameters, EMA state_dict, record) of a training checkpoint, its weights
    checked to fit its settings; the record has the EMA flag, the global step and the
    overrides of the run folder it sits in."""
    checkpoint = read_checkpoint(ckpt_path)
    where = f"ckpt_path={ckpt_path}"
    load_weights(
        build_from_settings(checkpoint["hyper_parameters"], where), checkpoint["state_dict"], where
    )
    record = {
        "ema": "current_model_state" in checkpoint,
        "global_step": checkpoint.get("global_step"),
        "training": {"overrides": run_overrides(Path(ckpt_path).resolve().parent.parent)},
    }
    return checkpoint["hyper_parameters"], checkpoint["state_dict"], record


def folder_source(folder: Path) -> Source:
    """(hyper_parameters, state_dict, record) of a model folder, to export it again; its
    weights checked to fit its config."""
    config = read_config(folder)
    state_dict = read_weights(folder, config["sha256"])
    build_module(config, state_dict, folder)
    kept = ("ema", "global_step", "training", "evaluation", "evaluation_by_calls")
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


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_overrides(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def is_sampler(value: Any) -> bool:
    """Whether `value` is the settings of a registered sampler, as metrics.json records them."""
    try:
        component_settings("sampler", value)
    except ConfigError:
        return False
    return True


# What each entry of a metrics.json and a `record=` JSON must be when given (null: not given).
Check = tuple[Callable[[Any], bool], str]
METRIC_CHECKS: dict[str, Check] = {
    "fld": (is_number, "a finite number"),
    "mean_confidence": (is_number, "a finite number"),
    "requested_label_accuracy": (is_number, "a finite number"),
    "num_samples": (is_count, "an integer"),
    "seed": (is_count, "an integer"),
    "sampler": (is_sampler, "the settings of a registered sampler"),
    "lenet": (lambda value: isinstance(value, str), "text"),
}
RECORD_CHECKS: dict[str, Check] = {
    "ema": (lambda value: isinstance(value, bool), "true or false"),
    "global_step": (is_count, "an integer"),
    "train_overrides": (is_overrides, "a list of overrides"),
    "training_time": (lambda value: isinstance(value, str), "text"),
    "device": (lambda value: isinstance(value, str), "text"),
    "metrics": (lambda value: isinstance(value, dict), "a metrics.json's entries"),
    "evaluate_overrides": (is_overrides, "a list of overrides"),
    "distillation": (lambda value: isinstance(value, str), "text"),
}
# The columns of a `summarize` table that the card's FLD-by-network-calls table reads.
CALLS_COLUMNS = ("network_evaluations", "fld", "num_samples")


def check_entries(values: dict[str, Any], checks: dict[str, Check], what: str) -> None:
    """One line naming `what` and the key for the first entry that is not what the card
    reports, so a bad record stops the export before anything is written."""
    for key, (fits, kind) in checks.items():
        value = values.get(key)
        if value is not None and not fits(value):
            raise DataError(
                f"{what}: {key} is {json.dumps(value)[:60]}, not {kind}; fix it or leave it out"
            )


def evaluation_record(metrics: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """What the card reports of an evaluate command's metrics.json and its overrides."""
    reported = {key: metrics[key] for key in METRIC_KEYS if metrics.get(key) is not None}
    return {**reported, "overrides": overrides}


def calls_record(table: Path) -> list[dict[str, float]]:
    """The `calls=` table, a `summarize` summary.csv of evaluate runs at several network-call
    counts, as [{network_evaluations, fld, num_samples}] by call count; one line naming the
    file when it lacks a column or a finished row."""
    try:
        with Path(table).open(newline="") as file:
            rows = list(csv.DictReader(file))
    except OSError as exc:
        raise DataError(f"calls={table} is not a readable CSV file ({exc})") from None
    missing = [key for key in CALLS_COLUMNS if not rows or key not in rows[0]]
    if missing:
        raise DataError(
            f"calls={table} has no {missing[0]} column: pass the summary.csv that "
            "`python -m ddpm_lightning.tools.summarize` writes for an evaluate sweep"
        )
    finished = [row for row in rows if row.get("status", "ok") == "ok" and row["fld"]]
    if not finished:
        raise DataError(f"calls={table} has no finished evaluate run with an fld")
    points = [{key: float(row[key]) for key in CALLS_COLUMNS} for row in finished]
    return sorted(points, key=lambda point: point["network_evaluations"])


def run_record(
    record_path: Path | None, metrics_path: Path | None, calls_path: Path | None = None
) -> dict[str, Any]:
    """The `record=` JSON (keys train_overrides, training_time, device, distillation,
    global_step, ema, metrics, evaluate_overrides; all optional), the `metrics=` metrics.json
    and the `calls=` table as the config's `ema`, `global_step`, `training`, `evaluation` and
    `evaluation_by_calls` entries; an entry of the wrong kind is one line naming the file and
    the key."""
    found: dict[str, Any] = {}
    if record_path is not None:
        record = read_json(record_path, "record")
        check_entries(record, RECORD_CHECKS, f"record={record_path}")
        check_entries(record.get("metrics") or {}, METRIC_CHECKS, f"record={record_path}: metrics")
        found |= {key: record[key] for key in ("ema", "global_step") if key in record}
        training = {
            "overrides": record.get("train_overrides"),
            "time": record.get("training_time"),
            "device": record.get("device"),
            "distillation": record.get("distillation"),
        }
        found["training"] = {key: value for key, value in training.items() if value is not None}
        if "metrics" in record:
            found["evaluation"] = evaluation_record(
                record["metrics"], record.get("evaluate_overrides")
            )
    if metrics_path is not None:
        metrics = read_json(metrics_path, "metrics")
        check_entries(metrics, METRIC_CHECKS, f"metrics={metrics_path}")
        found["evaluation"] = evaluation_record(
            metrics, run_overrides(Path(metrics_path).resolve().parent)
        )
    if calls_path is not None:
        found["evaluation_by_calls"] = calls_record(calls_path)
    return found


def merge_records(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s entries; `training` is merged key by key."""
    merged = {**base, **update}
    merged["training"] = {**(base.get("training") or {}), **(update.get("training") or {})}
    return merged


def paired_module(
    model: tuple[dict[str, Any], dict[str, torch.Tensor]],
    guide: tuple[dict[str, Any], dict[str, torch.Tensor]] | None,
    where: Path,
    shown: str | None = None,
) -> DiffusionModule:
    """The module of a folder's (config, state_dict) `model`, with its `guide`'s module as
    `module.guide` when it may guide it (the same data, classes and noise levels); `where`
    names the folder in errors, `shown` the guide (default: `where`'s `GUIDE_DIR`)."""
    module = build_module(*model, where)
    if guide is not None:
        shown = shown or str(where / GUIDE_DIR)
        module.guide = check_guide(build_module(*guide, shown), module, shown)
        module.denoiser()
    return module


def samples_picture(
    module: DiffusionModule, sampler: dict[str, Any], num_samples: int
) -> Image.Image | None:
    """samples.png: `num_samples` images of `module` with the recommended `sampler` (autoguided
    with the module's guide, if it has one), seed 0, on the CPU, in rows of 8; None for data
    that are not images."""
    if len(module.data_shape) != 3:
        return None
    settings = sampler if module.guide is None else autoguided(sampler, sampler, [])
    made = module.make_sampler(build("sampler", settings), progress=False)
    images = module.generate(made, num_samples, seed=0)
    picture = to_pil(grid(images, nrow=8))
    return picture.convert("L") if images.shape[1] == 1 else picture


def export_folder(
    out_dir: Path,
    source: Source,
    sampler: dict[str, Any],
    name: str,
    num_samples: int = 64,
    guide: Source | None = None,
    guide_name: str | None = None,
) -> dict[str, Path]:
    """Write the model folder of `source` (see checkpoint_source) into `out_dir`, with
    `sampler` (a sampler config) as the recommended sampler, the record's overrides without
    this machine's paths (`portable_record`) and `guide` as the folder's guide (`GUIDE_DIR`),
    checked to guide the model (errors name `guide_name`); `name` is what `pretrained=` takes in
    the card; num_samples=0 skips samples.png. Every file is built first, then the set replaces
    the folder's old one whole (`replacing`). The written files by name."""
    hyper_parameters, state_dict, record = source
    out_dir = Path(out_dir)
    config, files = model_files(
        out_dir, hyper_parameters, state_dict, {"sampler": sampler, **portable_record(record)}
    )
    guide_config, pair = None, None
    if guide is not None:
        kept = {key: guide[2][key] for key in GUIDE_RECORD if key in guide[2]}
        guide_config, guide_files = model_files(
            out_dir / GUIDE_DIR, guide[0], guide[1], portable_record(kept)
        )
        files |= {f"{GUIDE_DIR}/{file}": data for file, data in guide_files.items()}
        pair = (guide_config, guide[1])
    module = paired_module((config, state_dict), pair, out_dir, guide_name)
    picture = samples_picture(module, config["sampler"], num_samples) if num_samples else None
    card = model_card(config, name, num_samples if picture else 0, guide_config)
    files[CARD_NAME] = card.encode()
    with replacing(out_dir, FOLDER_FILES) as folder:
        if guide is not None:
            (folder / GUIDE_DIR).mkdir()
        for file, data in files.items():
            (folder / file).write_bytes(data)
        if picture is not None:
            picture.save(folder / SAMPLES_NAME, optimize=True)
    names = [CONFIG_NAME, WEIGHTS_NAME, CARD_NAME] + ([SAMPLES_NAME] if picture else [])
    names += [f"{GUIDE_DIR}/{CONFIG_NAME}", f"{GUIDE_DIR}/{WEIGHTS_NAME}"] if guide else []
    return {file: out_dir / file for file in names}
