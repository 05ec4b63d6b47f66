"""What an exported folder may say about where things were: nothing of the exporting machine.

Its config and card travel to other machines, so a run's recorded overrides keep the recipe
and lose the places: overrides of where the run read and wrote (`paths.*`, `hydra.*`,
`out_dir`, `data.root`) are dropped, a checkpoint keeps its file name only, and any other
local path (absolute, under the home folder, or relative with two slashes or more: a Hub repo
id `user/repo` has one) keeps its last part. The name the card's examples load must be a
relative folder, a shipped name or a Hub repo id.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings.overrides import OVERRIDE

# Overrides of where a run read and wrote its files: how it ran on that machine, not its recipe.
PLACE_KEYS = ("paths.", "hydra.", "out_dir", "data.root")
CHECKPOINT_KEY = "ckpt_path"
# A path from the file system's root: /…, ~…, \\server\…, C:\… or C:/….
ROOTED = re.compile(r"^(?:[/~\\]|[A-Za-z]:[/\\])")


def is_local_path(value: str) -> bool:
    """Whether `value` is a path of this machine's file system, not a name or a repo id."""
    text = value.strip("'\"")
    return bool(ROOTED.match(text)) or text.startswith(("./", "../")) or text.count("/") >= 2


def last_part(value: str) -> str:
    """The file or folder name at the end of a path."""
    return PurePosixPath(value.strip("'\"").rstrip("/").replace("\\", "/")).name


def portable_override(override: str) -> str | None:
    """`override` without this machine's places: None to drop it (see the module)."""
    match = OVERRIDE.match(override)
    if match is None:
        return override
    key, value = match["key"], match["value"]
    if key.startswith(PLACE_KEYS):
        return None
    if key == CHECKPOINT_KEY or is_local_path(value):
        return f"{match['prefix']}{key}={last_part(value)}"
    return override


def portable_overrides(overrides: list[str] | None) -> list[str] | None:
    """`portable_override` of each of `overrides` (None stays None)."""
    if overrides is None:
        return None
    kept = (portable_override(override) for override in overrides)
    return [override for override in kept if override is not None]


def portable_record(record: dict[str, Any]) -> dict[str, Any]:
    """A run record (see sharing.export.run_record) with its training and evaluation overrides
    made portable."""
    portable = dict(record)
    for section in ("training", "evaluation"):
        entry = portable.get(section)
        if isinstance(entry, dict) and entry.get("overrides") is not None:
            portable[section] = {**entry, "overrides": portable_overrides(entry["overrides"])}
    return portable


def checked_name(name: str) -> str:
    """`name=` (what the card's examples load), refused when it is an absolute path."""
    text = str(name)
    if ROOTED.match(text):
        raise ConfigError(
            f"name={text} is a path of this machine, which the model card would show; pass a "
            "folder name relative to where readers run, a shipped name or a Hub repo id"
        )
    return text
