"""The documentation stays true to the code: README.md, CONTRIBUTING.md and docs/*.md parse as
CommonMark with every code block closed and no heading swallowed into one, every relative link
and anchor resolves, every `python -m ddpm_lightning.<module>` (or `ddpm-<command>`,
`make train ARGS="..."`) command shown names a real module and its Hydra overrides compose,
every `from ddpm_lightning... import ...` in a Python example imports, and every default the
prose, a table or a list of a group's options states for a config key is the value
`compose_config` gives, and every argument of a class's signature written out in full is its
default."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import math
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from markdown_it import MarkdownIt
from markdown_it.token import Token
from omegaconf import OmegaConf

from ddpm_lightning.config import compose_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONF = ROOT / "conf"
HYDRA_COMMANDS = {"train", "sample", "evaluate", "classifier", "export", "demo", "edit"}
CONSOLE_SCRIPTS = {f"ddpm-{name}": name for name in HYDRA_COMMANDS}
# Hydra flags: those followed by a value, and those that stand alone.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir"}
FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--info", "-i"}
SHELL_OPERATORS = {"&&", "||", ";", "|"}
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
PROJECT_COMMAND = re.compile(
    r"-m\s+ddpm_lightning|\bddpm-(train|sample|evaluate|classifier|export|demo|edit)\b"
    r"|make\s+train"
)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


# CommonMark, as GitHub renders it (GitHub's tables included).
MARKDOWN = MarkdownIt("commonmark").enable("table")


@lru_cache(maxsize=64)
def parse(text: str) -> tuple[Token, ...]:
    return tuple(MARKDOWN.parse(text))


def fence_is_closed(fence: Token, lines: list[str]) -> bool:
    """Whether the fenced block's last line is a closing fence: its opener's character, at
    least as many of them, and nothing else."""
    assert fence.map is not None
    start, end = fence.map
    char, width = re.escape(fence.markup[0]), len(fence.markup)
    return (
        end - start >= 2
        and re.fullmatch(rf"[\s>]*{char}{{{width},}}\s*", lines[end - 1]) is not None
    )


def markdown_lines(text: str) -> Iterator[tuple[int, str, str | None]]:
    """(line number, line, None for prose or the language of its code block, "" when none is
    given) for every line but the fences themselves, with the blocks CommonMark finds."""
    lines = text.splitlines()
    code: dict[int, str] = {}
    fences: set[int] = set()
    for token in parse(text):
        if token.type not in ("fence", "code_block") or token.map is None:
            continue
        start, end = token.map
        language = ""
        if token.type == "fence":
            fences.add(start)
            if fence_is_closed(token, lines):
                end -= 1
                fences.add(end)
            start += 1
            language = token.info.split()[0].lower() if token.info.strip() else ""
        code.update(dict.fromkeys(range(start, end), language))
    for index, line in enumerate(lines):
        if index not in fences:
            yield index + 1, line, code.get(index)


def prose(text: str) -> str:
    """`text` with fenced code blocks (fences included) blanked out, line numbers kept."""
    kept = {number: line for number, line, lang in markdown_lines(text) if lang is None}
    return "\n".join(kept.get(number, "") for number in range(1, len(text.splitlines()) + 1))


# --- Links and anchors ------------------------------------------------------------------------


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: rendered text, lowercased, everything but letters,
    digits, spaces, hyphens and underscores removed, spaces turned into hyphens."""
    text = re.sub(r"!\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; repeated headings get -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line, language in markdown_lines(text):
        match = HEADING.match(line) if language is None else None
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@cache
def file_anchors(path: Path) -> frozenset[str]:
    return frozenset(anchors(path.read_text(encoding="utf-8")))


def link_problems(path: Path, text: str) -> list[str]:
    """'file:line: message' for every relative link of `text` (the contents of `path`) whose
    file is missing or whose #anchor is not a heading of its target."""
    problems = []
    code_free = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose(text))
    for match in LINK.finditer(code_free):
        target = match.group(1)
        line = code_free.count("\n", 0, match.start()) + 1
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        target_path = (path.parent / file_part).resolve() if file_part else path
        if file_part and not target_path.exists():
            problems.append(f"{where}: link to {target}: {file_part} does not exist")
            continue
        if anchor:
            if target_path.suffix != ".md":
                problems.append(f"{where}: link to {target}: anchors only work in .md files")
                continue
            headings = anchors(text) if target_path == path else file_anchors(target_path)
            if anchor not in headings:
                problems.append(f"{where}: link to {target}: no heading with anchor #{anchor}")
    return problems


# --- Commands ---------------------------------------------------------------------------------


