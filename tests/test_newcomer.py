"""The README's quick start as a new user runs it: a fresh copy of the checkout, the README's
install (reusing this environment's `.venv`), then every quick-start command as written, in
order, in one shell, with tiny sizes passed the documented way (Hydra overrides). Each must
exit 0, name the folder it writes to, and leave there the files its README comment names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

pytestmark = pytest.mark.slow

# The documented way to keep each command small: Hydra overrides appended to the line.
TINY = {
    "ddpm_lightning.train": [
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "+trainer.limit_test_batches=1",
        "callbacks.fld=null",
    ],
    "ddpm_lightning.sample": ["sampler.num_steps=2"],
    "ddpm_lightning.evaluate": ["sampler.num_steps=2", "num_samples=200"],
}
SWEEP_TINY = ["trainer.max_epochs=20"]
FOLDER_LINE = re.compile(r"^(?:run folder|out_dir|sweep folder): (\S+)", re.MULTILINE)
FILE_NAME = re.compile(r"\b[\w-]+\.(?:png|npz|gif|json|ckpt|csv|log)\b")


def quick_start() -> list[tuple[str, str]]:
    """(comment above, command) for each command of the README's quick-start block."""
    section = README.read_text().split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    steps, comment = [], ""
    for line in block.splitlines():
        if line.startswith("#"):
            comment = line
        elif line.strip():
            steps.append((comment, line.split("  #", 1)[0].strip()))
    return steps


def is_sweep(command: str) -> bool:
    """Whether a `python -m MODULE …` line is a multirun (`-m` after the module)."""
    return "-m" in command.split()[3:]


def tiny(command: str) -> str:
    """`command` with the overrides that make it run in seconds."""
    if command.startswith(("source ", "python -m ddpm_lightning.tools")):
        return command
    extra = SWEEP_TINY if is_sweep(command) else TINY.get(command.split()[2], [])
    return " ".join([command, *extra])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh copy of the tracked files, with this environment's `.venv` as its own."""
    copy = tmp_path_factory.mktemp("newcomer") / "ddpm_lightning"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    copy.mkdir()
    archive = subprocess.run(
        ["tar", "--null", "-T", "-", "-cf", "-"],
        cwd=ROOT,
        input=tracked,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-xf", "-"], cwd=copy, input=archive, check=True)
    (copy / ".venv").symlink_to(Path(sys.prefix))
    return copy


def test_the_quick_start_has_at_most_eight_commands_and_activates_first():
    commands = [command for _, command in quick_start()]
    assert len(commands) <= 8
    assert commands[0] == "source .venv/bin/activate"


def test_every_quick_start_command_runs_as_written(checkout):
    if not os.environ.get("DDPM_DATA_DIR"):
        pytest.skip("the quick start trains on MNIST: set DDPM_DATA_DIR to its folder")
    env = {**os.environ, "WANDB_MODE": "offline", "COLUMNS": "100"}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)
    )
    sweep_folder = None
    for comment, command in quick_start():
        if command.startswith("source "):
            continue
        line = tiny(command).replace("DATE", sweep_folder.name if sweep_folder else "DATE")
        result = subprocess.run(
            ["bash", "-c", f"source .venv/bin/activate && {line}"],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
        )
        printed = result.stdout + result.stderr
        assert result.returncode == 0, f"{line}\n{printed[-3000:]}"
        if "ddpm_lightning.tools" in command:
            continue
        folders = [checkout / match for match in FOLDER_LINE.findall(printed)]
        assert folders, f"{line} names no folder:\n{printed[:2000]}"
        folder = folders[0]
        assert folder.is_dir(), f"{line}: {folder} does not exist"
        if is_sweep(command):
            sweep_folder = folder
        written = {path.name for path in folder.rglob("*")}
        for name in FILE_NAME.findall(comment):
            assert name in written, f"{line}: {name} (named in {comment!r}) not in {folder}"
