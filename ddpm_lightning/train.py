"""`python -m ddpm_lightning.train`: train a diffusion model from the Hydra configs in `conf/`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    ThroughputMonitor,
    WeightAveraging,
)
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from ddpm_lightning.config.compose import (
    checked_command_line,
    command_output,
    command_settings,
    config_dir,
    is_verbose,
)
from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.data.registry import DatasetRecord
from ddpm_lightning.distill import ProgressiveDistillation
from ddpm_lightning.errors import ConfigError, find_user_error, report_errors
from ddpm_lightning.settings.overrides import set_on_the_command_line
from ddpm_lightning.sharing.pretrained import chosen_guide, load_guide, load_model, model_folder
from ddpm_lightning.training.callbacks import TestAnnouncement
from ddpm_lightning.training.loggers import FitLogInterval, finish_loggers
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.preflight import writable_folder
from ddpm_lightning.training.runinfo import (
    build_module,
    module_arguments,
    resume_checkpoint,
    write_run_info,
)
from ddpm_lightning.training.runlock import LOCK_NAME, run_lock
from ddpm_lightning.training.safety import LastCheckpoint

# The datamodule serves whole in-memory batches, so worker processes would only add overhead.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
LOGGER_ONLY_CALLBACKS = (LearningRateMonitor, ThroughputMonitor)

# The datamodule resumes mid-epoch through its own state_dict (InMemoryDataModule.state_dict),
# which Lightning's check for a resumable *loader* does not see.
warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")

# FitLogInterval lowers log_every_n_steps to the batches of an epoch after Lightning warns.
warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")

# Lightning 2.6 calls a pytree API that torch 2.14 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*")

# What Lightning says of a resumed run's own checkpoints, which it continues in their folder.
RESUMED_FOLDER = r"Checkpoint directory .* exists and is not empty"

# The files Hydra writes into `<run folder>/.hydra/` before the command starts.
HYDRA_RECORDS = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})


def instantiate_named(group: DictConfig | None) -> list[Any]:
    """Instantiate each `_target_` entry of a named group (callbacks, loggers); skip nulls."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def check_callback_samplers(group: DictConfig | None, module: DiffusionModule) -> None:
    """Build each callback's sampler for `module` once before training, so a setting its
    sampler does not take stops the run in one line naming the key, not at the first
    validation."""
    for name, entry in (group or {}).items():
        if isinstance(entry, DictConfig) and entry.get("sampler") is not None:
            try:
                module.make_sampler(instantiate(entry.sampler), progress=False)
            except ConfigError as exc:
                raise ConfigError(f"callbacks.{name!s}.{exc}") from None


def order_callbacks(callbacks: list[L.Callback]) -> list[L.Callback]:
    """Weight averaging (EMA) last: Lightning calls callbacks in order, so the sample-grid and
    FLD callbacks run at validation end while the averaged weights are still swapped in."""
    return sorted(callbacks, key=lambda callback: isinstance(callback, WeightAveraging))


def without_checkpoints(callbacks: list[L.Callback]) -> list[L.Callback]:
    """`callbacks` less those that save checkpoints, for `trainer.fast_dev_run` smoke tests,
    so that `ckpt_path=last` never resumes one: Lightning 2.6's `ModelCheckpoint` still writes
    `last.ckpt` at the end of a fast_dev_run when `save_last` is set."""
    return [c for c in callbacks if not isinstance(c, (ModelCheckpoint, LastCheckpoint))]


def shown_callbacks(cfg: DictConfig, callbacks: list[L.Callback]) -> list[L.Callback]:
    """`callbacks`, less the model summary table unless `verbose` is true."""
    if is_verbose(cfg):
        return callbacks
    return [c for c in callbacks if not isinstance(c, ModelSummary)]