def shell_commands(text: str) -> Iterator[tuple[int, str]]:
    """(line number, command line) of shell code blocks (continuations joined) and of inline
    code spans in the prose that run a project command."""
    pending: list[str] = []
    start = 0
    for number, line, language in markdown_lines(text):
        if language is None or language in {"python", "py", "yaml", "toml", "json", "text"}:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        command_line = " ".join([*pending, line])
        pending = []
        if PROJECT_COMMAND.search(command_line):
            yield start, command_line
    plain = prose(text)
    for match in INLINE_CODE.finditer(plain):
        code = match.group(2)
        if "\n\n" not in code and PROJECT_COMMAND.search(code):
            yield plain.count("\n", 0, match.start()) + 1, code.replace("\n", " ")


def project_commands(command_line: str) -> Iterator[tuple[str, list[str]]]:
    """(module, arguments) for each project command in one shell line: `python -m
    ddpm_lightning.X args`, `ddpm-X args` and `make train ARGS="args"`."""
    tokens = shlex.split(command_line, comments=True)
    for i, token in enumerate(tokens):
        module, rest = None, None
        if token == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("ddpm_lightning"):
            if i > 0 and re.fullmatch(r"(\S*/)?python[\d.]*", tokens[i - 1]):
                module, rest = tokens[i + 1], tokens[i + 2 :]
        elif token in CONSOLE_SCRIPTS:
            module, rest = f"ddpm_lightning.{CONSOLE_SCRIPTS[token]}", tokens[i + 1 :]
        elif token == "make" and tokens[i + 1 : i + 2] == ["train"]:
            args = [t[len("ARGS=") :] for t in tokens[i + 2 :] if t.startswith("ARGS=")]
            module, rest = "ddpm_lightning.train", shlex.split(args[0]) if args else []
        if module is None or rest is None:
            continue
        for j, arg in enumerate(rest):
            if arg in SHELL_OPERATORS:
                rest = rest[:j]
                break
        yield module, rest


def hydra_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(overrides to compose, problems) from a Hydra command's arguments: flags dropped,
    hydra/... and hydra.* overrides skipped (their plugins may not be installed)."""
    overrides, problems = [], []
    skip_next = False
    for arg in arguments:
        if skip_next:
            skip_next = False
        elif arg in FLAGS_WITH_VALUE:
            skip_next = True
        elif arg in FLAGS or re.match(r"^[+~]{0,2}hydra[/.]", arg):
            continue
        elif "=" in arg or arg.startswith("~"):
            if re.search(r"[<>]", arg):
                problems.append(
                    f"{arg}: '<' or '>' is shell redirection; use a placeholder like PATH"
                )
            else:
                overrides.append(arg)
        else:
            problems.append(f"{arg!r} is not a Hydra override (key=value, group=option, ~key)")
    return overrides, problems


def override_variants(overrides: list[str]) -> list[list[str]]:
    """The override lists to compose: sweeps (a=x,y) at their first value, then each other
    option of each config-group sweep (schedule=linear,cosine) with the rest at their first
    values. The other values of a plain key's sweep (lr=1e-4,2e-4) were checked by the parser
    and compose like the first."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for override, text in zip(parsed, overrides, strict=True):
        if not override.is_sweep_override():
            choices.append([text])
            continue
        key = override.get_key_element()
        options = [f"{key}={value}" for value in override.sweep_string_iterator()]
        is_group = (CONF / key.lstrip("+~")).is_dir()
        choices.append(options if is_group else options[:1])
    base = [options[0] for options in choices]
    variants = [base]
    for k, options in enumerate(choices):
        variants += [[*base[:k], option, *base[k + 1 :]] for option in options[1:]]
    return variants


@cache
def composes(config_name: str, overrides: tuple[str, ...]) -> str | None:
    """None when the overrides compose, else the first line of the error."""
    try:
        compose_config(config_name, list(overrides))
    except Exception as exc:  # every composition failure is a documentation error
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


def command_problems(path: Path, text: str) -> list[str]:
    """'file:line: message' for each shown command that names a missing module or whose
    overrides do not compose."""
    problems = []
    where_file = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for line, command_line in shell_commands(text):
        where = f"{where_file}:{line}"
        try:
            commands = list(project_commands(command_line))
        except ValueError as exc:  # unbalanced quotes
            problems.append(f"{where}: cannot parse {command_line!r}: {exc}")
            continue
        for module, arguments in commands:
            if importlib.util.find_spec(module) is None:
                problems.append(f"{where}: python -m {module}: no such module")
                continue
            name = module.removeprefix("ddpm_lightning.")
            if name not in HYDRA_COMMANDS:
                continue
            overrides, found = hydra_overrides(arguments)
            problems += [f"{where}: {name}: {problem}" for problem in found]
            try:
                variants = override_variants(overrides)
            except Exception as exc:
                problems.append(f"{where}: {name} {' '.join(overrides)}: {exc}".splitlines()[0])
                continue
            for variant in variants:
                error = composes(name, tuple(variant))
                if error is not None:
                    problems.append(f"{where}: {name} {' '.join(variant)}: {error}")
    return problems


