"""One training run per run folder: `<run folder>/.lock` holds the owner's PID and host from
the start of training to its end, so a second run into the same `hydra.run.dir` is refused
instead of mixing checkpoints and logs. A lock whose process has ended (a killed run) is
taken over with a warning."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ddpm_lightning.errors import ConfigError

LOCK_NAME = ".lock"


def owner_record() -> dict[str, object]:
    """What the lock file holds: this process's PID and the machine's host name."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


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


def write_lock(path: Path) -> bool:
    """Create the lock file holding this process; False when one exists already."""
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as lock:
        json.dump(owner_record(), lock)
    return True


def take_lock(folder: Path) -> Path:
    """Hold `folder`'s lock: refuse when a live process holds it (or one on another machine,
    which cannot be checked); take over, with a warning, one whose process has ended."""
    path = folder / LOCK_NAME
    if write_lock(path):
        return path
    owner = read_owner(path)
    pid, host = owner.get("pid"), owner.get("host")
    here = socket.gethostname()
    if isinstance(pid, int) and host == here and not is_alive(pid):
        print(f"warning: {path} was held by PID {pid}, which has ended; taking it over")
    elif isinstance(pid, int):
        where = "" if host == here else f" on {host}"
        raise ConfigError(
            f"{folder} is in use by the training run of PID {pid}{where}; wait for it to end "
            f"or set hydra.run.dir to another folder (delete {path} if that run is gone)"
        )
    else:
        print(f"warning: {path} names no owner; taking it over")
    path.unlink(missing_ok=True)
    if not write_lock(path):
        raise ConfigError(f"{folder} was just taken by another training run")
    return path


def release_lock(path: Path) -> None:
    """Remove the lock if this process still holds it."""
    if read_owner(path).get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextmanager
def run_lock(folder: Path) -> Iterator[Path]:
    """Hold `folder`'s lock for the `with` block."""
    path = take_lock(folder)
    try:
        yield path
    finally:
        release_lock(path)