def display_flags(cfg: DictConfig, callbacks: list[L.Callback]) -> dict[str, bool]:
    """Trainer flags so that `callbacks.rich_progress_bar=null` and `callbacks.model_summary=null`
    mean none at all: Lightning otherwise adds its own TQDM bar and summary. A value set in
    `trainer.` wins."""
    flags = {
        "enable_progress_bar": any(isinstance(c, ProgressBar) for c in callbacks),
        "enable_model_summary": any(isinstance(c, ModelSummary) for c in callbacks),
    }
    return {key: value for key, value in flags.items() if key not in cfg.trainer}


def resolve_ckpt_path(cfg: DictConfig, module: DiffusionModule) -> str | None:
    """The checkpoint to resume from, checked to match the module (`resume_checkpoint`)."""
    path = resume_checkpoint(cfg, dict(module.hparams))
    return None if path is None else str(path)


def last_checkpoint(callbacks: list[L.Callback]) -> Path | None:
    """The checkpoint of the run's final state: the `last.ckpt` of `LastCheckpoint` or
    `ModelCheckpoint`, else the latter's best; None when the run wrote none."""
    candidates = [
        Path(callback.dirpath) / "last.ckpt"
        for callback in callbacks
        if isinstance(callback, LastCheckpoint) and callback.dirpath
    ]
    candidates += [
        Path(path)
        for callback in callbacks
        if isinstance(callback, ModelCheckpoint)
        for path in (callback.last_model_path, callback.best_model_path)
        if path
    ]
    return next((path for path in candidates if path.is_file()), None)


def final_line(output_dir: Path, callbacks: list[L.Callback]) -> str:
    """`run folder: DIR (checkpoint: …)`, the checkpoint's path inside the folder when it is
    there."""
    folder = output_dir.resolve()
    checkpoint = last_checkpoint(callbacks)
    if checkpoint is None:
        return f"run folder: {folder} (no checkpoint written)"
    checkpoint = checkpoint.resolve()
    shown = checkpoint.relative_to(folder) if checkpoint.is_relative_to(folder) else checkpoint
    return f"run folder: {folder} (checkpoint: {shown})"


def train(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> dict[str, float]:
    """Fit the model described by `cfg`, then (with `test: true`) test it; return the final
    logged metrics (e.g. `val/loss`, `test/loss`).

    The run folder is checked to be writable, printed and locked first (by the first process of
    a distributed run), so a second run into it is refused. `extra_callbacks` are added to the
    configured ones (for notebooks and tests).
    """
    output_dir = writable_folder(cfg.paths.output_dir, "paths.output_dir")
    if getattr(rank_zero_only, "rank", 0) != 0:
        return fit_model(cfg, extra_callbacks)
    print(f"run folder: {output_dir.resolve()}", flush=True)
    with run_lock(output_dir):
        return fit_model(cfg, extra_callbacks)


def load_teacher(source: str) -> DiffusionModule:
    """The teacher `distill.teacher` names: a .ckpt of a training run or of an earlier round,
    else what `pretrained=` takes (a shipped model, a model folder or a Hub repo id)."""
    try:
        return load_model(source, None) if source.endswith(".ckpt") else load_model(None, source)
    except ConfigError as exc:
        raise ConfigError(f"distill.teacher: {exc}") from None


def chosen_teacher_guide(distill: dict[str, Any]) -> str | None:
    """The model that autoguides the teacher of `distill` (the raw `distill:` settings): its
    `guide`, else the guide the `teacher` folder ships unless `guidance` distils classifier-free
    guidance; None with guide=false, a .ckpt teacher or a folder without one."""
    guide, teacher = distill.get("guide"), str(distill["teacher"])
    if guide is not None:
        return chosen_guide(guide, None)
    if distill.get("guidance") is not None or teacher.endswith(".ckpt"):
        return None
    try:
        return chosen_guide(None, model_folder(teacher))
    except ConfigError as exc:
        raise ConfigError(f"distill.teacher: {exc}") from None


def load_teacher_guide(guide: str, teacher: DiffusionModule) -> DiffusionModule:
    """The weaker model `guide` names (a .ckpt, or what pretrained= takes) for `teacher`'s data."""
    try:
        return load_guide(guide, teacher)
    except ConfigError as exc:
        raise ConfigError(f"distill.{exc}") from None


def follow_data_classes(cfg: DictConfig, datamodule: Any) -> None:
    """A conditional model (model.num_classes set) gets as many classes as the data has
    (data=shapes: 12, a folder with data.labels=folders: its class folders), unless the command
    line sets model.num_classes (then labels beyond it stop training in one line); data
    without labels refuses it in one line."""
    if cfg.model.get("num_classes") is None or set_on_the_command_line("model.num_classes"):
        return
    classes = datamodule.num_classes
    if classes is None:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} needs labelled data, but this data has "
            "none; set data.labels=folders (image_folder) or data.label_column (hf), or use "
            "an unconditional model (model=unet)"
        )
    with open_dict(cfg):
        cfg.model.num_classes = int(classes)