# --- Python examples --------------------------------------------------------------------------


IMPORT = re.compile(r"^\s*from\s+(ddpm_lightning[\w.]*)\s+import\s+([\w, ]+)\s*$")


def import_problems(path: Path, text: str) -> list[str]:
    """'file:line: message' for `from ddpm_lightning... import names` lines of Python code
    blocks that do not import."""
    problems = []
    for line, code, language in markdown_lines(text):
        match = IMPORT.match(code) if language in {"python", "py"} else None
        if not match:
            continue
        module_name, names = match.group(1), [n.strip() for n in match.group(2).split(",")]
        where = f"{path.relative_to(ROOT)}:{line}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"{where}: from {module_name}: {exc}")
            continue
        problems += [
            f"{where}: {module_name} has no {name}" for name in names if not hasattr(module, name)
        ]
    return problems


# --- Test names -------------------------------------------------------------------------------


TEST_REFERENCE = re.compile(r"\b(test_\w+\.py)::(test_\w+)")


def named_test_problems(path: Path, text: str) -> list[str]:
    """'file:line: message' for each `test_file.py::test_name` of `text` that is not a test
    function of that file in tests/."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        for file_name, test_name in TEST_REFERENCE.findall(line):
            test_file = ROOT / "tests" / file_name
            source = test_file.read_text(encoding="utf-8") if test_file.is_file() else ""
            if not re.search(rf"^def {test_name}\(", source, re.MULTILINE):
                problems.append(f"{path.name}:{number}: tests/{file_name} has no {test_name}")
    return problems


# --- Code blocks ------------------------------------------------------------------------------


SWALLOWED_HEADING = re.compile(r"^ {0,3}#{2,6}\s+\S")


def location(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"


def fence_problems(path: Path, text: str) -> list[str]:
    """'file:line: message' for each code block that is never closed, each line inside one that
    looks like a fence but does not close it (text after the backticks, or indented too far),
    each `## heading` inside one (a block left open swallows the prose after it), and each
    line of prose that starts like a fence but is not one."""
    problems = []
    lines = text.splitlines()
    for token in parse(text):
        if token.type == "inline" and token.map is not None:
            for offset, line in enumerate(token.content.splitlines()):
                if line.lstrip().startswith(("```", "~~~")):
                    problems.append(
                        f"{location(path, token.map[0] + offset + 1)}: {line.strip()!r} opens no "
                        "code block (its info string holds a backtick)"
                    )
        if token.type != "fence" or token.map is None:
            continue
        start, end = token.map
        closed = fence_is_closed(token, lines)
        if not closed:
            problems.append(
                f"{location(path, start + 1)}: the code block opened here is never closed "
                f"(it runs to line {end})"
            )
        char, width = re.escape(token.markup[0]), len(token.markup)
        language = token.info.split()[0].lower() if token.info.strip() else ""
        for index in range(start + 1, end - 1 if closed else end):
            line = lines[index]
            if re.match(rf"[\s>]*{char}{{{width},}}", line):
                problems.append(
                    f"{location(path, index + 1)}: {line.strip()!r} does not close the code block "
                    f"opened on line {start + 1}: a closing fence stands alone on its line"
                )
            elif SWALLOWED_HEADING.match(line) and language not in {"markdown", "md"}:
                problems.append(
                    f"{location(path, index + 1)}: the heading {line.strip()!r} is inside the code "
                    f"block opened on line {start + 1}"
                )
    return problems


# --- Stated defaults --------------------------------------------------------------------------

# Where the prose names no command, a page's defaults are those of the command it documents.
PAGE_COMMANDS = {
    "configuration.md": "train",
    "training-tooling.md": "train",
    "sampling.md": "sample",
    "evaluation.md": "evaluate",
    "sharing.md": "export",
    "demo.md": "demo",
    "data.md": "train",
    "editing.md": "edit",
}
COMMAND_WORD = re.compile(rf"\b({'|'.join(sorted(HYDRA_COMMANDS))})\b", re.IGNORECASE)
GROUP_CHOICE = re.compile(r"`([a-z_]+)=([a-z0-9_]+)`")
KEY = r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*"
LITERAL = (
    r"`[^`\n]+`|[−-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[−-]?\d+(?:\.\d+)?(?:e[−-]?\d+)?"
    r"|true|false|null|None|∞|\[[^\]\n]*\]|\{\}"
)
# "`key` defaults to 50", "`key` (default: 50)", "`key` default `train`", "`key=50`, the
# default." and "`key=50` (the default)"; not "the default recipe" or "the default then".
PROSE_DEFAULTS = [
    re.compile(rf"`(?P<key>{KEY})`,? defaults to (?P<value>{LITERAL})"),
    re.compile(rf"`(?P<key>{KEY})`,? \(?default:? (?P<value>{LITERAL})"),
    re.compile(rf"`(?P<key>{KEY})=(?P<value>[^`\s]+)`(?:,| \()\s*the default(?=\s*[),;.:]|\s*$)"),
]
# A cell of a "default" column: the value alone, or followed by "(…)", ": …" or "; …".
TABLE_VALUE = re.compile(rf"(?P<value>{LITERAL})(?:\s*$|\s+\(|\s*[:;])")
# Items of a "keys (default)" cell: "`key` (50)", "`key` (1, …)", and "`key`: `a` (default) | `b`".
KEY_ITEM = re.compile(rf"`(?P<key>{KEY})` \((?P<value>{LITERAL})(?=[),:;])")
KEY_CHOICES = re.compile(
    rf"`(?P<key>{KEY})`: (?P<choices>(?:`[^`]+`(?: \([^()]*\))?(?: \\?\| )?)+)"
)
MARKED_CHOICE = re.compile(r"`([^`]+)` \([^()]*\bdefault\b[^()]*\)")
# In a table of config groups, what follows "option: " in a "keys (default)" cell is that
# option's ("spiral: `num_points` (10,000)").
OPTION_PREFIX = re.compile(r"([a-z0-9_]+): ")
# A heading naming a group without an option ("Models (`model=`)"), whose list items each start
# with one of its options ("- `mlp`: … `num_layers` (5) …", "(`start` −3, `end` 3)").
GROUP_HEADING = re.compile(r"`([a-z_]+)=`")
ITEM_OPTION = re.compile(r"`([a-z0-9_]+)`")
ITEM_DEFAULT = re.compile(rf"`(?P<key>{KEY})`(?: = | \(| )(?P<value>{LITERAL})(?=[),;:.\s]|$)")
# A class's signature written out in inline code: `UNet(in_channels=1, …)`.
CALL = re.compile(r"[A-Z]\w*\(.*\)", re.DOTALL)
CALL_HOMES = ("ddpm_lightning.models", "ddpm_lightning.diffusion", "ddpm_lightning.data")


@dataclass(frozen=True)
class Context:
    """What a stated default is about: the commands whose config holds the key, the group
    options chosen (`model=diffusers_unet` in a heading), and the group a bare key belongs to."""

    commands: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    group: str | None = None


@dataclass(frozen=True)
class Stated:
    line: int
    key: str
    value: str
    context: Context


def headings_context(path: Path, headings: list[str]) -> Context:
    """The innermost heading that names commands gives them (else the page's command, else
    every command); the innermost heading with a `group=option` of conf/ gives the option."""
    commands: tuple[str, ...] = ()
    for heading in reversed(headings):
        commands = tuple(dict.fromkeys(w.lower() for w in COMMAND_WORD.findall(heading)))
        if commands:
            break
    if not commands:
        page = PAGE_COMMANDS.get(path.name)
        commands = (page,) if page else tuple(sorted(HYDRA_COMMANDS))
    for heading in reversed(headings):
        for group, option in GROUP_CHOICE.findall(heading):
            if (CONF / group).is_dir():
                return Context(commands, (f"{group}={option}",), group)
    return Context(commands)


def cell_codes(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def table_rows(tokens: tuple[Token, ...], start: int) -> Iterator[tuple[int, list[str]]]:
    """(line number, cell contents) of each row of the table opened at tokens[start]."""
    row: list[str] = []
    line = 0
    for token in tokens[start:]:
        if token.type == "tr_open":
            row, line = [], (token.map[0] + 1 if token.map else 0)
        elif token.type == "inline":
            row.append(token.content)
        elif token.type == "tr_close":
            yield line, row
        elif token.type == "table_close":
            return


def table_defaults(rows: list[tuple[int, list[str]]], context: Context) -> Iterator[Stated]:
    """Defaults stated by a table: a "default" column beside a column of keys, or a
    "keys (default)" column in rows that each name a command or a `group=` option."""
    header = [cell.strip().lower() for cell in rows[0][1]]
    if "default" in header[1:]:
        column = header.index("default")
        for line, cells in rows[1:]:
            keys = cell_codes(cells[0])
            if not keys or not all(re.fullmatch(KEY, key) for key in keys):
                continue
            separator = " / " if "/" in cells[0] else ", "
            values = cells[column].split(separator) if len(keys) > 1 else [cells[column]]
            values = values if len(values) == len(keys) else [cells[column]] * len(keys)
            for key, value in zip(keys, values, strict=True):
                match = TABLE_VALUE.match(value.strip())
                if match:
                    yield Stated(line, key, match.group("value"), context)
    column = next((i for i, cell in enumerate(header) if "(default)" in cell), None)
    group_header = re.fullmatch(r"`([a-z_]+)=`", header[0])
    if column is not None and header[0] == "group":
        yield from group_table_defaults(rows, column, context)
    if column is None or not (header[0] == "command" or group_header):
        return
    for line, cells in rows[1:]:
        first = (cell_codes(cells[0]) or [""])[0]
        if group_header:
            group = group_header.group(1)
            row_context = Context(context.commands, (f"{group}={first}",), group)
        elif first in HYDRA_COMMANDS:
            row_context = Context((first,))
        else:
            continue
        for match in KEY_ITEM.finditer(cells[column]):
            yield Stated(line, match.group("key"), match.group("value"), row_context)
        for match in KEY_CHOICES.finditer(cells[column]):
            for value in MARKED_CHOICE.findall(match.group("choices")):
                yield Stated(line, match.group("key"), value, row_context)


def group_table_defaults(
    rows: list[tuple[int, list[str]]], column: int, context: Context
) -> Iterator[Stated]:
    """Defaults in the "keys (default)" cells of a table whose rows each name a config group:
    the group's default option's, and after "option: " that option's."""
    for line, cells in rows[1:]:
        group = (cell_codes(cells[0]) or [""])[0]
        if not group or not (CONF / group).is_dir():
            continue
        for segment in cells[column].split("; "):
            prefix = OPTION_PREFIX.match(segment)
            chosen = prefix and (CONF / group / f"{prefix.group(1)}.yaml").is_file()
            overrides = (f"{group}={prefix.group(1)}",) if prefix and chosen else ()
            for match in KEY_ITEM.finditer(segment):
                stated_context = Context(context.commands, overrides, group)
                yield Stated(line, match.group("key"), match.group("value"), stated_context)


