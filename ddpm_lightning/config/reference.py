"""The configuration reference: every key of each command's own config (conf/<command>.yaml:
its default there, what the schema allows, the YAML comment above it), and for every option of
the component groups (conf/data, model, schedule, optimizer, sampler) each key's default as conf/
composes it, what it allows and what it means, the comment right above the argument where the
class's signature declares it. `python -m ddpm_lightning.config --markdown` prints it;
docs/configuration.md embeds it between `BEGIN` and `END`, and a test keeps the two equal."""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from ddpm_lightning.components.defaults import components, declarations, kind_settings
from ddpm_lightning.config.compose import compose_config
from ddpm_lightning.config.defaults import KINDS
from ddpm_lightning.config.location import config_dir
from ddpm_lightning.config.schema import SCHEMAS, spec_for

BEGIN = "<!-- generated: python -m ddpm_lightning.config --markdown -->"
END = "<!-- end generated -->"
# The command whose config composes each group (train, where not named).
COMMANDS = {"sampler": "sample"}
# A signature's argument (or a TypedDict's key): `name: …`, `name=…`, `name,` or `name)`.
ARGUMENT = re.compile(r"\s*(\w+)\s*[:=,)]")
# A YAML mapping key: its indentation, name and the rest of the line.
YAML_KEY = re.compile(r"(\s*)([\w-]+):(.*)")


def options(group: str) -> list[str]:
    """The options of a config group: its YAML files."""
    return sorted(path.stem for path in (config_dir() / group).glob("*.yaml"))


def option_file(group: str, option: str) -> dict[str, Any]:
    return yaml.safe_load((config_dir() / group / f"{option}.yaml").read_text()) or {}


def extended(group: str, option: str) -> str | None:
    """The option of the same group that `option` extends (`unet_cond`: `unet`), or None."""
    parents = option_file(group, option).get("defaults", [])
    return next((p for p in parents if p != "_self_" and not str(p).startswith("/")), None)


def component(group: str, option: str) -> str:
    """The name of the component an option configures: the `schema/<group>/<name>` that it,
    or the option it extends, builds on."""
    parent = extended(group, option)
    if parent is not None:
        return component(group, parent)
    schema = next(p for p in option_file(group, option)["defaults"] if str(p).startswith("/"))
    return schema.split("/")[-1].split("@")[0]


@functools.cache
def composed(group: str, option: str) -> dict[str, Any]:
    """The settings `group=option` composes to, interpolations as written."""
    cfg = compose_config(COMMANDS.get(group, "train"), [f"{group}={option}"])
    section = OmegaConf.to_container(cfg[group], resolve=False)
    assert isinstance(section, dict)
    return {str(key): value for key, value in section.items() if not str(key).startswith("_")}


@functools.cache
def comments(source: Any) -> dict[str, str]:
    """The comment lines right above each argument of a signature (or key of a TypedDict),
    joined: its meaning."""
    lines = inspect.getsource(source).splitlines()
    node = ast.parse(textwrap.dedent("\n".join(lines))).body[0]
    if isinstance(node, ast.FunctionDef):
        lines = lines[: node.body[0].lineno - 1]
    found: dict[str, str] = {}
    block: list[str] = []
    for line in lines:
        if line.strip().startswith("#"):
            block.append(line.strip().lstrip("#").strip())
            continue
        argument = ARGUMENT.match(line)
        if argument and block:
            found[argument.group(1)] = " ".join(block)
        block = []
    return found


def meanings(kind: str, name: str) -> dict[str, str]:
    """Each setting's meaning where `kind`/`name` declares it, else where another component of
    the kind does (e.g. `in_channels` once, for every network)."""
    found: dict[str, str] = {}
    for source in declarations(kind, name) + [
        source for other in components(kind) for source in declarations(kind, other)
    ]:
        for key, meaning in comments(source).items():
            found.setdefault(key, meaning)
    return found


