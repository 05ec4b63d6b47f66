"""The console scripts (ddpm_lightning/cli.py): Hydra's shell completion and `--help` answered
without importing torch, with the answers of the commands' own Hydra, and each command's help
listing its own config groups."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml
from conftest import PYTHON, cli_env
from hydra import initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from ddpm_lightning import cli
from ddpm_lightning.config import config_dir

CONF = config_dir()
ROOT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("torch", "torchvision", "lightning")
# What a console script holds once pip installs the package (pyproject.toml's [project.scripts]).
SCRIPT = f"#!{PYTHON}\nimport sys\nfrom ddpm_lightning.cli import main\nsys.exit(main())\n"


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> Path:
    """A folder of the console scripts `ddpm-<command>` as pip writes them, so the tests do
    not depend on when the virtual environment was last installed."""
    folder = tmp_path_factory.mktemp("bin")
    for command in cli.COMMANDS:
        script = folder / f"ddpm-{command}"
        script.write_text(SCRIPT)
        script.chmod(0o755)
    return folder


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory, scripts) -> Path:
    """A cache folder whose schemas a first completion query has built (it imports torch)."""
    home = tmp_path_factory.mktemp("cache")
    run_script(scripts, home, "train", "-sc", "query=bash", line="ddpm-train ")
    return home


def run_script(
    scripts: Path, cache: Path, command: str, *args: str, line: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `ddpm-<command> args` under `-X importtime` (the modules it loads go to stderr),
    completing `line` when given, as the shell's completion function calls it."""
    env = {**cli_env(), "XDG_CACHE_HOME": str(cache)}
    if line is not None:
        env |= {"COMP_LINE": line, "COMP_POINT": str(len(line))}
    argv = [PYTHON, "-X", "importtime", str(scripts / f"ddpm-{command}"), *args]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def light_run(
    scripts: Path, cache: Path, command: str, *args: str, line: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`run_script` with the schemas from the cache; run again when it was rebuilt meanwhile,
    because a source file of the package changed while the tests ran."""
    (cached,) = (cache / "ddpm_lightning").glob("schemas-*.yaml")
    before = cached.stat().st_mtime_ns
    result = run_script(scripts, cache, command, *args, line=line)
    if cached.stat().st_mtime_ns != before:
        result = run_script(scripts, cache, command, *args, line=line)
    return result


def imported(result: subprocess.CompletedProcess[str]) -> set[str]:
    """The modules a `-X importtime` run loaded."""
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }


def hydra_answer(command: str, line: str, monkeypatch, capsys) -> list[str]:
    """What Hydra itself completes for `line`, with the schemas the classes register."""
    monkeypatch.setenv("COMP_LINE", line)
    capsys.readouterr()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        hydra.shell_completion(config_name=command, overrides=["query=bash"])
    return capsys.readouterr().out.split()


def query(scripts: Path, cache: Path, line: str) -> list[str]:
    command = line.split()[0].removeprefix("ddpm-")
    return light_run(scripts, cache, command, "-sc", "query=bash", line=line).stdout.split()


def test_a_groups_options_complete(scripts, cache_home):
    options = {f"model={path.stem}" for path in (CONF / "model").glob("*.yaml")}
    assert {"model=unet", "model=unet_cond"} <= options
    assert set(query(scripts, cache_home, "ddpm-train model=")) == options


def test_a_group_name_completes(scripts, cache_home):
    assert "sampler=" in query(scripts, cache_home, "ddpm-sample samp")
    assert query(scripts, cache_home, "ddpm-train trainer.max") == [
        "trainer.max_epochs=",
        "trainer.max_steps=",
    ]


@pytest.mark.parametrize(
    "line",
    [
        "ddpm-train ",
        "ddpm-sample sampler.",
        "ddpm-evaluate sampler=heun sampler.",
        "ddpm-train experiment=sinai_mnist model.",
        "ddpm-train model=unet_c",
    ],
)
def test_completion_answers_as_hydra_does(scripts, cache_home, line, monkeypatch, capsys):
    """The cached schemas give the keys that only the classes' signatures hold."""
    command = line.split()[0].removeprefix("ddpm-")
    assert query(scripts, cache_home, line) == hydra_answer(command, line, monkeypatch, capsys)


def test_completion_and_help_leave_torch_unloaded(scripts, cache_home):
    completion = light_run(scripts, cache_home, "sample", "-sc", "query=bash", line="ddpm-sample ")
    assert "sampler=" in completion.stdout.split()
    help_ = light_run(scripts, cache_home, "sample", "--help")
    assert "Usage: ddpm-sample" in help_.stdout
    for result in (completion, help_):
        loaded = imported(result)
        assert "ddpm_lightning.cli" in loaded
        assert not loaded & set(HEAVY_MODULES)


def test_bash_completes_through_the_installed_function(scripts, cache_home):
    script = (
        'eval "$(ddpm-train -sc install=bash)"\n'
        'COMP_LINE="ddpm-train model=unet_c"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=1\n'
        'hydra_bash_completion; echo "${COMPREPLY[@]}"\n'
    )
    env = {**cli_env(), "XDG_CACHE_HOME": str(cache_home)}
    env["PATH"] = f"{scripts}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert result.stdout.split() == ["model=unet_cond"], result.stderr[-2000:]


def defaults_groups(command: str) -> list[str]:
    """The config groups a command's YAML selects options of (Hydra's own left out)."""
    defaults = yaml.safe_load((CONF / f"{command}.yaml").read_text())["defaults"]
    keys = [key for entry in defaults if isinstance(entry, dict) for key in entry]
    return [key for key in keys if key != "hydra" and " " not in key]


def help_groups(text: str) -> list[str]:
    """The group names of the 'Config groups' block of a help text."""
    block = text.split("Config groups", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^  (\w+) ", block, flags=re.MULTILINE)


@pytest.mark.parametrize("command", cli.COMMANDS)
def test_help_lists_the_commands_own_groups(scripts, cache_home, command):
    text = light_run(scripts, cache_home, command, "--help").stdout
    assert re.search(rf"^Usage: ddpm-{command} ", text, flags=re.MULTILINE)
    assert help_groups(text) == defaults_groups(command)


def test_sample_help_names_no_training_group(scripts, cache_home):
    text = light_run(scripts, cache_home, "sample", "sampler=heun", "--help").stdout
    assert help_groups(text) == ["sampler", "trainer", "paths"]
    assert re.search(r"^  sampler .*\[heun\]$", text, flags=re.MULTILINE)
    for group in ("data", "optimizer", "callbacks", "logger", "experiment"):
        assert not re.search(rf"^  {group}\b", text, flags=re.MULTILINE)


@pytest.mark.parametrize("command", ["train", "sample"])
def test_help_is_hydras_app_help(scripts, cache_home, command, monkeypatch, capsys):
    """`python -m ddpm_lightning.<command> --help` (Hydra's app help) prints the same. The app
    help leaves its config as the process's HydraConfig: it is cleared so later tests compose
    outside a run."""
    monkeypatch.setattr(sys, "argv", [f"ddpm-{command}"])
    capsys.readouterr()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        args = get_args_parser().parse_args(["--help"])
        hydra.app_help(config_name=command, args_parser=get_args_parser(), args=args)
    HydraConfig.instance().cfg = None
    expected = capsys.readouterr().out
    assert light_run(scripts, cache_home, command, "--help").stdout == expected


def test_a_value_computed_at_run_time_is_completed_by_the_command(scripts, cache_home):
    """`trainer.precision` is `${best_precision:...}`, a resolver of the command's modules."""
    line = "ddpm-train trainer.precision="
    result = run_script(scripts, cache_home, "train", "-sc", "query=bash", line=line)
    (answer,) = result.stdout.split()
    assert answer in ("trainer.precision=32-true", "trainer.precision=bf16-mixed")
    assert "torch" in imported(result)


def test_an_override_hydra_refuses_goes_to_the_command(monkeypatch):
    """The command's own Hydra then reports it (here the classes' schemas are stored)."""
    monkeypatch.setattr(cli, "store_schemas", lambda: None)
    args = get_args_parser().parse_args(["--help", "sampler=nonexistent"])
    assert not cli.answered_lightly("sample", args)
    assert cli.answered_lightly("sample", Namespace(**{**vars(args), "overrides": []}))


def test_every_console_script_starts_in_the_light_entry():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {f"ddpm-{command}": "ddpm_lightning.cli:main" for command in cli.COMMANDS}


def test_a_script_of_another_name_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/bin/ddpm-bogus"])
    with pytest.raises(SystemExit, match="ddpm-bogus is none of the console scripts"):
        cli.main()


def test_the_cache_is_stale_once_a_source_changes(tmp_path, monkeypatch):
    package = tmp_path / "ddpm_lightning"
    (package / "models").mkdir(parents=True)
    source = package / "models" / "unet.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(cli, "PACKAGE_DIR", package)
    cached = tmp_path / "schemas.yaml"
    schemas = {"schema/model/unet": {"base": 8}}
    sources = ["models/unet.py"]
    cli.write_cache(cached, {"sources": sources, "fingerprint": cli.fingerprint(sources)}, schemas)
    assert cli.read_cache(cached) == schemas
    os.utime(source, ns=(0, source.stat().st_mtime_ns + 1))
    assert cli.read_cache(cached) is None
    for damaged in ("sources: [unclosed\n", "sources: [1, 2]\nschemas: {}\n", "[]\n"):
        cached.write_text(damaged)
        assert cli.read_cache(cached) is None
