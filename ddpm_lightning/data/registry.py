"""The dataset registry: one record per dataset of images, read by data loading, evaluation
(its LeNet and test-set statistics), model cards, the demo and the config schema, so adding a
dataset is one record here, its data module and its YAML."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torchvision import datasets

from ddpm_lightning.errors import ConfigError


@dataclass(frozen=True)
class DatasetRecord:
    """What every layer knows of a dataset.

    name: what `data.name`, `dataset=` and a checkpoint's `dataset` say; title: how pages and
    cards print it; shape: one image as the models see it (C, H, W); class_names: by label
    index; torchvision: the class that reads (and downloads) its IDX files, if any; hub: its
    Hugging Face dataset id and tag, for model cards; augment: the training augmentation of its
    LeNet, whose files the classifier command writes to the package's assets as
    `lenet_<name>.pt`, `lenet_<name>_test_stats.pt` and `lenet_<name>.json` (FLD reads them).
    """

    name: str
    title: str
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    torchvision: type | None = None
    hub: str | None = None
    tag: str | None = None
    augment: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


DATASETS: dict[str, DatasetRecord] = {
    record.name: record
    for record in (
        DatasetRecord(
            name="mnist",
            title="MNIST",
            shape=(1, 32, 32),
            class_names=tuple(str(digit) for digit in range(10)),
            torchvision=datasets.MNIST,
            hub="ylecun/mnist",
            tag="mnist",
            augment=MappingProxyType({"max_shift": 2, "max_rotation": 10.0, "hflip": False}),
        ),
        DatasetRecord(
            name="fashion_mnist",
            title="Fashion-MNIST",
            shape=(1, 32, 32),
            class_names=tuple(datasets.FashionMNIST.classes),
            torchvision=datasets.FashionMNIST,
            hub="zalando-datasets/fashion_mnist",
            tag="fashion-mnist",
            augment=MappingProxyType({"max_shift": 1, "max_rotation": 0.0, "hflip": True}),
        ),
    )
}


def dataset_record(name: object, key: str = "data.name") -> DatasetRecord:
    """The record of `name`; one line naming `key` and the registered names otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(f"{key}={name!r} is unknown; choose one of {sorted(DATASETS)}")
    return DATASETS[name]