def rendered(value: Any) -> str:
    """A default as YAML writes it: `true`, `null`, `[1, 2, 3]`, `0.0001`, `inf`."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list):
        return f"[{', '.join(map(rendered, value))}]"
    return str(value)


def table(group: str, option: str, keys: list[str]) -> list[str]:
    """The Markdown table of `keys` of `group=option`: key, default, allowed, meaning."""
    values, allowed = composed(group, option), kind_settings(group)
    meaning = meanings(group, component(group, option))
    rows = [
        f"| `{key}` | `{rendered(values[key])}` | {allowed[key].allowed if key in allowed else ''}"
        f" | {meaning.get(key, '').replace('|', '/')} |"
        for key in keys
    ]
    return ["| key | default | allowed | meaning |", "|---|---|---|---|", *rows]


def option_section(group: str, option: str) -> list[str]:
    """An option's heading and table: every key, or for an option that extends another the
    keys it sets itself."""
    parent = extended(group, option)
    if parent is None:
        keys = list(composed(group, option))
        return [f"#### `{group}={option}`", "", *table(group, option, keys)]
    keys = [key for key in option_file(group, option) if key != "defaults"]
    intro = f"`{group}={parent}` with:"
    return [f"#### `{group}={option}`", "", intro, "", *table(group, option, keys)]


@functools.cache
def yaml_comments(path: Path) -> dict[str, str]:
    """The comment lines right above each key of a YAML file (or after it on its line),
    joined, by dotted key: its meaning."""
    found: dict[str, str] = {}
    block: list[str] = []
    parents: list[tuple[int, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#"):
            block.append(line.strip().lstrip("#").strip())
            continue
        key = YAML_KEY.match(line)
        if key is None:
            block = []
            continue
        indent, name, rest = len(key.group(1)), key.group(2), key.group(3)
        parents = [(depth, parent) for depth, parent in parents if depth < indent]
        dotted = ".".join([parent for _, parent in parents] + [name])
        inline = rest.split(" #", 1)[1].strip() if " #" in rest else ""
        if block or inline:
            found[dotted] = " ".join(block) or inline
        if not rest.split(" #", 1)[0].strip():
            parents.append((indent, name))
        block = []
    return found


def command_keys(command: str) -> dict[str, Any]:
    """The keys `conf/<command>.yaml` sets itself (not those of its config groups), with their
    composed defaults, interpolations as written."""
    groups = {path.name for path in config_dir().iterdir() if path.is_dir()}
    cfg = OmegaConf.to_container(compose_config(command, []), resolve=False)
    assert isinstance(cfg, dict)

    def flat(node: dict, prefix: str = "") -> dict[str, Any]:
        keys: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, dict) and value:
                keys |= flat(value, f"{prefix}{key}.")
            else:
                keys[f"{prefix}{key}"] = value
        return keys

    return flat({key: value for key, value in cfg.items() if key not in groups})


def command_section(command: str) -> list[str]:
    """A command's heading and the table of its own keys: key, default, allowed, meaning."""
    meaning = yaml_comments(config_dir() / f"{command}.yaml")
    rows = []
    for key, value in command_keys(command).items():
        spec = spec_for(command, key)
        allowed = "" if spec is None else spec.allowed
        text = meaning.get(key, "").replace("|", "/")
        rows.append(f"| `{key}` | `{rendered(value)}` | {allowed} | {text} |")
    return [
        f"#### `python -m ddpm_lightning.{command}`",
        "",
        "| key | default | allowed | meaning |",
        "|---|---|---|---|",
        *rows,
    ]


def markdown() -> str:
    """The whole reference: a table per command, then a section per group and a table per
    option."""
    lines: list[str] = ["### Commands", ""]
    for command in SCHEMAS:
        lines += [*command_section(command), ""]
    for group in KINDS:
        lines += [f"### `{group}=`", ""]
        for option in options(group):
            lines += [*option_section(group, option), ""]
    return "\n".join(lines)


def embedded(text: str) -> str:
    """The reference embedded in `text` (a page), between `BEGIN` and `END`."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip() + "\n"


def write_reference(page: Path) -> None:
    """Replace what `page` holds between `BEGIN` and `END` with the current reference."""
    text = page.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(f"{head}{BEGIN}\n\n{markdown().strip()}\n\n{END}{tail}", encoding="utf-8")
