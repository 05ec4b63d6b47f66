"""User-facing errors: bad config or data ends in one line on stderr and exit code 1."""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class DDPMError(Exception):
    """An error the user can fix; its message names the key or file and the fix."""


class ConfigError(DDPMError, ValueError):
    """A config value is invalid."""


class DataError(DDPMError, OSError):
    """Data files are missing or corrupt."""


def import_optional(module: str, feature: str, extra: str) -> ModuleType:
    """`module`, imported; or a ConfigError saying that `feature` needs it and which extra of
    the package installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"{feature} needs {module}, which is not installed ({reason}): "
            f"pip install 'ddpm_lightning[{extra}]'"
        ) from None


def find_user_error(exc: BaseException | None) -> DDPMError | None:
    """The first `DDPMError` in `exc`'s chain (Hydra's `instantiate` wraps the original)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DDPMError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def report_errors(fn: F) -> F:
    """Turn a `DDPMError` raised by `fn` into `error: <message>` and exit 1.

    `HYDRA_FULL_ERROR=1` re-raises instead, for the full traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            user_error = find_user_error(exc)
            if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {user_error}", file=sys.stderr)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
