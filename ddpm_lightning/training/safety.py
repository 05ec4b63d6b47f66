"""Nothing a user trained is lost: checkpoints on Ctrl-C / SIGTERM, and safe resumption."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.components.defaults import class_defaults, components
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.checkpoints import read_checkpoint
from ddpm_lightning.training.module import NonFiniteLossError


def is_smoke_test(trainer: L.Trainer) -> bool:
    """`trainer.fast_dev_run` (true or a number of batches): such runs write no checkpoint."""
    # Trainer.__init__ sets fast_dev_run (in _init_debugging_flags) without declaring it.
    return bool(trainer.fast_dev_run)  # type: ignore[attr-defined]


class LastCheckpoint(L.Callback):
    """`last.ckpt` holds the newest state whenever training stops.

    ModelCheckpoint saves at validation; this adds a save when training ends between
    validations (e.g. `trainer.max_steps` mid-epoch), on Ctrl-C or SIGTERM, which Lightning
    turns into `KeyboardInterrupt` / `SIGTERMException` at a batch boundary, and on any other
    error of a single-process run once it has taken a step (a failing callback, a full disk), so
    a crash late in an epoch loses nothing. A non-finite loss saves nothing (resuming would
    meet it again), nor do weights that are no longer finite: the last good checkpoint stays.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def save(self, trainer: L.Trainer) -> Path:
        path = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        return path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_smoke_test(trainer):
            self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        if is_smoke_test(trainer):
            return
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            path = self.save(trainer)
            rank_zero_info(
                f"interrupted at step {trainer.global_step}: saved {path}; "
                "resume with ckpt_path=last (or ckpt_path=PATH)"
            )
        elif crash_worth_saving(trainer, pl_module, exception):
            try:
                path = self.save(trainer)
            except Exception as error:
                rank_zero_info(f"stopped by an error, and saving last.ckpt failed too: {error}")
                return
            rank_zero_info(
                f"stopped by {type(exception).__name__} at step {trainer.global_step}: saved "
                f"{path}; fix the cause, then resume with ckpt_path=last"
            )


def crash_worth_saving(trainer: L.Trainer, pl_module: L.LightningModule, exception) -> bool:
    """An error other than a non-finite loss, in a one-process run past step 0, with finite
    weights: its state is worth resuming (other processes of a DDP run cannot join the save)."""
    if isinstance(exception, NonFiniteLossError) or trainer.world_size > 1:
        return False
    if trainer.global_step == 0 or trainer.state.fn != "fit":
        return False
    return all(torch.isfinite(p).all() for p in pl_module.parameters())


TRAINING_ONLY = frozenset(
    {
        "diffusion.p_uncond",
        "diffusion.weighting",
        "diffusion.min_snr_gamma",
        "diffusion.sigma_data",
        "diffusion.noise_levels",
        "diffusion.p_mean",
        "diffusion.p_std",
        "diffusion.noise_coupling",
    }
)


class UnreadableRecord(Exception):
    """A run's `.hydra/*.yaml` exists but cannot be read (truncated, not YAML)."""


def run_record(checkpoint: Path, name: str) -> Any:
    """`<run>/.hydra/<name>.yaml` that Hydra recorded for the run that wrote `checkpoint`
    (beside `<run>/checkpoints/`), or None when there is none."""
    path = checkpoint.parent.parent / ".hydra" / f"{name}.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as exc:
        raise UnreadableRecord(f"unreadable .hydra/{name}.yaml") from exc


def run_config(checkpoint: Path) -> DictConfig | None:
    """The config Hydra recorded for the run that wrote `checkpoint`, or None."""
    config = run_record(checkpoint, "config")
    return config if isinstance(config, DictConfig) else None


def job_overrides(overrides: Any) -> list[str]:
    """A sweep job's command-line overrides without `ckpt_path=` (which a resumed job adds),
    sorted: what tells a sweep's jobs apart."""
    return sorted(
        str(o) for o in overrides or [] if not str(o).lstrip("+~").startswith("ckpt_path=")
    )