def item_context(context: Context, headings: list[str], item: str) -> Context | None:
    """The context of a list item that starts with an option (`mlp`) under a heading naming
    its group without an option (`Models (`model=`)`); None for any other item."""
    groups = [group for heading in headings for group in GROUP_HEADING.findall(heading)]
    option = ITEM_OPTION.match(item)
    if not groups or not option or not (CONF / groups[-1] / f"{option.group(1)}.yaml").is_file():
        return None
    return Context(context.commands, (f"{groups[-1]}={option.group(1)}",), groups[-1])


def is_list_item(tokens: tuple[Token, ...], index: int) -> bool:
    """Whether tokens[index] is the text that opens a list item."""
    return index >= 2 and [t.type for t in tokens[index - 2 : index]] == [
        "list_item_open",
        "paragraph_open",
    ]


def stated_defaults(path: Path, text: str) -> Iterator[Stated]:
    """Every default that `text` states for a config key written in backticks."""
    tokens = parse(text)
    headings: list[str] = []
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            level = int(token.tag[1])
            headings = [*headings[: level - 1], *[""] * (level - 1 - len(headings))]
            headings.append(tokens[index + 1].content)
        elif token.type == "table_open":
            rows = list(table_rows(tokens, index))
            yield from table_defaults(rows, headings_context(path, headings))
        elif token.type == "inline" and token.map is not None:
            context = headings_context(path, headings)
            content = token.content
            item = is_list_item(tokens, index) and item_context(context, headings, content)
            patterns = [*PROSE_DEFAULTS, ITEM_DEFAULT] if item else PROSE_DEFAULTS
            for pattern in patterns:
                for match in pattern.finditer(content):
                    line = token.map[0] + content.count("\n", 0, match.start()) + 1
                    stated_context = item or context
                    yield Stated(line, match.group("key"), match.group("value"), stated_context)


