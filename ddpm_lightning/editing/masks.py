"""Inpainting masks: which pixels to keep and which to fill, by name or from a picture.

A mask here is `known`: (H, W) float, 1 where the input is kept and 0 where the model fills
in. Names say the region to fill: `bottom` fills the bottom half and keeps the top; a mask
picture fills its white pixels (as a drawing canvas paints the part to redo).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ddpm_lightning.errors import ConfigError

MASK_NAMES = ("top", "bottom", "left", "right", "center", "random:P")


def filled_region(name: str, height: int, width: int) -> Tensor:
    """(H, W) bool, True in the region `name` (top, bottom, left, right, center) names:
    a half of the image, or the central square of half its side."""
    fill = torch.zeros(height, width, dtype=torch.bool)
    h, w = height // 2, width // 2
    regions = {
        "top": (slice(0, h), slice(None)),
        "bottom": (slice(h, None), slice(None)),
        "left": (slice(None), slice(0, w)),
        "right": (slice(None), slice(w, None)),
        "center": (slice(height // 4, height // 4 + h), slice(width // 4, width // 4 + w)),
    }
    fill[regions[name]] = True
    return fill


def random_region(share: str, height: int, width: int, seed: int) -> Tensor:
    """(H, W) bool: each pixel filled with probability `share` (in [0, 1]), from `seed`."""
    try:
        p = float(share)
    except ValueError:
        p = -1.0
    if not 0 <= p <= 1:
        raise ConfigError(f"mask=random:{share}: the share of pixels to fill must lie in [0, 1]")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(height, width, generator=generator) < p


def mask_from_picture(path: Path, height: int, width: int) -> Tensor:
    """(H, W) bool, True where the picture at `path` is light (> 127 in grey): pixels to fill."""
    try:
        with Image.open(path) as picture:
            grey = np.asarray(picture.convert("L"))
    except (OSError, UnidentifiedImageError):
        raise ConfigError(
            f"mask={path} is no readable picture; give a PNG or a mask name"
        ) from None
    if grey.shape != (height, width):
        raise ConfigError(
            f"mask={path} is {grey.shape[1]}x{grey.shape[0]} but the images are "
            f"{width}x{height}; draw the mask at the images' size"
        )
    return torch.from_numpy(grey > 127)


def known_mask(spec: str, height: int, width: int, seed: int = 0) -> Tensor:
    """`known` (H, W) float: 1 to keep, 0 to fill, for the mask `spec`: a name of `MASK_NAMES`
    or the path of a mask picture (white: fill)."""
    spec = str(spec)
    if spec.startswith("random:"):
        fill = random_region(spec.removeprefix("random:"), height, width, seed)
    elif spec in MASK_NAMES:
        fill = filled_region(spec, height, width)
    elif Path(spec).is_file():
        fill = mask_from_picture(Path(spec), height, width)
    else:
        raise ConfigError(
            f"mask={spec} is neither a mask picture nor a mask name; choose one of "
            f"{', '.join(MASK_NAMES)} or give a PNG path (white: fill)"
        )
    return (~fill).float()
