"""MNIST and Fashion-MNIST as in-memory tensors: scaled to [-1, 1], padded black 28 → 32 px."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torchvision import datasets

from ddpm_lightning.errors import ConfigError, DataError

DATASETS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}
RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_MAGIC = {2049: 1, 2051: 3}  # labels: 1-D, images: 3-D (unsigned-byte IDX files)


def raw_folder(root: str | Path, dataset: str) -> Path:
    """Where torchvision keeps the four IDX files, e.g. `<root>/MNIST/raw`."""
    return Path(root) / DATASETS[dataset].__name__ / "raw"


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


def load_split(root: str | Path, dataset: str, train: bool) -> tuple[Tensor, Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64, downloading when possible."""
    if dataset not in DATASETS:
        raise ConfigError(f"data.name={dataset!r} is unknown; choose one of {sorted(DATASETS)}")
    folder = raw_folder(root, dataset)
    names = RAW_FILES["train" if train else "test"]
    if not all((folder / name).is_file() for name in names):
        try:
            DATASETS[dataset](str(root), train=train, download=True)
        except Exception as exc:
            expected = ", ".join(RAW_FILES["train"] + RAW_FILES["test"])
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"{dataset} data not found in {folder} and the download failed ({reason}); "
                f"put {expected} there, or set data.root=PATH or DDPM_DATA_DIR=PATH "
                f"to the folder that holds {folder.parent.name}/raw"
            ) from None
    for name in names:
        check_idx_file(folder / name)
    split = DATASETS[dataset](str(root), train=train, download=False)
    return split.data, split.targets.long()


def to_model_range(images: Tensor, pad: int) -> Tensor:
    """uint8 (N, H, W) → float32 (N, 1, H + 2·pad, W + 2·pad) in [-1, 1], padding black (−1)."""
    images = F.pad(images.unsqueeze(1), (pad,) * 4)
    return images.float().div_(127.5).sub_(1.0)


class TensorBatches(Dataset):
    """Inputs (N, …) and labels (N,) served a whole batch per index list.

    Used with a `BatchSampler`, so one indexing op cuts a batch: no per-item transforms.
    """

    def __init__(self, inputs: Tensor, labels: Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices, device=self.inputs.device)
        return self.inputs[index], self.labels[index]

    def to(self, device: torch.device) -> TensorBatches:
        return TensorBatches(self.inputs.to(device), self.labels.to(device))


class InMemoryDataModule(L.LightningDataModule):
    """A seeded train/val split of a training set plus a test set, all held as tensors.

    Subclasses implement `load()` and `data_shape`. Batches are `(x, y)` cut from memory
    (no worker processes); on a GPU the splits live on the device.
    """

    def __init__(self, batch_size: int = 128, val_fraction: float = 0.1, split_seed: int = 42):
        super().__init__()
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be at least 1")
        if not 0 < float(val_fraction) < 1:
            raise ConfigError(f"data.val_fraction={val_fraction} must be in (0, 1)")
        self.batch_size = int(batch_size)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.splits: dict[str, TensorBatches] = {}

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one model input, e.g. (C, H, W)."""
        raise NotImplementedError

    def load(self) -> tuple[TensorBatches, TensorBatches]:
        """The whole training set and the test set, in the model's range."""
        raise NotImplementedError

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
            "train": TensorBatches(full.inputs[train_idx], full.labels[train_idx]),
            "val": TensorBatches(full.inputs[val_idx], full.labels[val_idx]),
            "test": test,
        }
        trainer = self.trainer
        if trainer is not None and trainer.strategy.root_device.type == "cuda":
            device = trainer.strategy.root_device
            self.splits = {key: split.to(device) for key, split in self.splits.items()}

    def loader(self, split: str, shuffle: bool) -> DataLoader:
        """Whole batches of `split` ("train", "val", "test") from memory, no worker processes.

        Shuffling draws from torch's global RNG, so `seed_everything` makes it reproducible.
        """
        dataset = self.splits[split]
        order = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        sampler = BatchSampler(order, self.batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None)

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)


class MNISTDataModule(InMemoryDataModule):
    """MNIST or Fashion-MNIST: `x: (B, 1, 32, 32)` in [-1, 1] (black padding), `y: (B,)` labels."""

    def __init__(
        self,
        name: str = "mnist",
        root: str | None = None,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        pad: int = 2,
        split_seed: int = 42,
    ):
        super().__init__(batch_size, val_fraction, split_seed)
        if name not in DATASETS:
            raise ConfigError(f"data.name={name!r} is unknown; choose one of {sorted(DATASETS)}")
        if int(pad) < 0:
            raise ConfigError(f"data.pad={pad} must be at least 0")
        self.name = name
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