@cache
def composed(command: str, overrides: tuple[str, ...]) -> dict[str, Any] | None:
    """The command's config as plain values, interpolations unresolved; None when the
    overrides do not apply to it."""
    try:
        container = OmegaConf.to_container(compose_config(command, list(overrides)))
    except Exception:  # e.g. a group the command does not have
        return None
    assert isinstance(container, dict)
    return container


MISSING = object()


def lookup(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return MISSING if "${" in str(node) else node  # an interpolation states no value


def literal(text: str) -> Any:
    """A stated value as Python: `code`, 10,000, 1e-3, −1.2, ∞, true, null, [0.3, 4], {}."""
    text = text.strip("`").replace("−", "-")
    if text == "∞":
        return math.inf
    if text == "None":
        return None
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def same_value(stated: Any, actual: Any) -> bool:
    if isinstance(stated, bool) or isinstance(actual, bool):
        return stated is actual
    if isinstance(stated, int | float) and isinstance(actual, int | float):
        return stated == actual or math.isclose(stated, actual, rel_tol=1e-9)
    if isinstance(stated, list) and isinstance(actual, list):
        return len(stated) == len(actual) and all(map(same_value, stated, actual))
    return bool(stated == actual)


def signature_defaults(name: str) -> dict[str, Any] | None:
    """The defaults of the class or function `name` of the models, diffusion or data layer."""
    for home in CALL_HOMES:
        found = getattr(importlib.import_module(home), name, None)
        if callable(found):
            parameters = inspect.signature(found).parameters.values()
            return {p.name: p.default for p in parameters if p.default is not p.empty}
    return None


def as_lists(value: Any) -> Any:
    return [as_lists(item) for item in value] if isinstance(value, (list, tuple)) else value


def written_signature(code: str) -> tuple[str, ast.Call, dict[str, Any]] | None:
    """(name, call, its signature's defaults) when inline `code` writes out a signature: a call
    of a class or function of the models, diffusion or data layer naming every argument that
    has a default, e.g. `UNet(in_channels=1, …)`; else None."""
    code = " ".join(code.split())
    defaults = signature_defaults(code.split("(")[0]) if CALL.fullmatch(code) else None
    try:
        call = ast.parse(code, mode="eval").body
    except SyntaxError:
        return None
    if defaults is None or not isinstance(call, ast.Call):
        return None
    named = {keyword.arg for keyword in call.keywords}
    return (code.split("(")[0], call, defaults) if named == set(defaults) else None


def call_problems(path: Path, text: str) -> list[str]:
    """'file:line: message' for each argument of a signature written out in inline code
    (`written_signature`) whose value is not its default."""
    problems = []
    plain = prose(text)
    for match in INLINE_CODE.finditer(plain):
        written = written_signature(match.group(2))
        if written is None:
            continue
        name, call, defaults = written
        line = plain.count("\n", 0, match.start()) + 1
        for keyword in call.keywords:
            stated, actual = ast.literal_eval(keyword.value), defaults[keyword.arg]
            if not same_value(as_lists(stated), as_lists(actual)):
                problems.append(
                    f"{location(path, line)}: `{keyword.arg}={stated!r}` is said to be the "
                    f"default of {name}, but its signature has {actual!r}"
                )
    return problems


def default_problems(path: Path, text: str) -> list[str]:
    """'file:line: message' for each stated default that differs from what the command it is
    about composes, or from the signature it is written out from (`call_problems`). Keys no
    config holds (Python arguments, CLI flags), interpolated values and a group's option
    (`trainer` | `default`) are not checked."""
    problems = []
    for stated in stated_defaults(path, text):
        context = stated.context
        keys = [f"{context.group}.{stated.key}", stated.key] if context.group else [stated.key]
        found: dict[str, Any] = {}
        for commands in (context.commands, tuple(sorted(HYDRA_COMMANDS))):
            for command in commands:
                config = composed(command, context.overrides)
                values = [lookup(config, key) for key in keys] if config else []
                value = next((v for v in values if v is not MISSING), MISSING)
                if value is not MISSING:
                    found[command] = value
            if found:
                break
        expected = literal(stated.value)
        if isinstance(expected, str) and any(isinstance(v, dict) for v in found.values()):
            continue  # a group and its option, not a value
        if found and not any(same_value(expected, value) for value in found.values()):
            actual = ", ".join(f"{command} composes {value!r}" for command, value in found.items())
            chosen = f" (with {' '.join(context.overrides)})" if context.overrides else ""
            problems.append(
                f"{location(path, stated.line)}: `{stated.key}` is said to default to "
                f"{stated.value}, but {actual}{chosen}"
            )
    return problems + call_problems(path, text)


# --- Tests ------------------------------------------------------------------------------------


def test_the_documentation_files_exist():
    assert len(doc_files()) >= 10, [str(p) for p in doc_files()]
    for path in doc_files():
        assert path.is_file(), path


@pytest.mark.parametrize(
    "checker",
    [
        fence_problems,
        link_problems,
        command_problems,
        import_problems,
        named_test_problems,
        default_problems,
    ],
    ids=[
        "code blocks closed",
        "links and anchors",
        "commands compose",
        "python imports",
        "named tests exist",
        "stated defaults",
    ],
)
def test_every_documented_reference_resolves(checker):
    problems = []
    for path in doc_files():
        problems += checker(path, path.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


# The checkers must be able to fail: made-up broken documents.


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Loggers (`logger=csv | tensorboard`)", "loggers-loggercsv--tensorboard"),
        ("Which sampler? FLD on trained models", "which-sampler-fld-on-trained-models"),
        (
            "Evaluation: the Fréchet LeNet Distance (FLD)",
            "evaluation-the-fréchet-lenet-distance-fld",
        ),
        (
            "Time to quality: the training-recipe ablation",
            "time-to-quality-the-training-recipe-ablation",
        ),
        ("[Linked](x.md) and **bold** snake_case", "linked-and-bold-snake_case"),
    ],
)
def test_github_slugs(heading, slug):
    assert github_slug(heading) == slug


