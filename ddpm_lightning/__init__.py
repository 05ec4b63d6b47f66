"""Denoising diffusion models on small grey or colour images (MNIST, Fashion-MNIST, your own) with
PyTorch Lightning and Hydra."""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["__version__", "load_folder_guide", "load_pretrained"]


def __getattr__(name: str) -> Any:
    """`load_pretrained` and `load_folder_guide` (ddpm_lightning.sharing) on first use:
    `import ddpm_lightning` alone stays light, without torch or Lightning."""
    if name in ("load_pretrained", "load_folder_guide"):
        from ddpm_lightning import sharing

        return getattr(sharing, name)
    raise AttributeError(f"module 'ddpm_lightning' has no attribute {name!r}")
