"""What reproduces a run: the command line, package versions and the git commit."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = (
    "ddpm_lightning",
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "numpy",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(directory: Path) -> dict[str, str | bool] | None:
    """HEAD's hash and whether the work tree has changes; None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_info(output_dir: Path, project_root: Path) -> Path:
    """Write `run_info.json` (command, versions, git) into the run folder."""
    output_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "versions": package_versions(),
        "git": git_commit(project_root),
    }
    path = output_dir / "run_info.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
