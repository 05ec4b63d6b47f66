"""A Hugging Face `datasets` dataset as training data: from the Hub (kept in its cache), a
local dataset folder, a parquet file or a `save_to_disk` folder. Its rows stay in Arrow files
on disk; the workers decode each batch's images, convert them to `channels`, fit them to
`image_size` and scale them to [-1, 1]. Needs the optional `datasets` package."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2

from ddpm_lightning.data.decoded import DecodedDataModule, DecodedImages
from ddpm_lightning.data.image_folder import PIL_MODES
from ddpm_lightning.data.images import BatchSize
from ddpm_lightning.data.registry import DatasetRecord
from ddpm_lightning.errors import ConfigError, DataError, import_optional
from ddpm_lightning.settings import checked

# Files `save_to_disk` writes: of one split, of a dict of splits.
SAVED_MARKERS = ("state.json", "dataset_dict.json")


def first_line(exc: BaseException) -> str:
    """An exception's message in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_splits(path: str) -> Any:
    """Every split of the dataset at `path` (a `datasets.DatasetDict`, or a Dataset when a
    `save_to_disk` folder holds one split); one line for each way that fails."""
    datasets = import_optional("datasets", "data=hf", "data")
    local = Path(path).expanduser()
    try:
        if local.is_dir() and any((local / name).is_file() for name in SAVED_MARKERS):
            return datasets.load_from_disk(str(local))
        if local.is_file():
            return datasets.load_dataset(local.suffix.lstrip("."), data_files=str(local))
        return datasets.load_dataset(str(local) if local.is_dir() else path)
    except ConnectionError:
        raise DataError(
            f"data.path={path} is neither a local dataset nor in the Hugging Face cache, and the "
            "Hub cannot be reached (offline); download it once online, or point data.path at a "
            "local folder, parquet file or save_to_disk folder"
        ) from None
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataError(f"data.path={path} cannot be loaded: {first_line(exc)}") from None


def pick_split(splits: Any, split: str, path: str) -> Any:
    """The split named `split`, or a one-line ConfigError naming those there are."""
    if not hasattr(splits, "keys"):
        return splits
    if split not in splits:
        raise ConfigError(
            f"data.split={split}: {path} has the splits {', '.join(splits)}; choose one of them"
        )
    return splits[split]


def check_column(table: Any, column: str, key: str, path: str) -> None:
    """A one-line ConfigError unless `table` has `column`."""
    if column not in table.column_names:
        raise ConfigError(
            f"{key}={column}: {path} has no such column; its columns are "
            f"{', '.join(table.column_names)}"
        )


def to_tensor(image: Any, channels: int) -> Tensor:
    """uint8 (channels, H, W) of a dataset cell: a PIL image, or an (H, W[, C]) array."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    array = np.asarray(image.convert(PIL_MODES[channels]))
    return torch.from_numpy(array.copy()).view(*array.shape[:2], -1).permute(2, 0, 1)


def class_labels(table: Any, column: str) -> tuple[tuple[str, ...], Tensor]:
    """(class names, labels (N,)): a ClassLabel column's names, else its sorted values."""
    values = list(table[column])
    feature = table.features[column]
    if hasattr(feature, "names"):
        return tuple(feature.names), torch.tensor(values, dtype=torch.long)
    names = tuple(sorted({str(value) for value in values}))
    index = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([index[str(value)] for value in values], dtype=torch.long)


class DatasetRows(DecodedImages):
    """Rows `rows` (N,) of a `datasets.Dataset`, their `column` decoded as `channels`."""

    def __init__(
        self,
        table: Any,
        column: str,
        rows: Tensor,
        labels: Tensor,
        channels: int,
        transform: v2.Transform,
        flip_seed: int | None = None,
    ):
        super().__init__(labels, transform, "skip", flip_seed)
        self.table, self.column, self.rows, self.channels = table, column, rows, channels

    def read(self, index: int) -> Tensor:
        return to_tensor(self.table[int(self.rows[index])][self.column], self.channels)

    def where(self, index: int) -> str:
        return f"row {int(self.rows[index])} of column {self.column}"

    def subset(self, index: Tensor) -> DatasetRows:
        return DatasetRows(
            self.table,
            self.column,
            self.rows[index],
            self.labels[index],
            self.channels,
            self.transform,
            self.flip_seed,
        )


