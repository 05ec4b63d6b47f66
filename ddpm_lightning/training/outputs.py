"""Outputs written whole or not at all. A command's files (the sample command's grid.png,
samples.npz, reverse.gif, …; a model folder; the demo site) are one set: written into a new
folder beside `out_dir`, flushed to the disk, then swapped in for the old set, so a reader sees
the old set or the new one, never a mix, and a kill, a full disk or an error while writing
leaves the old set as it was.

A folder that holds nothing but the set is swapped whole: the old folder is renamed away, the
new one renamed in, the old one removed. In a folder that holds other files too (the command's
run folder with `.hydra/`, by default) the old set's entries are moved away and the new ones
moved in, one by one (a reader in that instant may see part of each); the other files stay.
SIGINT and SIGTERM wait until a swap has ended. A command killed in between (SIGKILL,
a power cut) leaves its folders beside `out_dir`, named `.<name>.new-<token>` (a set being
written, or the new set before the swap), `.<name>.old-<token>` (the old set, moved away) and
`.<name>.ready-<token>` (the new set, being moved in); the next command into `out_dir` finishes
that swap or undoes it (`recover`) before it writes anything.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.training.checkpoints import FULL_DISK, fsync_path
from ddpm_lightning.training.preflight import writable_folder
from ddpm_lightning.training.runlock import run_lock

NEW, READY, OLD = "new", "ready", "old"
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def sibling(folder: Path, phase: str, token: str) -> Path:
    """`.<name>.<phase>-<token>` beside `folder`: one of the folders of a swap."""
    return folder.parent / f".{folder.name}.{phase}-{token}"


def leftover_tokens(folder: Path) -> list[str]:
    """The tokens of the swaps whose folders lie beside `folder`."""
    pattern = re.compile(rf"\.{re.escape(folder.name)}\.(?:{NEW}|{READY}|{OLD})-(\w+)")
    matches = (pattern.fullmatch(path.name) for path in folder.parent.iterdir())
    return sorted({match.group(1) for match in matches if match})


def is_full_disk(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from, is a full disk or an exceeded quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in FULL_DISK:
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def refuse_mount_point(folder: Path, shown: str) -> None:
    """A mount point cannot be swapped: its new set would be written on another disk."""
    if os.path.ismount(folder):
        raise ConfigError(
            f"{shown} is a mount point, and outputs are written beside their folder and renamed "
            f"into it, which cannot cross disks; write into a folder inside it, e.g. "
            f"{folder / 'outputs'}"
        )


def sync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to the disk, so a swap never puts in data
    still held in memory."""
    for path in [*folder.rglob("*"), folder]:
        if not path.is_symlink():
            fsync_path(path)


def move_entries(source: Path, target: Path) -> None:
    """Rename every entry of `source` into `target` (one filesystem: no copies)."""
    target.mkdir(exist_ok=True)
    for entry in sorted(source.iterdir()):
        os.rename(entry, target / entry.name)


def put_back(old: Path, folder: Path) -> None:
    """Return an old set moved away to `folder`: the folder itself, or its entries."""
    if folder.exists():
        move_entries(old, folder)
        old.rmdir()
    else:
        os.rename(old, folder)


def recover(folder: Path) -> None:
    """Finish or undo the swaps a killed command left beside `folder`: a new set marked ready
    is moved in; an old set moved away before the new one was ready is put back; a set being
    written is removed."""
    for token in leftover_tokens(folder):
        new, ready, old = (sibling(folder, phase, token) for phase in (NEW, READY, OLD))
        if ready.exists():
            move_entries(ready, folder)
            ready.rmdir()
        elif old.exists() and (new.exists() or not folder.exists()):
            put_back(old, folder)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(new, ignore_errors=True)


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait for the end of the block, then act as they would have; outside
    the main thread (where Python sets no handlers) they act at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda received, _: caught.append(received))
        for signum in HELD_SIGNALS
    }
    try:
        yield
    finally:
        for held, handler in previous.items():
            signal.signal(held, signal.SIG_DFL if handler is None else handler)
        for received in caught:
            signal.raise_signal(received)


def swapped_whole(folder: Path, names: Collection[str]) -> bool:
    """Whether `folder` may be swapped whole: it holds nothing but entries of `names`, and is
    not the working directory or a folder above it."""
    cwd = Path.cwd().resolve()
    if folder == cwd or folder in cwd.parents:
        return False
    return all(entry.name in names for entry in folder.iterdir())


def swap_entries(folder: Path, names: Collection[str], new: Path, token: str) -> None:
    """Move the old set's entries (those of `names`) away, mark the new set ready, move its
    entries in."""
    old, ready = sibling(folder, OLD, token), sibling(folder, READY, token)
    old.mkdir()
    for name in names:
        if os.path.lexists(folder / name):
            os.rename(folder / name, old / name)
    fsync_path(folder)
    os.rename(new, ready)
    move_entries(ready, folder)
    ready.rmdir()


def swap_in(folder: Path, names: Collection[str], new: Path, token: str) -> None:
    """Put the set in `new` in place of `folder`'s old one; a failure part-way is finished or
    undone before the error goes on."""
    with signals_held():
        try:
            if not folder.exists() or swapped_whole(folder, names):
                if folder.exists():
                    os.rename(folder, sibling(folder, OLD, token))
                os.rename(new, folder)
            else:
                swap_entries(folder, names, new, token)
            fsync_path(folder.parent)
        except Exception:
            recover(folder)
            raise
        shutil.rmtree(sibling(folder, OLD, token), ignore_errors=True)


# Writes one output file at the path it is given.
Writer = Callable[[Path], None]


def write_outputs(
    out_dir: Path, names: Collection[str], outputs: dict[str, Writer]
) -> dict[str, Path]:
    """Write `outputs` (file name → writer) into `out_dir` as one set in place of the entries
    `names` of an earlier run (`replacing`), print each path and return them."""
    with replacing(out_dir, names) as folder:
        for name, write in outputs.items():
            write(folder / name)
    files = {name: out_dir / name for name in outputs}
    for path in files.values():
        print(f"wrote {path}")
    return files


@contextmanager
def replacing(folder: str | Path, names: Collection[str]) -> Iterator[Path]:
    """A new, empty folder beside `folder` for the block to write a set of outputs into (only
    entries named in `names`); leaving the block puts it in place of the old set, the entries
    of `names` in `folder`. An error in the block removes the new folder and leaves the old
    set as it was; a full disk is then one line naming `folder`."""
    target = Path(folder).resolve()
    refuse_mount_point(target, str(folder))
    target.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    new = sibling(target, NEW, token)
    try:
        new.mkdir()
        yield new
        sync_tree(new)
    except BaseException as exc:
        shutil.rmtree(new, ignore_errors=True)
        if is_full_disk(exc):
            raise DataError(
                f"no space left to write the new files of {folder}; free space on its disk or "
                "pass another out_dir (the files it holds are unchanged)"
            ) from None
        raise
    swap_in(target, names, new, token)


@contextmanager
def claimed(folder: str | Path, command: str) -> Iterator[Path]:
    """`out_dir` for the block: checked to be writable (and the folder beside it), locked for
    `command` so a second command into it is refused, and cleared of the swaps a killed command
    left. In a distributed run only the first process, the one that writes, locks it."""
    out_dir = writable_folder(folder, "out_dir", beside=True)
    refuse_mount_point(out_dir.resolve(), f"out_dir={out_dir}")
    if getattr(rank_zero_only, "rank", 0) != 0:
        yield out_dir
        return
    with run_lock(out_dir, command):
        recover(out_dir.resolve())
        yield out_dir
