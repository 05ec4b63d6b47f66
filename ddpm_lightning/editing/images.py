"""The images an edit starts from, in the model's terms: (N, C, H, W) floats in [-1, 1].

Sources: a picture file (PNG, JPEG, …), a folder of them (sorted by name), an .npz with an
`images` array (uint8, as `sample` writes it, with `labels` when present), or `test:INDEX` /
`test:START-END` for images of the model's dataset's test set. Pictures of another size are
resized to the model's, with a warning.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ddpm_lightning.data.images import load_split, to_model_range
from ddpm_lightning.errors import ConfigError

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEST_SPEC = re.compile(r"test:(\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class Inputs:
    """Images (N, C, H, W) in [-1, 1], their labels (N,) where the source has them, and the
    source as given."""

    images: Tensor
    labels: Tensor | None
    source: str


def fitted(images: Tensor, shape: tuple[int, ...], source: str) -> Tensor:
    """uint8 images (N, C', H', W') → floats (N, C, H, W) in [-1, 1]: grey or RGB converted to
    the model's channels, another size resized (bilinear, antialiased) with a warning."""
    channels, height, width = shape
    if images.shape[1] != channels:
        images = images.float().mean(1, keepdim=True).expand(-1, channels, -1, -1)
    if tuple(images.shape[-2:]) != (height, width):
        warnings.warn(
            f"{source}: images are {images.shape[-1]}x{images.shape[-2]}, the model's "
            f"{width}x{height}; resized",
            stacklevel=3,
        )
        images = TF.resize(images.float(), [height, width], antialias=True)
    return (images.float() / 127.5 - 1).clamp(-1, 1)


def read_picture(path: Path) -> Tensor:
    """One picture file → uint8 (1, C, H, W), grey (C = 1) or RGB (C = 3)."""
    try:
        with Image.open(path) as picture:
            mode = "L" if picture.mode in ("1", "L", "LA", "I", "I;16", "P") else "RGB"
            array = np.asarray(picture.convert(mode))
    except (OSError, UnidentifiedImageError):
        raise ConfigError(f"image={path} is no readable picture (PNG, JPEG, …)") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(array.copy())[None]


def read_npz(path: Path) -> tuple[Tensor, Tensor | None]:
    """An .npz with `images` uint8 (N, C, H, W) or (N, H, W), and `labels` (N,) if present."""
    try:
        with np.load(path) as arrays:
            images, labels = arrays["images"], arrays.get("labels")
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"image={path} is no .npz with an `images` array") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ConfigError(f"image={path}: `images` must be uint8 (N, C, H, W); got {images.shape}")
    images = images[:, None] if images.ndim == 3 else images
    return torch.from_numpy(images), None if labels is None else torch.from_numpy(labels).long()


def read_folder(folder: Path) -> Tensor:
    """Every picture in `folder`, by name, as one uint8 batch (the first picture's size)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICTURE_SUFFIXES)
    if not paths:
        raise ConfigError(f"image={folder} holds no pictures ({', '.join(PICTURE_SUFFIXES)})")
    pictures = [read_picture(path) for path in paths]
    size = pictures[0].shape[-2:]
    return torch.cat([TF.resize(p, list(size), antialias=True) for p in pictures])


def test_images(spec: str, dataset: str, data_root: str | Path, size: int) -> tuple[Tensor, Tensor]:
    """`test:INDEX` or `test:START-END` (END excluded): uint8 (N, 1, size, size) test images of
    `dataset`, padded black to the models' `size` as in training, and their labels."""
    match = TEST_SPEC.fullmatch(spec)
    if match is None:
        raise ConfigError(f"image={spec}: write test:INDEX or test:START-END, e.g. test:0-16")
    images, labels = load_split(data_root, dataset, train=False)
    start = int(match.group(1))
    end = start + 1 if match.group(2) is None else int(match.group(2))
    if not 0 <= start < end <= len(images):
        raise ConfigError(
            f"image={spec}: the {dataset} test set holds images 0 to {len(images) - 1}"
        )
    padded = to_model_range(images[start:end], pad=max(0, (size - images.shape[-1]) // 2))
    return ((padded + 1) * 127.5).round().to(torch.uint8), labels[start:end]


def load_inputs(
    spec: str, shape: tuple[int, ...], dataset: str | None = None, data_root: str | Path = "."
) -> Inputs:
    """The images `spec` names (a picture, a folder, an .npz or `test:…`), fitted to the
    model's image `shape` (C, H, W)."""
    spec = str(spec)
    labels = None
    if spec.startswith("test:"):
        if dataset is None:
            raise ConfigError(f"image={spec} needs a model that records its dataset")
        raw, labels = test_images(spec, dataset, data_root, shape[-1])
    else:
        path = Path(spec)
        if not path.exists():
            raise ConfigError(
                f"image={spec} does not exist; give a picture, a folder, an .npz or test:INDEX"
            )
        if path.is_dir():
            raw = read_folder(path)
        elif path.suffix == ".npz":
            raw, labels = read_npz(path)
        else:
            raw = read_picture(path)
    return Inputs(fitted(raw, tuple(shape), spec), labels, spec)