def test_repeated_headings_get_numbered_anchors():
    assert anchors("# Notes\n## Notes\n```\n# Notes\n```\n### Notes\n") == {
        "notes",
        "notes-1",
        "notes-2",
    }


def test_link_checker_flags_broken_links():
    fake = DOCS / "made_up.md"
    text = "\n".join(
        [
            "# Title",
            "[ok](configuration.md#where-the-data-lives) [ok](#title) [web](https://example.com)",
            "[bad anchor](configuration.md#no-such-heading)",
            "[missing file](no_such_page.md)",
            "![missing picture](images/no_such_picture.png)",
            "[bad local anchor](#nowhere) `[in code](nowhere.md)`",
            "```",
            "[in a code block](nowhere.md)",
            "```",
        ]
    )
    problems = link_problems(fake, text)
    assert len(problems) == 4, problems
    assert [p.split(":")[1] for p in problems] == ["3", "4", "5", "6"]
    assert "#no-such-heading" in problems[0] and "no_such_page.md" in problems[1]


def test_command_checker_flags_bad_commands():
    fake = DOCS / "made_up.md"
    text = "\n".join(
        [
            "```bash",
            "python -m ddpm_lightning.train model=unet_large schedule=linear,cosine  # fine",
            "python -m ddpm_lightning.train \\",
            "    model=no_such_model",
            "python -m ddpm_lightning.no_such_command x=1",
            'make train ARGS="schedule=linear,no_such_schedule"',
            "python -m ddpm_lightning.sample ckpt_path=<run>/last.ckpt",
            "```",
            "```",
            "data/   the module's files (not a command, an unbalanced quote)",
            "```",
            "Inline: `python -m ddpm_lightning.evaluate no_such_key=1` and",
            "`python -m ddpm_lightning.train hydra/launcher=submitit_slurm -m` (skipped).",
        ]
    )
    problems = command_problems(fake, text)
    lines = [p.split(":")[1] for p in problems]
    assert lines == ["3", "5", "6", "7", "12"], problems
    assert "no_such_model" in problems[0] and "no such module" in problems[1]
    assert "no_such_schedule" in problems[2] and "redirection" in problems[3]


