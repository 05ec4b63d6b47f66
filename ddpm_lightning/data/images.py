"""MNIST and Fashion-MNIST as in-memory tensors: scaled to [-1, 1], padded black 28 → 32 px."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, cast

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loops.progress import _ProcessedTracker
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ddpm_lightning.data.registry import DATASETS, DatasetRecord, dataset_record
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.settings import OneOf, Range, Seed, checked

RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1-D, images: 3-D (unsigned-byte IDX files)
BatchSize = Annotated[int, Range(ge=1)]


def raw_folder(root: str | Path, dataset: str) -> Path:
    """Where torchvision keeps the four IDX files, e.g. `<root>/MNIST/raw`."""
    reader = dataset_record(dataset).torchvision
    assert reader is not None, f"{dataset} is read from IDX files by torchvision"
    return Path(root) / reader.__name__ / "raw"


def check_idx_file(path: Path) -> tuple[int, ...]:
    """Validate an unsigned-byte IDX file's header against its size; return its shape."""
    with open(path, "rb") as f:
        header = f.read(4)
        if len(header) < 4:
            raise DataError(f"{path}: truncated IDX file ({path.stat().st_size} bytes, no header)")
        magic = int.from_bytes(header, "big")
        if magic not in IDX_MAGIC:
            raise DataError(
                f"{path}: not an unsigned-byte IDX file (magic number {magic}, "
                f"expected {' or '.join(map(str, IDX_MAGIC))}); re-download it"
            )
        ndim = IDX_MAGIC[magic]
        dims = f.read(4 * ndim)
        if len(dims) < 4 * ndim:
            raise DataError(f"{path}: truncated IDX header; re-download it")
    shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(torch.tensor(shape).prod())
    actual = path.stat().st_size
    if actual != expected:
        raise DataError(
            f"{path}: truncated or corrupt IDX file: header says shape {shape} "
            f"({expected} bytes) but the file has {actual} bytes; re-download it"
        )
    return shape


def check_pair(folder: Path, images_name: str, labels_name: str) -> None:
    """Both IDX files sound, the first 28×28 images and the second one label per image."""
    images, labels = check_idx_file(folder / images_name), check_idx_file(folder / labels_name)
    if len(images) != 3 or images[1:] != (28, 28) or len(labels) != 1 or labels[0] != images[0]:
        raise DataError(
            f"{folder}: {images_name} holds an array of shape {images} and {labels_name} one "
            f"of shape {labels}; they must be N images of 28×28 and their N labels, "
            "re-download them"
        )


