"""The documentation stays true to the code: every relative link and anchor in README.md,
CONTRIBUTING.md and docs/*.md resolves, every `python -m ddpm_lightning.<module>` (or
`ddpm-<command>`, `make train ARGS="..."`) command shown names a real module and its Hydra
overrides compose, and every `from ddpm_lightning... import ...` in a Python example imports."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from ddpm_lightning.config import compose_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONF = ROOT / "conf"
HYDRA_COMMANDS = {"train", "sample", "evaluate", "classifier", "export", "demo"}
CONSOLE_SCRIPTS = {f"ddpm-{name}": name for name in HYDRA_COMMANDS}
# Hydra flags: those followed by a value, and those that stand alone.
FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir"}
FLAGS = {"-m", "--multirun", "--help", "-h", "--hydra-help", "--resolve", "--info", "-i"}
SHELL_OPERATORS = {"&&", "||", ";", "|"}
FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
PROJECT_COMMAND = re.compile(
    r"-m\s+ddpm_lightning|\bddpm-(train|sample|evaluate|classifier|export|demo)\b|make\s+train"
)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]


def markdown_lines(text: str) -> Iterator[tuple[int, str, str | None]]:
    """(line number, line, None for prose or the language of its fenced code block, "" when
    none is given) for every line but the fences themselves."""
    fence: str | None = None
    language: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if match and (fence is None or match.group(1) == fence):
            if fence is None:
                fence, language = match.group(1), match.group(2).lower()
            else:
                fence, language = None, None
            continue
        yield number, line, language if fence is not None else None


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


# --- Tests ------------------------------------------------------------------------------------


def test_the_documentation_files_exist():
    assert len(doc_files()) >= 10, [str(p) for p in doc_files()]
    for path in doc_files():
        assert path.is_file(), path


@pytest.mark.parametrize(
    "checker",
    [link_problems, command_problems, import_problems, named_test_problems],
    ids=["links and anchors", "commands compose", "python imports", "named tests exist"],
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