def test_import_checker_flags_missing_names():
    fake = ROOT / "docs" / "made_up.md"
    text = "\n".join(
        [
            "```python",
            "from ddpm_lightning.diffusion import DDIMSampler",
            "from ddpm_lightning.diffusion import NoSuchSampler",
            "from ddpm_lightning.no_such_module import anything",
            "```",
        ]
    )
    problems = import_problems(fake, text)
    assert [p.split(":")[1] for p in problems] == ["3", "4"], problems


def test_test_name_checker_flags_missing_tests():
    text = "`test_docs.py::test_github_slugs`\n`test_docs.py::test_nothing` `test_nope.py::test_x`"
    problems = named_test_problems(DOCS / "made_up.md", text)
    assert [p.split(":")[1] for p in problems] == ["2", "2"], problems


def test_fence_checker_flags_unclosed_and_malformed_blocks():
    text = "\n".join(
        [
            "# Title",  # 1
            "```bash",
            "python -m ddpm_lightning.train  # a comment, not a heading",
            "``` Text after a closing fence keeps the block open.",  # 4
            "",
            "## Swallowed",  # 6
            "```bash",  # 7: meant to open a block, but it is inside one
            "echo hi",
            "```",  # 9: closes the block opened on line 2
            "````markdown",
            "```",
            "## A heading shown as markdown",
            "```",
            "````",
            "~~~",  # 15: never closed
            "text",
        ]
    )
    problems = fence_problems(DOCS / "made_up.md", text)
    assert [p.split(":")[1] for p in problems] == ["4", "6", "7", "15"], problems
    assert "does not close" in problems[0] and "'## Swallowed'" in problems[1]
    assert "never closed" in problems[3]
    closed = "# Title\n\n```bash\n# a shell comment\n```\n\n## Next\n"
    assert fence_problems(DOCS / "made_up.md", closed) == []
    assert "## Swallowed" not in prose(text) and "## Next" in prose(closed)