def why_not_resumable(
    path: Path, task_name: str | None, hparams: dict | None, overrides: list[str] | None = None
) -> str | None:
    """Why `path` must not be picked by `ckpt_path=last` (None: it may): written by a
    fast_dev_run smoke test, a run of another `task_name` or (for a sweep job, `overrides`
    given) another job (from its run's records), not loadable, or with a model/schedule
    differing from `hparams` (None: any model)."""
    try:
        config = run_config(path)
        recorded = run_record(path, "overrides") if overrides is not None else None
    except UnreadableRecord as exc:
        return str(exc)
    if overrides is not None and job_overrides(recorded) != job_overrides(overrides):
        return "another job of the sweep"
    if config is not None:
        if OmegaConf.select(config, "trainer.fast_dev_run", default=False):
            return "a fast_dev_run smoke test"
        recorded_task = config.get("task_name")
        if task_name is not None and recorded_task not in (None, task_name):
            return f"task_name={recorded_task}"
    try:
        saved = read_checkpoint(path, mmap=True)["hyper_parameters"]
    except ConfigError:
        return "not a loadable checkpoint"
    if hparams is None:
        return None
    differences = config_differences(saved, hparams)
    return f"different {', '.join(d.split(' ')[0] for d in differences)}" if differences else None


def find_last_checkpoint(
    runs_root: Path,
    task_name: str | None = None,
    hparams: dict | None = None,
    overrides: list[str] | None = None,
) -> Path:
    """The newest `checkpoints/last.ckpt` below `runs_root` (runs and multiruns of a task)
    that `why_not_resumable` accepts (for a sweep job, one written by the job of the same
    `overrides`); prints one line naming it and what was skipped."""
    candidates = sorted(runs_root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(
            f"ckpt_path=last: no checkpoints/last.ckpt under {runs_root}; "
            "pass ckpt_path=PATH to a .ckpt file"
        )
    skipped: list[str] = []
    for path in reversed(candidates):
        reason = why_not_resumable(path, task_name, hparams, overrides)
        if reason is None:
            note = f" (skipped {len(skipped)} newer: {'; '.join(skipped)})" if skipped else ""
            rank_zero_only(print)(f"ckpt_path=last: using {path}{note}")
            return path
        skipped.append(f"{path.parent.parent.name}: {reason}")
    raise ConfigError(
        f"ckpt_path=last: none of the {len(candidates)} checkpoints/last.ckpt under {runs_root} "
        f"fits ({'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''}); "
        "pass ckpt_path=PATH to a .ckpt file"
    )


def differing_keys(
    saved: object, requested: object, prefix: str, ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Dotted keys whose values differ between two nested dicts, except those in `ignore`."""
    if isinstance(saved, dict) and isinstance(requested, dict):
        return [
            k
            for key in sorted(set(saved) | set(requested))
            if f"{prefix}.{key}" not in ignore
            for k in differing_keys(saved.get(key), requested.get(key), f"{prefix}.{key}", ignore)
        ]
    if isinstance(saved, (list, tuple)) and isinstance(requested, (list, tuple)):
        saved, requested = list(saved), list(requested)
    return (
        [] if saved == requested else [f"{prefix} ({saved!r} in the checkpoint, {requested!r} now)"]
    )


def with_defaults(settings: object, kind: str) -> object:
    """Settings `{name: …, …}` of a `kind` component with those left out at its defaults
    (`class_defaults`), so that a checkpoint written before a setting existed
    (model.guidance_embedding, schedule.log_snr_shift) matches."""
    if not isinstance(settings, dict) or settings.get("name") not in components(kind):
        return settings
    return {**class_defaults(kind, settings["name"]), **settings}


def with_group_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Hyperparameters `config` with their model and schedule settings completed by
    `with_defaults`, so that files of earlier releases compare with today's settings."""
    return {
        **config,
        "model": with_defaults(config.get("model"), "model"),
        "schedule": with_defaults(config.get("schedule"), "schedule"),
    }


def config_differences(saved: dict, hparams: dict) -> list[str]:
    """The model, schedule, objective and data-shape keys differing between a checkpoint's
    hyperparameters and `hparams`, training-only settings (`TRAINING_ONLY`) aside."""
    saved, hparams = with_group_defaults(saved), with_group_defaults(hparams)
    return [
        difference
        for group in ("model", "schedule", "diffusion", "data_shape", "dataset")
        for difference in differing_keys(saved.get(group), hparams.get(group), group, TRAINING_ONLY)
    ]


def check_resume_checkpoint(path: Path, hparams: dict) -> None:
    """Refuse a file that is not a checkpoint, or whose model/schedule differ from `hparams`.

    Training-only settings (`TRAINING_ONLY`, e.g. the label-dropout rate) may change, and may be
    missing from checkpoints written before they existed.
    """
    differences = config_differences(read_checkpoint(path, mmap=True)["hyper_parameters"], hparams)
    if differences:
        raise ConfigError(
            f"ckpt_path={path} does not match the requested config: {'; '.join(differences)}"
        )
