"""Images decoded in the DataLoader's worker processes, for data too large to hold in memory
(a folder of the user's images, a Hugging Face dataset): the settings they share (channels,
image size, crop or pad, flips, workers), the per-image transform (torchvision's v2 transforms)
and the data module base that splits and serves them like in-memory data."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ddpm_lightning.data.images import BatchSize, InMemoryDataModule
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.settings import Range, checked

# Colour channels of the model's images: 1 (greyscale) or 3 (RGB).
Channels = Annotated[int, Range(ge=1, le=3)]
# Side of the square images in pixels; a multiple of SIZE_MULTIPLE.
ImageSize = Annotated[int, Range(ge=8)]
# The UNets' largest down-sampling factor (2^3, four levels): every image size divides by it.
SIZE_MULTIPLE = 8
# crop: resize the shorter side to the size, cut the centre; pad: resize the longer side to
# the size, pad the rest black.
Fit = Literal["crop", "pad"]
# Worker processes when data.num_workers is null, unless fewer CPUs are available.
DEFAULT_WORKERS = 4
# skip: leave unreadable files out with one warning; error: stop at the first.
OnBadFile = Literal["skip", "error"]


def default_workers() -> int:
    """4 worker processes, or as many as the CPUs this process may run on when fewer."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU counts
    cpus = len(affinity(0)) if affinity else os.cpu_count() or 1
    return min(DEFAULT_WORKERS, cpus)


def check_image_size(image_size: int) -> int:
    """`image_size`, or a one-line ConfigError unless it is a multiple of SIZE_MULTIPLE."""
    if int(image_size) % SIZE_MULTIPLE:
        below = int(image_size) // SIZE_MULTIPLE * SIZE_MULTIPLE
        raise ConfigError(
            f"data.image_size={image_size} must be a multiple of {SIZE_MULTIPLE} (the UNets "
            f"halve the image up to 3 times); use {max(below, SIZE_MULTIPLE)} or "
            f"{below + SIZE_MULTIPLE}"
        )
    return int(image_size)


def check_channels(channels: int) -> int:
    """`channels`, or a one-line ConfigError unless it is 1 or 3."""
    if int(channels) not in (1, 3):
        raise ConfigError(f"data.channels={channels} must be 1 (greyscale) or 3 (RGB)")
    return int(channels)


def fitting(image_size: int, fit: str) -> v2.Transform:
    """uint8 (C, H, W) of any size → (C, image_size, image_size), antialiased."""
    if fit == "crop":
        resize = v2.Resize(image_size, antialias=True)
    else:
        resize = v2.Resize(size=None, max_size=image_size, antialias=True)
    # CenterCrop pads with zeros (black) where the image is smaller than the crop.
    return v2.Compose([resize, v2.CenterCrop(image_size)])


def to_model_range(images: Tensor) -> Tensor:
    """uint8 (B, C, H, W) → float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def batch_flips(indices: Sequence[int], seed: int) -> Tensor:
    """Which of a batch's images to mirror (B,) bool: a function of the seed and the batch's
    indices only, so it does not touch the global RNG, and a resumed run flips as before."""
    state = np.random.SeedSequence([seed, *map(int, indices)]).generate_state(1, np.uint64)
    generator = torch.Generator().manual_seed(int(state[0]))
    return torch.rand(len(indices), generator=generator) < 0.5


class DecodedImages(Dataset):
    """Items decoded when a batch is asked for (in a worker process): subclasses define
    `read(i)` (uint8 (C, H, W) with the wanted channels, or an exception), `where(i)` (what to
    name in a message) and `subset`. A file that fails to decode is left out of its batch with
    a warning, or stops the run with `on_bad_file="error"`."""

    def __init__(
        self, labels: Tensor, transform: v2.Transform, on_bad_file: str, flip_seed: int | None
    ):
        self.labels, self.transform = labels, transform
        self.on_bad_file, self.flip_seed = on_bad_file, flip_seed

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: int) -> Tensor:
        raise NotImplementedError

    def where(self, index: int) -> str:
        raise NotImplementedError

    def subset(self, index: Tensor) -> DecodedImages:
        raise NotImplementedError

    def flipped(self, seed: int) -> DecodedImages:
        """The same items, each batch's images mirrored at random (training augmentation)."""
        copy = self.subset(torch.arange(len(self)))
        copy.flip_seed = int(seed)
        return copy

    def decoded(self, index: int) -> Tensor | None:
        """Image `index` at the model's size, uint8 (C, S, S); None when it cannot be read."""
        try:
            return self.transform(self.read(index))
        except Exception as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            message = f"{self.where(index)}: cannot be decoded ({reason})"
            if self.on_bad_file == "error":
                raise DataError(f"{message}; remove it or set data.on_bad_file=skip") from None
            warnings.warn(f"{message}; left out", stacklevel=1)
            return None

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """`x: (B, C, S, S)` in [-1, 1], `y: (B,)`; B drops by one per unreadable image."""
        images = [self.decoded(int(i)) for i in indices]
        kept = [i for i, image in zip(indices, images, strict=True) if image is not None]
        if not kept:
            raise DataError(f"no image of a batch decodes, {self.where(int(indices[0]))} first")
        x = to_model_range(torch.stack([image for image in images if image is not None]))
        if self.flip_seed is not None:
            flips = batch_flips(kept, self.flip_seed)
            x[flips] = x[flips].flip(-1)
        return x, self.labels[torch.as_tensor(kept, dtype=torch.long)]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.batch([index])
        return x[0], y[0]

    __getitems__ = batch

    def to(self, device: torch.device) -> DecodedImages:
        """Itself: batches are decoded on the CPU and moved by Lightning."""
        return self


class DecodedDataModule(InMemoryDataModule):
    """The settings and loaders of data decoded in worker processes; subclasses list their
    items in `load()` (cheaply: no image is decoded there) and say `data_shape`."""

    @checked("data")
    def __init__(
        self,
        batch_size: BatchSize = 64,
        # Colour channels: 3 (RGB) or 1 (greyscale); every image is converted to them.
        channels: Channels = 3,
        # Side of the square images in pixels, a multiple of 8.
        image_size: ImageSize = 32,
        # crop: fill the square, cutting the longer side; pad: keep all, pad black.
        fit: Fit = "crop",
        # Mirror training images left-right at random.
        augment: bool = False,
        # DataLoader worker processes that decode the images (0: in the training process);
        # null: 4, or the CPUs this process may use when fewer.
        num_workers: Annotated[int, Range(ge=0)] | None = None,
        **kwargs: Any,
    ):
        super().__init__(batch_size, **kwargs)
        self.channels, self.image_size = check_channels(channels), check_image_size(image_size)
        self.fit, self.augment = fit, bool(augment)
        self.num_workers = default_workers() if num_workers is None else int(num_workers)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    @property
    def transform(self) -> v2.Transform:
        return fitting(self.image_size, self.fit)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        if self.augment:
            train = self.splits["train"]
            assert isinstance(train, DecodedImages), "load() returns DecodedImages"
            self.splits["train"] = train.flipped(self.split_seed)

    def loader_options(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0}