def load_split(root: str | Path, dataset: str, train: bool) -> tuple[Tensor, Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64, downloading when possible."""
    reader = dataset_record(dataset).torchvision
    if reader is None:
        raise ConfigError(f"data.name={dataset} has no IDX files for MNISTDataModule to read")
    folder = raw_folder(root, dataset)
    names = RAW_FILES["train" if train else "test"]
    if not all((folder / name).is_file() for name in names):
        try:
            reader(str(root), train=train, download=True)
        except Exception as exc:
            expected = ", ".join(RAW_FILES["train"] + RAW_FILES["test"])
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"{dataset} data not found in {folder} and the download failed ({reason}); "
                f"put {expected} there, or set data.root=PATH or DDPM_DATA_DIR=PATH "
                f"to the folder that holds {folder.parent.name}/raw"
            ) from None
    check_pair(folder, *names)
    split = reader(str(root), train=train, download=False)
    return split.data, split.targets.long()


def to_model_range(images: Tensor, pad: int) -> Tensor:
    """uint8 (N, H, W) → float32 (N, 1, H + 2·pad, W + 2·pad) in [-1, 1], padding black (−1)."""
    images = F.pad(images.unsqueeze(1), (pad,) * 4)
    return images.float().div_(127.5).sub_(1.0)


class TensorBatches(Dataset):
    """Inputs (N, …) and labels (N,) served a whole batch per index list.

    The DataLoader hands each batch's indices to `__getitems__`, so one indexing op cuts a
    batch: no per-item transforms or collation.
    """

    def __init__(self, inputs: Tensor, labels: Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.inputs[index], self.labels[index]

    def subset(self, index: Tensor) -> TensorBatches:
        """The examples at `index` (K,), as batches of the same kind."""
        return TensorBatches(self.inputs[index], self.labels[index])

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """`x: (B, …)`, `y: (B,)` for B indices."""
        index = torch.as_tensor(indices, device=self.inputs.device)
        return self.inputs[index], self.labels[index]

    __getitems__ = batch

    def to(self, device: torch.device) -> TensorBatches:
        return TensorBatches(self.inputs.to(device), self.labels.to(device))


def whole_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The loaders' `collate_fn`: `TensorBatches.batch` has already stacked the batch."""
    return batch


class EpochShuffle(RandomSampler):
    """A new permutation every epoch that depends only on `(seed, epoch)`, so a run resumed
    mid-epoch continues the same order. Lightning calls `set_epoch` before each epoch; NumPy's
    `SeedSequence` mixes the pair, so (seed, epoch + 1) does not repeat (seed + 1, epoch)."""

    def __init__(self, data_source: TensorBatches, seed: int, epoch: int = 0):
        super().__init__(data_source)
        self.seed, self.epoch = int(seed), int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        (state,) = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)
        generator = torch.Generator().manual_seed(int(state))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class SkippingLoader(DataLoader):
    """A DataLoader whose first iteration starts `skip` batches in: how a run resumed
    mid-epoch passes over the batches of that epoch it has already trained on.

    The skip happens at the first `next()`, not at `iter()`: Lightning creates the iterator
    before it calls the sampler's `set_epoch` (which matters for DDP's `DistributedSampler`).
    """

    def __init__(self, dataset: TensorBatches, skip: int = 0, **kwargs: Any):
        super().__init__(dataset, **kwargs)
        self.skip = int(skip)

    # An islice over DataLoader's iterator, not the `_BaseDataLoaderIter` that torch declares.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip, self.skip = self.skip, 0
        batches = super().__iter__()
        return itertools.islice(batches, skip, None) if skip else batches


