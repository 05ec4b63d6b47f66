"""The console scripts `ddpm-<command>`: shell completion (`-sc`) and `--help` answered by Hydra
without importing torch, so a TAB press takes a fraction of a second; anything else runs
`ddpm_lightning.<command>`'s own main."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from argparse import Namespace
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from string import Template
from typing import Any

import yaml
from hydra import initialize_config_dir
from hydra._internal.hydra import Hydra
from hydra._internal.utils import get_args_parser
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm_lightning.config.location import PACKAGE_DIR, config_dir

COMMANDS = ("train", "sample", "evaluate", "export", "demo", "classifier", "edit")
SCHEMA_GROUP = "schema"


def main() -> Any:
    """Run the command this console script is named after (`ddpm-train`: train)."""
    command = Path(sys.argv[0]).name.removeprefix("ddpm-")
    if command not in COMMANDS:
        names = ", ".join(f"ddpm-{name}" for name in COMMANDS)
        raise SystemExit(f"error: {sys.argv[0]} is none of the console scripts {names}")
    args = get_args_parser().parse_args(sys.argv[1:])
    if not answered_lightly(command, args):
        return importlib.import_module(f"ddpm_lightning.{command}").main()
    return None


def answered_lightly(command: str, args: Namespace) -> bool:
    """Answer `--help` or `-sc` as Hydra would, with the schemas from the cache; False when
    the command itself must answer: other flags, or a config that needs its resolvers (e.g.
    the value of `trainer.precision=`), or arguments Hydra refuses (the command says why)."""
    try:
        if args.help and not args.resolve:
            show_help(command, args)
        elif args.shell_completion and not (args.run or args.multirun or args.cfg or args.info):
            complete(command, args.overrides)
        else:
            return False
    except (HydraException, OmegaConfBaseException, ValueError):
        return False
    return True


def show_help(command: str, args: Namespace) -> None:
    """The template of conf/hydra/help/<command>.yaml with Hydra's flags for $FLAGS_HELP, the
    only placeholder it has: Hydra's app help would first list every config group (a second
    of work) for placeholders the templates do not use."""
    store_schemas()
    with hydra_for(command) as hydra:
        cfg = hydra.compose_config(command, args.overrides, run_mode=RunMode.RUN)
        template = Template(cfg.hydra.help.template)
        print(template.substitute(FLAGS_HELP=hydra.format_args_help(get_args_parser())))


def complete(command: str, overrides: list[str]) -> None:
    """Hydra's `-sc install=bash`, `-sc uninstall=bash` or `-sc query=bash` (the line to
    complete in COMP_LINE); only a query composes the config, so only it needs the schemas."""
    if any(override.startswith("query=") for override in overrides):
        store_schemas()
    with hydra_for(command) as hydra:
        hydra.shell_completion(config_name=command, overrides=overrides)


@contextmanager
def hydra_for(command: str) -> Iterator[Hydra]:
    """Hydra with conf/ as its config folder, as the command's `hydra.main` sets it up."""
    with initialize_config_dir(str(config_dir()), job_name=command, version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        yield hydra


def store_schemas() -> None:
    """Put the structured configs that conf/'s options extend (`schema/<kind>/<name>`, read
    off the classes' signatures) into Hydra's ConfigStore from the cache, rebuilding the
    cache first when a source file it was built from has changed since."""
    path = cache_file()
    schemas = read_cache(path)
    if schemas is None:
        schemas = build_schemas()
        sources = loaded_sources()
        write_cache(path, {"sources": sources, "fingerprint": fingerprint(sources)}, schemas)
    store = ConfigStore.instance()
    for name, node in schemas.items():
        group, _, option = name.rpartition("/")
        store.store(group=group, name=option, node=node)


def build_schemas() -> dict[str, Any]:
    """Every `schema/<kind>/<name>` as plain settings, from the classes (imports torch)."""
    import ddpm_lightning.config.compose  # noqa: F401  (stores the schemas as it loads)

    store = ConfigStore.instance()
    return {
        f"{SCHEMA_GROUP}/{kind}/{name.removesuffix('.yaml')}": OmegaConf.to_container(
            store.load(f"{SCHEMA_GROUP}/{kind}/{name}").node
        )
        for kind in store.list(SCHEMA_GROUP)
        for name in store.list(f"{SCHEMA_GROUP}/{kind}")
    }


def loaded_sources() -> list[str]:
    """The package's source files loaded so far (relative paths): the only code the schemas
    can have come from."""
    files = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
    paths = [Path(file).resolve() for file in files if file]
    return sorted(
        str(path.relative_to(PACKAGE_DIR)) for path in paths if path.is_relative_to(PACKAGE_DIR)
    )


def fingerprint(sources: list[str]) -> str:
    """A digest of the size and modification time of each file of `sources`; empty when one
    is missing."""
    digest = hashlib.sha256()
    for source in sources:
        try:
            stat = (PACKAGE_DIR / source).stat()
        except OSError:
            return ""
        digest.update(f"{source} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_file() -> Path:
    """Where this installation's schemas are kept: the user's cache folder, one file per
    package folder (two checkouts do not overwrite each other's)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = hashlib.sha256(str(PACKAGE_DIR).encode()).hexdigest()[:16]
    return root / "ddpm_lightning" / f"schemas-{where}.yaml"


def read_cache(path: Path) -> dict[str, Any] | None:
    """The schemas saved in `path`; None when it is missing or unreadable, or when a source
    file they were built from has changed."""
    try:
        saved = OmegaConf.to_container(OmegaConf.load(path))
    except (OSError, OmegaConfBaseException, ValueError, yaml.YAMLError):
        return None
    if not isinstance(saved, dict):
        return None
    sources, schemas = saved.get("sources"), saved.get("schemas")
    if not isinstance(sources, list) or not all(isinstance(source, str) for source in sources):
        return None
    fresh = saved.get("fingerprint") == fingerprint(sources)
    return schemas if fresh and isinstance(schemas, dict) else None


def write_cache(path: Path, stamp: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Save `schemas` with `stamp` (their sources and fingerprint), whole or not at all; an
    unwritable cache folder only means that the next query builds them again."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        OmegaConf.save({**stamp, "schemas": schemas}, temporary)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