def build_fit_module(
    cfg: DictConfig, data_shape: tuple[int, ...], record: DatasetRecord | None = None
) -> DiffusionModule:
    """The module to fit: a DiffusionModule, or with a `distill:` block (experiment=distill)
    one round of ProgressiveDistillation from the teacher it names, autoguided by the guide it
    names or the teacher's folder ships (`chosen_teacher_guide`)."""
    if cfg.get("distill") is None:
        return build_module(cfg, data_shape, record)
    distill = cast(dict, OmegaConf.to_container(cfg.distill, resolve=True))
    teacher = load_teacher(str(distill["teacher"]))
    source = chosen_teacher_guide(distill)
    guide = None
    if source is not None:
        guide = load_teacher_guide(source, teacher)
        print(f"teacher: autoguided by {source} (distill.guide=false distils it alone)", flush=True)
    resolved = {**distill, "guide": False if source is None else source}
    return ProgressiveDistillation(
        teacher, resolved, **module_arguments(cfg, data_shape, record), guide=guide
    )


def fit_model(cfg: DictConfig, extra_callbacks: list[L.Callback] | None) -> dict[str, float]:
    """`train` inside the checked, locked run folder."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    write_run_info(output_dir, Path(cfg.paths.root_dir), resumed=cfg.get("ckpt_path") is not None)
    datamodule = instantiate(cfg.data)
    follow_data_classes(cfg, datamodule)
    module = build_fit_module(cfg, datamodule.data_shape, datamodule.record)
    ckpt_path = resolve_ckpt_path(cfg, module)
    check_callback_samplers(cfg.get("callbacks"), module)
    callbacks = order_callbacks(
        shown_callbacks(cfg, instantiate_named(cfg.get("callbacks"))) + list(extra_callbacks or [])
    )
    if cfg.get("test"):
        callbacks.append(TestAnnouncement())
    loggers = instantiate_named(cfg.get("logger"))
    if loggers:
        callbacks.append(FitLogInterval())
    else:  # `~logger`: these monitors would have nowhere to write and refuse to run.
        callbacks = [c for c in callbacks if not isinstance(c, LOGGER_ONLY_CALLBACKS)]
    smoke_test = bool(cfg.trainer.get("fast_dev_run"))
    if smoke_test:
        callbacks = without_checkpoints(callbacks)
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for logger in loggers:
            logger.log_hyperparams(resolved)
        trainer: L.Trainer = instantiate(
            cfg.trainer,
            callbacks=callbacks,
            logger=loggers or False,
            **({"enable_checkpointing": False} if smoke_test else {}),
            **display_flags(cfg, callbacks),
        )
        with warnings.catch_warnings():
            if ckpt_path is not None:
                warnings.filterwarnings("ignore", message=RESUMED_FOLDER)
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        if cfg.get("test") and not trainer.interrupted:
            metrics.update(run_test_split(trainer, module, datamodule, output_dir))
        if trainer.is_global_zero:
            print(final_line(output_dir, callbacks), flush=True)
    except SIGTERMException:
        raise SystemExit(128 + signal.SIGTERM) from None
    finally:
        finish_loggers(loggers)
    return metrics


def run_test_split(
    trainer: L.Trainer, module: DiffusionModule, datamodule: Any, output_dir: Path
) -> dict[str, float]:
    """`trainer.test` of the trained weights (the EMA's, which `fit` leaves in the module):
    `test/loss` on the test split, and `test/fld` when `callbacks.fld.test_num_samples` > 0.
    The first process prints them and writes them to `test_metrics.json` in the run folder."""
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {key: float(value) for key, value in results.items()}
    if trainer.is_global_zero:
        (output_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(results_lines(metrics), flush=True)
    return metrics


def results_lines(metrics: dict[str, float]) -> str:
    """The test pass's metrics, one a line under a heading naming their file."""
    width = max(map(len, metrics), default=0)
    lines = [f"  {key:<{width}}  {value:.6g}" for key, value in sorted(metrics.items())]
    return "\n".join(["test results (test_metrics.json):", *lines])


def fit(cfg: DictConfig, extra_callbacks: list[L.Callback] | None = None) -> float | None:
    """Check `cfg` against the schema, train; return `optimized_metric` for sweepers (None
    when it was never logged)."""
    validate_config(command_settings(cfg), "train")
    metrics = train(cfg, extra_callbacks)
    metric = cfg.get("optimized_metric")
    return metrics[metric] if metric and metric in metrics else None


class TrainingStarted(L.Callback):
    """Notes that training has begun: set up, data loaded, sanity check passed."""

    def __init__(self) -> None:
        self.started = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True


def holds_only_hydra_records(run_dir: Path) -> bool:
    """Whether `run_dir` holds nothing but what Hydra wrote as this run began: its records
    (`.hydra/`) and an empty log (`train.log`)."""
    hydra_config = HydraConfig.get()
    log = run_dir / f"{hydra_config.job.name}.log"
    records = run_dir / str(hydra_config.output_subdir)
    if not run_dir.is_dir() or not set(run_dir.iterdir()) <= {log, records}:
        return False
    empty_log = not log.exists() or (log.is_file() and log.stat().st_size == 0)
    only_records = not records.exists() or (
        records.is_dir() and {entry.name for entry in records.iterdir()} <= HYDRA_RECORDS
    )
    return empty_log and only_records


@contextmanager
def removed_unless_trained(run_dir: Path, started: TrainingStarted) -> Iterator[None]:
    """Remove the run folder Hydra made when the block fails before training starts (missing
    data, a bad setting, a model that cannot be built), so failed starts leave no empty run
    folders: only when, as the run began, it held nothing but Hydra's records of this run, and
    no other run holds its lock now."""
    removable = getattr(rank_zero_only, "rank", 0) == 0 and holds_only_hydra_records(run_dir)
    try:
        yield
    except BaseException as exc:
        succeeded = isinstance(exc, SystemExit) and exc.code in (0, None)
        held = (run_dir / LOCK_NAME).exists()
        if removable and not succeeded and not started.started and not held:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


class JobFailed(CompactHydraException):
    """A sweep job's user error, already printed as its `error: job N:` line: Hydra shows this
    short note instead of a traceback, runs the other jobs and exits 1."""


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Hydra entry point. A user error ends a single run with one line and exit 1 (a run that
    fails before training starts removes the run folder Hydra made for it,
    `removed_unless_trained`); in a multirun it is printed for its job and passed on to Hydra,
    which runs the other jobs and exits 1 at the end. What the job prints also goes to its
    `train.log` (`command_output`)."""
    with command_output(cfg):
        hydra_config = HydraConfig.get()
        if hydra_config.mode != RunMode.MULTIRUN:
            started = TrainingStarted()
            with removed_unless_trained(Path(hydra_config.runtime.output_dir), started):
                return report_errors(fit)(cfg, [started])
        try:
            return fit(cfg)
        except Exception as exc:
            user_error = find_user_error(exc)
            if user_error is None:
                raise
            job = hydra_config.job.num
            print(f"error: job {job}: {user_error}", file=sys.stderr)
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            raise JobFailed(f"job {job} stopped by the error above") from None


main = checked_command_line(hydra_main)


if __name__ == "__main__":
    main()