class HFDataModule(DecodedDataModule):
    """A Hugging Face dataset: `x: (B, channels, image_size, image_size)` in [-1, 1], `y: (B,)`
    the label column's class index (0 without one). The test set is `test_split` when the
    dataset has it, else the held-out validation split."""

    @checked("data")
    def __init__(
        self,
        # Hub dataset id (e.g. ylecun/mnist), or a local dataset folder, parquet file or
        # save_to_disk folder.
        path: str | None = None,
        # The split to train (and hold out val/loss) on.
        split: str = "train",
        # The split of test/loss; used only when the dataset has it.
        test_split: str | None = "test",
        # The column of images.
        image_column: str = "image",
        # The column of class labels; null: unlabelled.
        label_column: str | None = None,
        batch_size: BatchSize = 64,
        **kwargs: Any,
    ):
        super().__init__(batch_size, **kwargs)
        if path is None:
            raise ConfigError("data=hf needs data.path=NAME_OR_PATH, a Hub id or a local dataset")
        self.path, self.split, self.test_split = path, split, test_split
        self.image_column, self.label_column = image_column, label_column

    @functools.cached_property
    def splits_on_disk(self) -> Any:
        """The dataset's splits, loaded (memory-mapped) once."""
        return load_splits(self.path)

    def table(self, split: str) -> Any:
        """One split, its columns checked."""
        table = pick_split(self.splits_on_disk, split, self.path)
        check_column(table, self.image_column, "data.image_column", self.path)
        if self.label_column is not None:
            check_column(table, self.label_column, "data.label_column", self.path)
        return table

    @functools.cached_property
    def classes(self) -> tuple[tuple[str, ...], Tensor]:
        """(class names, labels (N,)) of the training split; ((), zeros) without labels."""
        table = self.table(self.split)
        if self.label_column is None:
            return (), torch.zeros(len(table), dtype=torch.long)
        return class_labels(table, self.label_column)

    @property
    def record(self) -> DatasetRecord:
        """A record made from the dataset: its id, the image shape, the class names."""
        local = Path(self.path).expanduser().exists()
        return DatasetRecord(
            name=Path(self.path).name if local else self.path,
            title=Path(self.path).name if local else self.path,
            shape=self.data_shape,
            class_names=self.classes[0],
            hub=None if local else self.path,
        )

    def rows(self, split: str, labels: Tensor | None = None) -> DatasetRows:
        table = self.table(split)
        if labels is None:
            labels = torch.zeros(len(table), dtype=torch.long)
        return DatasetRows(
            table,
            self.image_column,
            torch.arange(len(table)),
            labels,
            self.channels,
            self.transform,
        )

    # Decoded splits stand in for TensorBatches: the same len, labels, subset, batch and to.
    def load(self) -> tuple[DatasetRows, DatasetRows | None]:  # type: ignore[override]
        train = self.rows(self.split, self.classes[1])
        if len(train) < 2:
            raise DataError(
                f"data.path={self.path}: split {self.split} has {len(train)} rows; training "
                "needs at least 2, one of them held out for val/loss"
            )
        has_test = hasattr(self.splits_on_disk, "keys") and self.test_split in self.splits_on_disk
        if not has_test or self.test_split is None:
            return train, None
        test_labels = None
        if self.label_column is not None:
            names, test_labels = class_labels(self.table(self.test_split), self.label_column)
            if names != self.classes[0]:
                raise DataError(
                    f"data.path={self.path}: the {self.test_split} split's classes differ from "
                    f"the {self.split} split's; set data.test_split=null"
                )
        return train, self.rows(self.test_split, test_labels)
