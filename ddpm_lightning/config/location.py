"""Where the configs and the checkout are, found without importing torch, so shell completion
and `--help` stay fast."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def config_dir() -> Path:
    """`conf/` shipped inside the wheel, else the checkout's top-level `conf/`."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/train.yaml next to {PACKAGE_DIR}; reinstall ddpm_lightning")


def project_root() -> str:
    """The checkout's root when running from source, else the current directory."""
    root = PACKAGE_DIR.parent
    return str(root if (root / "pyproject.toml").is_file() else Path.cwd())
