"""A folder of the user's images as training data: listed once at start (`listing.py`), decoded,
converted to `channels`, fitted to `image_size` and scaled to [-1, 1] in the DataLoader's
workers. With `labels="folders"` each first-level subfolder is a class (sorted by name)."""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from ddpm_lightning.data.decoded import DecodedDataModule, DecodedImages, OnBadFile
from ddpm_lightning.data.images import BatchSize
from ddpm_lightning.data.listing import PNG_SIGNATURE, SUFFIXES, Listing, list_images
from ddpm_lightning.data.registry import DatasetRecord
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.settings import checked

# Bad files a message names before "…".
SHOWN = 3
PIL_MODES = {1: "L", 3: "RGB"}
READ_MODES = {1: ImageReadMode.GRAY, 3: ImageReadMode.RGB}


def read_image(path: Path, channels: int) -> Tensor:
    """uint8 (channels, H, W) of an image file, greyscale, palette and alpha images converted
    (alpha dropped). JPEG and WebP go to torchvision's decoders; PNG and BMP to Pillow's,
    which raise on a damaged file where torchvision's PNG decoder can crash the process
    (pytorch/vision#3613, and still in 0.29 for a damaged IDAT stream)."""
    raw = path.read_bytes()
    if raw.startswith((PNG_SIGNATURE, b"BM")):
        with Image.open(io.BytesIO(raw)) as image:
            array = np.asarray(image.convert(PIL_MODES[channels]))
        return torch.from_numpy(array.copy()).view(*array.shape[:2], -1).permute(2, 0, 1)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    return match_channels(decode_image(data, mode=READ_MODES[channels]), channels)


def match_channels(image: Tensor, channels: int) -> Tensor:
    """uint8 (C, H, W) as `channels` (what a decoder left unconverted: WebP stays RGB):
    luma of RGB (ITU-R BT.601), grey repeated, alpha dropped."""
    image = image[:3] if image.shape[0] == 4 else image
    if image.shape[0] == channels:
        return image
    if channels == 1:
        return v2.functional.rgb_to_grayscale(image)
    return image.expand(3, -1, -1)


class ImageFiles(DecodedImages):
    """The files `names` under `root` with their labels (N,), read as `channels`."""

    def __init__(
        self,
        root: Path,
        names: tuple[str, ...],
        labels: Tensor,
        channels: int,
        transform: v2.Transform,
        on_bad_file: str = "skip",
        flip_seed: int | None = None,
    ):
        super().__init__(labels, transform, on_bad_file, flip_seed)
        self.root, self.names, self.channels = root, names, channels

    def read(self, index: int) -> Tensor:
        return read_image(self.root / self.names[index], self.channels)

    def where(self, index: int) -> str:
        return str(self.root / self.names[index])

    def subset(self, index: Tensor) -> ImageFiles:
        names = tuple(self.names[i] for i in index.tolist())
        return ImageFiles(
            self.root,
            names,
            self.labels[index],
            self.channels,
            self.transform,
            self.on_bad_file,
            self.flip_seed,
        )


def bad_files_line(listing: Listing) -> str:
    """One line: how many files are left out and why, naming the first few."""
    shown = ", ".join(f"{name} ({why})" for name, why in listing.bad[:SHOWN])
    more = ", …" if len(listing.bad) > SHOWN else ""
    return (
        f"data.root={listing.root}: {len(listing.bad)} of "
        f"{len(listing.bad) + len(listing.images)} image files cannot be read: {shown}{more}"
    )


def folder_classes(listing: Listing) -> tuple[tuple[str, ...], Tensor]:
    """(class names: the first-level subfolders holding images, sorted; labels (N,))."""
    loose = [name for name in listing.images if "/" not in name]
    if loose:
        raise DataError(
            f"data.labels=folders: {len(loose)} images lie in data.root={listing.root} itself, "
            f"outside any class folder (e.g. {loose[0]}); move them into one or set "
            "data.labels=none"
        )
    folders = [name.split("/", 1)[0] for name in listing.images]
    names = tuple(sorted(set(folders)))
    if len(names) < 2:
        raise DataError(
            f"data.labels=folders: data.root={listing.root} has {len(names)} class folder "
            f"({', '.join(names)}); a conditional model needs at least 2, or set data.labels=none"
        )
    index = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([index[folder] for folder in folders], dtype=torch.long)


class ImageFolderDataModule(DecodedDataModule):
    """Every image under `root`: `x: (B, channels, image_size, image_size)` in [-1, 1],
    `y: (B,)` the class folder's index (0 without labels). The test set is the held-out
    validation split."""

    @checked("data")
    def __init__(
        self,
        # The folder of images (PNG, JPEG, WebP, BMP; nested folders included).
        root: str | None = None,
        # none: unlabelled; folders: each first-level subfolder of root is a class.
        labels: Literal["none", "folders"] = "none",
        # skip: leave unreadable files out with one warning; error: stop, naming them.
        on_bad_file: OnBadFile = "skip",
        batch_size: BatchSize = 64,
        **kwargs: Any,
    ):
        super().__init__(batch_size, **kwargs)
        if root is None:
            raise ConfigError("data=image_folder needs data.root=PATH, the folder of your images")
        self.root, self.labels, self.on_bad_file = Path(root).expanduser(), labels, on_bad_file

    @functools.cached_property
    def listing(self) -> Listing:
        """The folder's images, listed and checked once; one warning for unreadable ones."""
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DataError(f"data.root={self.root} {what}; point it at a folder of images")
        listing = list_images(self.root)
        if listing.bad and self.on_bad_file == "error":
            raise DataError(f"{bad_files_line(listing)}; remove them or set data.on_bad_file=skip")
        if not listing.images:
            suffixes = ", ".join(s.lstrip(".") for s in SUFFIXES)
            unreadable = f" ({len(listing.bad)} unreadable)" if listing.bad else ""
            raise DataError(
                f"data.root={self.root} holds no readable images{unreadable}: it needs "
                f"{suffixes} files, in it or in folders under it"
            )
        if len(listing.images) < 2:
            raise DataError(
                f"data.root={self.root} holds 1 image ({listing.images[0]}); training needs at "
                "least 2, one of them held out for val/loss"
            )
        if listing.bad:
            rank_zero_warn(f"{bad_files_line(listing)}; they are left out")
        return listing

    @functools.cached_property
    def classes(self) -> tuple[tuple[str, ...], Tensor]:
        """(class names, labels (N,)): the folders' with labels=folders, else ((), zeros)."""
        if self.labels == "folders":
            return folder_classes(self.listing)
        return (), torch.zeros(len(self.listing.images), dtype=torch.long)

    @property
    def record(self) -> DatasetRecord:
        """A record made from the folder: its name, the image shape, the class folders."""
        name = self.root.resolve().name or str(self.root)
        return DatasetRecord(
            name=name, title=name, shape=self.data_shape, class_names=self.classes[0]
        )

    # Decoded splits stand in for TensorBatches: the same len, labels, subset, batch and to.
    def load(self) -> tuple[ImageFiles, None]:  # type: ignore[override]
        names, labels = self.listing.images, self.classes[1]
        transform, bad = self.transform, self.on_bad_file
        return ImageFiles(self.root, names, labels, self.channels, transform, bad), None
