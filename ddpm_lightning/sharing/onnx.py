"""A trained denoiser for runtimes without PyTorch (onnxruntime, onnxruntime-web in a browser).

`model.onnx`: the network with inputs x (B, C, H, W) float32, t (B,) int64, for
conditional models y (B,) int64 (the null label `num_classes` gives the unconditional
prediction) and for a student of distilled guidance guidance (B,) float32 (γ; 1: plain
conditional), output (B, C, H, W), the batch size B dynamic. `model.json`: what a sampler needs
beside it: the input names, the schedule's tables (float32 values, as the Python samplers read
them), the objective, T, the data shape, the class names and the recommended sampler.
`guide.onnx`, for a model with a guide (autoguidance, a model folder's `guide/`): the guide's
network; model.json's `guide` names its file, inputs (x, t, and y for a conditional guide),
objective and classes.
"""

from __future__ import annotations

import importlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, cast

import torch

from ddpm_lightning import __version__
from ddpm_lightning.components import build
from ddpm_lightning.data.registry import known_record
from ddpm_lightning.diffusion.consistency_sampler import ConsistencySampler
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.flow_samplers import FlowEulerSampler
from ddpm_lightning.diffusion.guidance import takes_guidance
from ddpm_lightning.diffusion.samplers import DDIMSampler, DDPMSampler
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.outputs import replacing