def test_default_checker_flags_wrong_defaults():
    """The stated values are made from what the configs compose, so the test follows them."""
    sample = compose_config("sample", [])
    train = compose_config("train", [])
    steps, objective = sample.sampler.num_steps, train.diffusion.objective
    wrong_objective = "eps" if objective != "eps" else "v"
    text = "\n".join(
        [
            "# Sampling",  # 1: sample is this page's command
            f"`sampler.num_steps` defaults to {steps}.",
            f"`sampler.num_steps` defaults to {steps + 1}.",  # 3
            f"`num_samples` (default: {sample.num_samples}) and `seed` (default {sample.seed + 1})",
            "## Config groups of `train`",
            "",
            "| key | default | meaning |",
            "|---|---|---|",
            f"| `diffusion.objective` | `{objective}` | right |",
            f"| `diffusion.objective` | `{wrong_objective}` | wrong |",  # 10
            f"| `data.batch_size` | {train.data.batch_size:,} (at batch 64) | right |",
            "| `trainer` | `default` (one device) | a group's option: not checked |",
            "| `no_such.key` | 3 | no config holds it: not checked |",
            "",
            f"`trainer.max_epochs={train.trainer.max_epochs + 1}`, the default.",  # 15
            f"`trainer.max_epochs={train.trainer.max_epochs + 1}` (the default then)",
            f"`trainer.max_epochs={train.trainer.max_epochs + 1}`, the default recipe's budget",
        ]
    )
    problems = default_problems(DOCS / "sampling.md", text)
    assert [p.split(":")[1] for p in problems] == ["3", "4", "10", "15"], problems
    assert f"sample composes {steps}" in problems[0] and "`seed`" in problems[1]
    assert f"train composes '{objective}'" in problems[2]


def test_default_checker_reads_group_tables_option_lists_and_signatures():
    """The defaults are made from the configs and the signature, so the test follows them."""
    spiral = compose_config("train", ["data=spiral"]).data
    adamw = compose_config("train", ["optimizer=adamw"]).optimizer
    mlp = compose_config("train", ["model=mlp"]).model
    unet = signature_defaults("UNet")
    assert unet is not None
    unet["model_channels"] += 1
    written = ", ".join(f"{key}={value!r}" for key, value in unet.items())
    text = "\n".join(
        [
            "## Config groups",  # 1
            "",
            "| group | options | keys worth changing (default) |",
            "|---|---|---|",
            f"| `data` | `mnist` (default) | spiral: `num_points` ({spiral.num_points}), "
            f"`noise` ({spiral.noise + 1}) |",  # 5
            f"| `optimizer` | `adam` | adamw: `weight_decay` ({adamw.weight_decay + 1}) |",
            "",
            "## Models (`model=`)",  # 8
            "",
            f"- `mlp`: `num_layers` ({mlp.num_layers}) layers of `hidden_dim` {mlp.hidden_dim + 1}",
            f"- `mlp`: (`in_dim` = {mlp.in_dim + 1})",  # 11
            f"- the `num_layers` ({mlp.num_layers + 1}) of no option: not checked",
            "",
            f"`UNet({written})` and `UNet(in_channels=3)`, an example call: not checked",  # 14
        ]
    )
    problems = default_problems(DOCS / "configuration.md", text)
    assert [p.split(":")[1] for p in problems] == ["5", "6", "10", "11", "14"], problems
    assert "`noise`" in problems[0] and "with data=spiral" in problems[0]
    assert "`hidden_dim`" in problems[2] and "`in_dim`" in problems[3]
    assert f"`model_channels={unet['model_channels']}` is said to be the default of" in problems[4]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("`ddim`", "ddim"), ("10,000", 10000), ("1e-3", 0.001), ("−1.2", -1.2), ("∞", math.inf)]
    + [("null", None), ("None", None), ("true", True), ("[0.3, 4]", [0.3, 4]), ("{}", {})],
)
def test_stated_values_parse(value, expected):
    assert literal(value) == expected
