"""Nothing a user trained is lost: checkpoints on Ctrl-C / SIGTERM, and safe resumption."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.training.checkpoints import read_checkpoint


class LastCheckpoint(L.Callback):
    """`last.ckpt` holds the newest state whenever training stops.

    ModelCheckpoint saves at validation; this adds a save when training ends between
    validations (e.g. `trainer.max_steps` mid-epoch) and on Ctrl-C or SIGTERM, which Lightning
    turns into `KeyboardInterrupt` / `SIGTERMException` at a batch boundary. Other errors (e.g.
    a non-finite loss) save nothing, so the last good checkpoint stays.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def save(self, trainer: L.Trainer) -> Path:
        path = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        return path

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Trainer.__init__ sets fast_dev_run (in _init_debugging_flags) without declaring it.
        if not trainer.fast_dev_run:  # type: ignore[attr-defined]
            self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            path = self.save(trainer)
            rank_zero_info(
                f"interrupted at step {trainer.global_step}: saved {path}; "
                "resume with ckpt_path=last (or ckpt_path=PATH)"
            )


TRAINING_ONLY = frozenset({"diffusion.p_uncond", "diffusion.weighting", "diffusion.min_snr_gamma"})


def find_last_checkpoint(runs_root: Path) -> Path:
    """The newest `checkpoints/last.ckpt` below `runs_root` (runs and multiruns of a task)."""
    candidates = sorted(runs_root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise ConfigError(
            f"ckpt_path=last: no checkpoints/last.ckpt under {runs_root}; "
            "pass ckpt_path=PATH to a .ckpt file"
        )
    return candidates[-1]


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


def check_resume_checkpoint(path: Path, hparams: dict) -> None:
    """Refuse a file that is not a checkpoint, or whose model/schedule differ from `hparams`.

    Training-only settings (`TRAINING_ONLY`, e.g. the label-dropout rate) may change, and may be
    missing from checkpoints written before they existed.
    """
    saved = read_checkpoint(path, mmap=True)["hyper_parameters"]
    differences = [
        difference
        for group in ("model", "schedule", "diffusion", "data_shape")
        for difference in differing_keys(saved.get(group), hparams.get(group), group, TRAINING_ONLY)
    ]
    if differences:
        raise ConfigError(
            f"ckpt_path={path} does not match the requested config: {'; '.join(differences)}"
        )
