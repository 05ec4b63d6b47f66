"""Denoising diffusion models on small grey or colour images (MNIST, Fashion-MNIST, your own) with
PyTorch Lightning and Hydra."""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["__version__", "load_pretrained"]


def __getattr__(name: str) -> Any:
    """`load_pretrained` (ddpm_lightning.sharing) on first use: `import ddpm_lightning` alone
    stays light, without torch or Lightning."""
    if name == "load_pretrained":
        from ddpm_lightning.sharing import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'ddpm_lightning' has no attribute {name!r}")
