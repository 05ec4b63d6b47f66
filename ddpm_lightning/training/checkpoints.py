"""Write training checkpoints atomically, read them safely (`weights_only=True`) and rebuild
the `DiffusionModule`."""

from __future__ import annotations

import errno
import io
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ddpm_lightning.components import plain_settings
from ddpm_lightning.errors import ConfigError, DataError, DDPMError
from ddpm_lightning.training.module import MODULE_KEYS, DiffusionModule

TEMP_SUFFIX = ".tmp"
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def temp_files(path: Path) -> list[Path]:
    """Temporary files of saves of `path` (`.last.ckpt.<random>.tmp` beside it); one remains
    only when a save was killed mid-write."""
    return sorted(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"))


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename inside it: POSIX holds the directory entry
    as data too), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(data: bytes | memoryview, path: Path, chunk_bytes: int = 2**24) -> None:
    """`path` holds either its old content or all of `data`, never a part.

    Writes a temporary file in `path`'s own folder (so the final `os.replace` is a rename on
    one filesystem, never a copy), flushes and fsyncs it, renames it over `path` and fsyncs the
    folder. Any failure removes the temporary file; a full disk becomes a one-line `DataError`
    naming the folder. Stale temporary files of killed saves are removed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in temp_files(path):
        stale.unlink(missing_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with open(temp, "xb") as file:
            for start in range(0, len(data), chunk_bytes):
                file.write(data[start : start + chunk_bytes])
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            raise DataError(
                f"no space left in {path.parent} to write {path.name} "
                f"({len(data) / 2**20:.1f} MiB); free space there or set paths.log_dir to "
                f"another disk (the previous {path.name}, if any, is unchanged)"
            ) from None
        raise
    fsync_path(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO` with `write_atomically` for local paths.

    Lightning writes its temporary file with `mkstemp()` in `$TMPDIR` and moves it into place;
    across filesystems that move is a copy, so a full disk or a kill mid-copy leaves a
    half-written `last.ckpt` over the good one and a temporary file in `/tmp`. Remote URLs
    (`s3://`, ...) keep Lightning's fsspec transaction.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(buffer.getbuffer(), Path(path))


def read_checkpoint(ckpt_path: str | Path | None, mmap: bool = False) -> dict:
    """The checkpoint dict, loaded without running pickled code; one-line errors otherwise.

    Its hyperparameters name components, never code: known `_target_`s of earlier releases
    become component names and anything else that would select code is refused
    (`ddpm_lightning.components.plain_settings`).
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
    checkpoint["hyper_parameters"] = module_settings(
        checkpoint["hyper_parameters"], f"ckpt_path={path}", "hyper_parameters"
    )
    return checkpoint


def module_settings(hparams: Any, source: str, where: str = "") -> dict[str, Any]:
    """`hparams` of the file `source` as `DiffusionModule` arguments: a mapping of its keys
    only, every component named (`plain_settings`); one line naming the file and the key below
    `where` otherwise."""
    if not isinstance(hparams, dict):
        raise ConfigError(
            f"{source}: {where or 'the file'} is a {type(hparams).__name__}, not a mapping "
            "of settings"
        )

    def key(name: str) -> str:
        return f"{where}.{name[:80]}" if where else name[:80]

    unknown = sorted(str(name) for name in set(hparams) - set(MODULE_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: {key(unknown[0])} is not a setting of the model (it takes "
            f"{', '.join(MODULE_KEYS)})"
        )
    problem = settings_problem(hparams)
    if problem:
        name, why = problem
        raise ConfigError(f"{source}: {key(name)} {why}")
    return plain_settings(hparams, source, where)


def settings_problem(hparams: dict[str, Any]) -> tuple[str, str] | None:
    """(key, why) for the first module setting of the wrong form, or None: the model, schedule
    and diffusion are required (the objective the network was trained with included, never
    guessed), every section is a mapping, the data shape is (C, H, W) or (D,)."""
    for name in ("model", "schedule", "diffusion", "data_shape"):
        if hparams.get(name) is None:
            return name, "is missing: the file does not say how to rebuild the model"
    for name in ("model", "schedule", "diffusion", "optimizer", "lr_schedule"):
        value = hparams.get(name)
        if value is not None and not isinstance(value, dict):
            return name, f"is {type(value).__name__} {str(value)[:40]}, not a mapping"
    if "objective" not in hparams["diffusion"]:
        return "diffusion.objective", "is missing: the network's objective is never guessed"
    shape = hparams["data_shape"]
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) not in (1, 3)
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        return "data_shape", f"is {str(shape)[:40]}, not (C, H, W) of an image or (D,) of points"
    dataset = hparams.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        return "dataset", f"is {str(dataset)[:40]}, not a dataset's name"
    return None


def build_module(hparams: dict[str, Any], where: str) -> DiffusionModule:
    """The DiffusionModule of `module_settings`; a bad setting is one line naming `where`."""
    try:
        return DiffusionModule(**hparams)
    except DDPMError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{where} does not build a model ({reason})") from None


def some_names(keys: set[str]) -> str:
    """The first three of `keys`, sorted, and an ellipsis when there are more."""
    return ", ".join(sorted(keys)[:3]) + (" …" if len(keys) > 3 else "")


def weight_mismatches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """'' when `given` has exactly `expected`'s keys and shapes, else what differs (one line)."""
    missing, unexpected = expected.keys() - given.keys(), given.keys() - expected.keys()
    shapes = [
        f"{key} {tuple(given[key].shape)} instead of {tuple(expected[key].shape)}"
        for key in sorted(expected.keys() & given.keys())
        if given[key].shape != expected[key].shape
    ]
    problems = [f"{len(missing)} missing ({some_names(missing)})"] if missing else []
    problems += [f"{len(unexpected)} unexpected ({some_names(unexpected)})"] if unexpected else []
    problems += [f"{len(shapes)} of the wrong shape ({shapes[0]})"] if shapes else []
    return "; ".join(problems)


def load_weights(
    module: DiffusionModule,
    state_dict: Any,
    where: str,
    misfit: str = "its weights do not fit its settings' model",
) -> DiffusionModule:
    """`module` with `state_dict` loaded, in eval mode; one line naming `where` (and saying
    `misfit`) when the weights do not fit the module its settings built."""
    if not isinstance(state_dict, dict) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise ConfigError(f"{where}: its state_dict is not a mapping of tensors")
    problems = weight_mismatches(module.state_dict(), state_dict)
    if problems:
        raise ConfigError(f"{where}: {misfit}: {problems}")
    module.load_state_dict(state_dict)
    return module.eval()


def load_module(ckpt_path: str | Path | None) -> DiffusionModule:
    """The module stored in a checkpoint, on the CPU in eval mode."""
    checkpoint = read_checkpoint(ckpt_path)
    module = build_module(checkpoint["hyper_parameters"], f"ckpt_path={ckpt_path}")
    return load_weights(module, checkpoint["state_dict"], f"ckpt_path={ckpt_path}")
