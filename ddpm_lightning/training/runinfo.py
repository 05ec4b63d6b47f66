"""A run's records and where it continues: `run_info.json` (the command line, package versions
and git commit of the start and of each resume), the checkpoint `ckpt_path` names, and the run
folder a resumed run continues in."""

from __future__ import annotations

import contextlib
import io
import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.data.registry import DATASETS, DatasetRecord
from ddpm_lightning.models.data_fit import fitted_to_data
from ddpm_lightning.settings.overrides import command_overrides
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.safety import check_resume_checkpoint, find_last_checkpoint

PACKAGES = (
    "ddpm_lightning",
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "numpy",
)
# `paths.output_dir` as conf/paths/default.yaml sets it: the run's outputs go to Hydra's folder.
HYDRA_FOLDER = "${hydra:runtime.output_dir}"


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(directory: Path) -> dict[str, str | bool] | None:
    """HEAD's hash and whether the work tree has changes; None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def earlier_record(path: Path) -> dict[str, Any] | None:
    """The record `path` holds, or None when there is none or it is unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_run_info(output_dir: Path, project_root: Path, resumed: bool = False) -> Path:
    """Write `run_info.json` (command, versions, git) into the run folder; a `resumed` run adds
    its own under `resumes`, after the record of the run's start."""
    output_dir.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "versions": package_versions(),
        "git": git_commit(project_root),
    }
    path = output_dir / "run_info.json"
    earlier = earlier_record(path) if resumed else None
    if earlier is not None:
        info = {**earlier, "resumes": [*earlier.get("resumes", []), info]}
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def module_arguments(
    cfg: DictConfig, data_shape: tuple[int, ...], record: DatasetRecord | None = None
) -> dict[str, Any]:
    """The DiffusionModule arguments of `cfg`, every sub-config as a plain, resolved dict; the
    network's channels (and a diffusers UNet's image side) follow `data_shape`
    (`fitted_to_data`), and the data's record is kept when the registry does not know it (a
    folder, a Hub dataset). The student of a round of distilled guidance (`distill.guidance`)
    takes γ: model.guidance_embedding is on, as ProgressiveDistillation builds it."""

    def plain(node: Any) -> Any:
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    model = fitted_to_data(plain(cfg.model), data_shape)
    if OmegaConf.select(cfg, "distill.guidance") is not None:
        model["guidance_embedding"] = True
    return {
        "model": model,
        "schedule": plain(cfg.schedule),
        "diffusion": plain(cfg.get("diffusion")),
        "optimizer": plain(cfg.optimizer),
        "lr_schedule": plain(cfg.get("lr_schedule")),
        "data_shape": data_shape,
        "dataset": cfg.data.get("name"),
        "dataset_record": (
            record.as_dict() if record is not None and record.name not in DATASETS else None
        ),
    }


def build_module(
    cfg: DictConfig, data_shape: tuple[int, ...], record: DatasetRecord | None = None
) -> DiffusionModule:
    """The LightningModule with every sub-config as a plain, resolved dict."""
    return DiffusionModule(**module_arguments(cfg, data_shape, record))


def sweep_job() -> list[str] | None:
    """This sweep job's command-line overrides, None outside a multirun."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return command_overrides()


def resume_checkpoint(cfg: DictConfig, hparams: dict[str, Any]) -> Path | None:
    """The checkpoint `ckpt_path` names, checked to match `hparams`: `last` = the newest
    last.ckpt of this task_name that is no smoke test and whose model and schedule match, and
    in a sweep the one its own job wrote (see `find_last_checkpoint`)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        runs = Path(cfg.paths.log_dir) / cfg.task_name
        path = find_last_checkpoint(runs, cfg.task_name, hparams, sweep_job())
    else:
        path = Path(ckpt_path)
    check_resume_checkpoint(path, hparams)
    return path


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder whose `checkpoints/last.ckpt` `checkpoint` is, None for any other file:
    a run continues in place from its newest state only, never from an older checkpoint."""
    checkpoint = checkpoint.resolve()
    if checkpoint.name != "last.ckpt" or checkpoint.parent.name != "checkpoints":
        return None
    return checkpoint.parent.parent


def continues_in_place(cfg: DictConfig) -> bool:
    """Whether a train command may continue a run in its folder: a single run (not a sweep job,
    not a fast_dev_run smoke test) that writes into Hydra's run folder."""
    paths = OmegaConf.to_container(cfg.paths, resolve=False)
    return (
        isinstance(paths, dict)
        and paths.get("output_dir") == HYDRA_FOLDER
        and cfg.hydra.mode == RunMode.RUN
        and cfg.hydra.job.config_name == "train"
        and cfg.get("ckpt_path") is not None
        and not OmegaConf.select(cfg, "trainer.fast_dev_run", default=False)
    )


def resumed_run_folder(cfg: DictConfig) -> Path | None:
    """The folder of the run a train command resumes, for `hydra.run.dir`: that of the
    `checkpoints/last.ckpt` which `resume_checkpoint` picks, None when the command starts a new
    run or resumes elsewhere (`continues_in_place`).

    Any problem with the checkpoint also gives None: the command then checks it again and
    reports it in one line. Its choice is printed then too, so it is not printed here.
    """
    try:
        if not continues_in_place(cfg):
            return None
        hparams = dict(build_module(cfg, instantiate(cfg.data).data_shape).hparams)
        with contextlib.redirect_stdout(io.StringIO()):
            checkpoint = resume_checkpoint(cfg, hparams)
    except Exception:
        return None
    return None if checkpoint is None else run_folder_of(checkpoint)