ONNX_NAME = "model.onnx"
RECORD_NAME = "model.json"
GUIDE_ONNX_NAME = "guide.onnx"
ONNX_FILES = (ONNX_NAME, RECORD_NAME, GUIDE_ONNX_NAME)
OPSET = 20
INPUT_NAMES = ("x", "t", "y", "guidance")
OUTPUT_NAME = "output"
# The packages torch.onnx.export(dynamo=True) needs: the `onnx` extra.
EXTRA_MODULES = ("onnx", "onnxscript")
# The exporter's graph passes log each step at INFO, which Hydra's logging would print.
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx")
# The NoiseSchedule buffers that DDIMSampler, DDPMSampler and ConsistencySampler read.
SCHEDULE_TABLES = (
    "alphas_cumprod",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "betas",
    "posterior_variance",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def require_onnx_extra(option: str) -> None:
    """A ConfigError naming `option` and the install line unless the `onnx` extra imports."""
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(
                f"{option} needs the onnx extra ({name} is not installed): "
                "pip install 'ddpm_lightning[onnx]'"
            ) from None


def input_count(module: DiffusionModule) -> int:
    """How many of INPUT_NAMES the network takes: x, t, then y (conditional), then guidance
    (distilled guidance)."""
    return 2 + (module.num_classes is not None) + takes_guidance(module.model)


def write_network(module: DiffusionModule, path: Path) -> None:
    """`module.model` as one ONNX file (opset 20) at `path`, batch size dynamic."""
    x, t, y = module.example_input()
    args = (x.repeat(2, 1, 1, 1), t.repeat(2)) + (() if y is None else (y.repeat(2),))
    if takes_guidance(module.model):
        args += (torch.ones(2),)
    batch = torch.export.Dim("batch")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # The exporter names the one batch dimension of all inputs once and says so.
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
        torch.onnx.export(
            module.model.eval(),
            args,
            str(path),
            input_names=list(INPUT_NAMES[: len(args)]),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=tuple({0: batch} for _ in args),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def recommended_sampler(module: DiffusionModule, sampler: dict[str, Any]) -> dict[str, Any]:
    """The settings of a ddim, ddpm, consistency, flow_euler or flow_heun sampler config as the
    page runs them (consistency: its visited `timesteps`, and the `spacing` that gives other
    step counts); guidance γ as `make_sampler` sets it (1.25 for conditional models when null)
    and its σ interval."""
    built = module.make_sampler(build("sampler", sampler), progress=False)
    common = cast(Denoiser, built.denoiser).settings()
    if isinstance(built, DDIMSampler):
        settings = {"num_steps": len(built.timesteps), "eta": built.eta, "spacing": built.spacing}
        return {"name": "ddim", **settings, **common}
    if isinstance(built, DDPMSampler):
        return {"name": "ddpm", "variance": built.variance, **common}
    if isinstance(built, ConsistencySampler):
        steps = list(built.timesteps)
        settings = {"num_steps": len(steps), "spacing": built.spacing, "timesteps": steps}
        return {"name": "consistency", **settings, **common}
    if isinstance(built, FlowEulerSampler):
        return {"name": built.name, "num_steps": len(built.timesteps), **common}
    raise ConfigError(
        f"sampler={built.name} has no port outside PyTorch: the ONNX record and the demo page "
        "take sampler=ddim, sampler=ddpm, sampler=consistency, sampler=flow_euler or "
        "sampler=flow_heun"
    )


def class_names(
    dataset: str | None, num_classes: int | None, saved: dict[str, Any] | None = None
) -> list[str] | None:
    """The dataset's class names, unless the model has another number of classes: the
    registry's, or those of the record `saved` with the model (a folder, a Hub dataset)."""
    record = known_record(dataset, saved)
    if record is None or num_classes not in (None, record.num_classes):
        return None
    return list(record.class_names)


def guide_record(guide: DiffusionModule) -> dict[str, Any]:
    """model.json's `guide`: the file of the guide's network, its inputs (as INPUT_NAMES), and
    the objective and classes its x̂₀ and labels follow."""
    return {
        "file": GUIDE_ONNX_NAME,
        "inputs": list(INPUT_NAMES[: input_count(guide)]),
        "objective": guide.diffusion.objective.value,
        "num_classes": guide.num_classes,
    }


def onnx_record(module: DiffusionModule, sampler: dict[str, Any]) -> dict[str, Any]:
    """model.json: the ONNX network's inputs and everything a sampler needs beside it, the
    guide's record when `module.guide` autoguides it. A flow model's sampler reads only T (its
    x_t lie on the flow path at s_t = (t + 1)/T, `flow.py`); the others read the schedule's
    tables."""
    schedule = module.diffusion.schedule
    dataset = module.hparams.get("dataset")
    guide = {} if module.guide is None else {"guide": guide_record(module.guide)}
    return {
        "library_name": "ddpm_lightning",
        "ddpm_lightning_version": __version__,
        "dataset": dataset,
        "data_shape": list(module.data_shape),
        "objective": module.diffusion.objective.value,
        "num_timesteps": schedule.num_timesteps,
        "num_classes": module.num_classes,
        "class_names": class_names(
            dataset, module.num_classes, module.hparams.get("dataset_record")
        ),
        "inputs": list(INPUT_NAMES[: input_count(module)]),
        "output": OUTPUT_NAME,
        "opset": OPSET,
        "sampler": recommended_sampler(module, sampler),
        "schedule": {
            "name": schedule.name,
            **{key: getattr(schedule, key).tolist() for key in SCHEDULE_TABLES},
        },
        **guide,
    }


def write_onnx(
    out_dir: Path, module: DiffusionModule, sampler: dict[str, Any], option: str = "format=onnx"
) -> dict[str, Path]:
    """Write model.onnx and model.json of `module` (and guide.onnx of `module.guide`) into
    `out_dir`, the set in place of the old one at once (`replacing`), `sampler` (a ddim, ddpm,
    consistency, flow_euler or flow_heun sampler config) as the recommended settings; `option`
    names what asked for it in the error when the onnx extra is missing. The written files by
    name."""
    require_onnx_extra(option)
    record = onnx_record(module, sampler)
    with replacing(out_dir, ONNX_FILES) as folder:
        write_network(module, folder / ONNX_NAME)
        if module.guide is not None:
            write_network(module.guide, folder / GUIDE_ONNX_NAME)
        (folder / RECORD_NAME).write_text(json.dumps(record) + "\n")
    written = ONNX_FILES if module.guide is not None else (ONNX_NAME, RECORD_NAME)
    return {name: out_dir / name for name in written}