class InMemoryDataModule(L.LightningDataModule):
    """A seeded train/val split of a training set plus a test set, all held as tensors.

    Subclasses implement `load()` and `data_shape`. Batches are `(x, y)` cut from memory
    (no worker processes); on a GPU (any accelerator) the splits live on the device.
    Datasets that decode files instead (`data/decoded.py`) return splits of another kind with
    the same `subset`, `batch` and `to`, and their worker processes in `loader_options`. The
    loaders have their own generators, so starting an iterator leaves the global RNG (t and ε
    in training) alone: a resumed run draws the same numbers as an uninterrupted one.
    """

    @checked("data")
    def __init__(
        self,
        # Examples per training and evaluation batch.
        batch_size: BatchSize,
        # Share of the training set held out for validation.
        val_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.1,
        # Seed of the training/validation split (and of the spiral's points, the drawn shapes).
        split_seed: Seed = 42,
    ):
        super().__init__()
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.splits: dict[str, TensorBatches] = {}
        self.shuffle_seed = torch.initial_seed()
        self.resume_at: dict[str, int] | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one model input, e.g. (C, H, W)."""
        raise NotImplementedError

    def load(self) -> tuple[TensorBatches, TensorBatches | None]:
        """The whole training set and the test set (None: the validation split serves as the
        test set), in the model's range."""
        raise NotImplementedError

    @property
    def record(self) -> DatasetRecord | None:
        """The registry's record of this data (name, shape, class names), None for points."""
        return DATASETS.get(str(getattr(self, "name", None)))

    @property
    def num_classes(self) -> int | None:
        """Classes a conditional model of this data needs; None for unlabelled data."""
        record = self.record
        return record.num_classes if record is not None and record.class_names else None

    def loader_options(self) -> dict[str, Any]:
        """Extra DataLoader arguments (worker processes); none for data held in memory."""
        return {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        full, test = self.load()
        generator = torch.Generator().manual_seed(self.split_seed)
        order = torch.randperm(len(full), generator=generator)
        num_val = max(1, int(round(self.val_fraction * len(full))))
        if num_val >= len(full):
            raise ConfigError(f"data.val_fraction={self.val_fraction} leaves no training data")
        val_idx, train_idx = order[:num_val], order[num_val:]
        self.splits = {
            "train": full.subset(train_idx),
            "val": full.subset(val_idx),
        }
        self.splits["test"] = self.splits["val"] if test is None else test
        trainer = self.trainer
        if trainer is not None and trainer.strategy.root_device.type != "cpu":
            device = trainer.strategy.root_device
            self.splits = {key: split.to(device) for key, split in self.splits.items()}

    def trained_position(self) -> tuple[int, int]:
        """(epoch, batches of it already trained on) from the trainer's loop progress; an
        epoch whose batches are all done counts as the start of the next one."""
        assert self.trainer is not None, "only called by Lightning, with a trainer attached"
        # Lightning declares `current` a _ReadyCompletedTracker but creates _ProcessedTrackers.
        epochs = cast(_ProcessedTracker, self.trainer.fit_loop.epoch_progress.current)
        batches = cast(
            _ProcessedTracker, self.trainer.fit_loop.epoch_loop.batch_progress.current
        ).processed
        in_epoch = epochs.started > epochs.processed
        if not in_epoch or batches >= self.trainer.num_training_batches:
            return epochs.processed + int(in_epoch), 0
        return epochs.processed, batches

    def state_dict(self) -> dict[str, int]:
        """Where training stands in the data, saved in checkpoints. Lightning restores it
        before it asks for the training loader, so a resumed run continues mid-epoch."""
        epoch, batches = self.trained_position()
        return {"epoch": epoch, "batches": batches, "shuffle_seed": self.shuffle_seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.shuffle_seed = state["shuffle_seed"]
        self.resume_at = {"epoch": state["epoch"], "batches": state["batches"]}

    def train_dataloader(self) -> SkippingLoader:
        """Shuffled whole batches. The shuffle seed is torch's initial seed (the run's `seed`)
        or the resumed checkpoint's; the first loader after a resume starts at the saved
        epoch and position in it."""
        resume, self.resume_at = self.resume_at or {"epoch": 0, "batches": 0}, None
        dataset = self.splits["train"]
        return SkippingLoader(
            dataset,
            skip=resume["batches"],
            batch_size=self.batch_size,
            sampler=EpochShuffle(dataset, self.shuffle_seed, resume["epoch"]),
            collate_fn=whole_batch,
            generator=torch.Generator(),
            **self.loader_options(),
        )

    def in_order(self, split: str) -> DataLoader:
        """Whole batches of `split` ("val", "test") in order."""
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            # torch types collate_fn for lists of items; `__getitems__` hands it a whole batch.
            collate_fn=cast(Callable[[list[Any]], Any], whole_batch),
            generator=torch.Generator(),
            **self.loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        return self.in_order("val")

    def test_dataloader(self) -> DataLoader:
        return self.in_order("test")


class MNISTDataModule(InMemoryDataModule):
    """MNIST or Fashion-MNIST: `x: (B, 1, 32, 32)` in [-1, 1] (black padding), `y: (B,)` labels."""

    @checked("data")
    def __init__(
        self,
        # The dataset, a record of the dataset registry.
        name: Annotated[str, OneOf(DATASETS)] = "mnist",
        # Folder holding MNIST/raw and FashionMNIST/raw; null: $DDPM_DATA_DIR, else data/.
        root: str | None = None,
        batch_size: BatchSize = 64,
        # Black pixels added per side: 28 + 2·2 = 32, divisible by the UNet's 2^(levels − 1).
        pad: Annotated[int, Range(ge=0)] = 2,
        **kwargs: Any,
    ):
        super().__init__(batch_size, **kwargs)
        self.name: str = name
        self.root = root or os.environ.get("DDPM_DATA_DIR") or "data"
        self.pad = int(pad)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (1, 28 + 2 * self.pad, 28 + 2 * self.pad)

    def prepare_data(self) -> None:
        for train in (True, False):
            load_split(self.root, self.name, train)

    def load(self) -> tuple[TensorBatches, TensorBatches]:
        splits = []
        for train in (True, False):
            images, labels = load_split(self.root, self.name, train)
            splits.append(TensorBatches(to_model_range(images, self.pad), labels))
        return splits[0], splits[1]
