"""One command per folder: a lock file holds the owner's PID and host from the start of the
work to its end, so a second run into the same folder is refused instead of mixing files. A
training run locks its run folder (`<run folder>/.lock`); the sample, evaluate, export and demo
commands lock their `out_dir` beside it (`.<name>.lock`), as that folder is swapped whole. A
lock whose process has ended (a killed run) is taken over with a warning."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ddpm_lightning.errors import ConfigError

LOCK_NAME = ".lock"


def output_lock_path(folder: Path) -> Path:
    """Where the lock of a command's `out_dir` lives: beside it, so swapping the folder in
    whole never moves the lock."""
    folder = folder.resolve()
    return folder.parent / f".{folder.name}{LOCK_NAME}"


def owner_record(command: str | None = None) -> dict[str, object]:
    """What the lock file holds: this process's PID, the machine's host name and, for an
    out_dir, the command."""
    return {"pid": os.getpid(), "host": socket.gethostname()} | (
        {"command": command} if command else {}
    )


def read_owner(path: Path) -> dict[str, object]:
    """The lock's owner, or {} when the file is gone or unreadable (a half-written lock)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def is_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_lock(path: Path, command: str | None = None) -> bool:
    """Create the lock file holding this process; False when one exists already."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as lock:
        json.dump(owner_record(command), lock)
    return True


def in_use(folder: Path, path: Path, owner: dict[str, object], command: str | None) -> str:
    """The one line refusing `folder`, held by `owner`: a training run's, or `command`'s."""
    host = owner.get("host")
    where = "" if host == socket.gethostname() else f" on {host}"
    if command is None:
        return (
            f"{folder} is in use by the training run of PID {owner['pid']}{where}; wait for it "
            f"to end or set hydra.run.dir to another folder (delete {path} if that run is gone)"
        )
    holder = f"the {owner['command']} command" if owner.get("command") else "another command"
    return (
        f"out_dir={folder} is in use by {holder} of PID {owner['pid']}{where}; wait for it to "
        f"end or pass another out_dir (delete {path} if that command is gone)"
    )


def take_lock(folder: Path, command: str | None = None) -> Path:
    """Hold `folder`'s lock (a training run's, or with `command` an out_dir's): refuse when a
    live process holds it (or one on another machine, which cannot be checked); take over,
    with a warning, one whose process has ended."""
    path = folder / LOCK_NAME if command is None else output_lock_path(folder)
    if write_lock(path, command):
        return path
    owner = read_owner(path)
    pid = owner.get("pid")
    if isinstance(pid, int) and owner.get("host") == socket.gethostname() and not is_alive(pid):
        print(f"warning: {path} was held by PID {pid}, which has ended; taking it over")
    elif isinstance(pid, int):
        raise ConfigError(in_use(folder, path, owner, command))
    elif path.is_dir():
        raise ConfigError(f"{path} is a folder where the lock file belongs; remove it")
    else:
        print(f"warning: {path} names no owner; taking it over")
    path.unlink(missing_ok=True)
    if not write_lock(path, command):
        other = "training run" if command is None else "command"
        raise ConfigError(f"{folder} was just taken by another {other}")
    return path


def release_lock(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    if read_owner(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(folder: Path, command: str | None = None) -> Iterator[Path]:
    """Hold `folder`'s lock for the `with` block (an out_dir's with `command`)."""
    path = take_lock(folder, command)
    try:
        yield path
    finally:
        release_lock(path)
