"""The dataset registry: one record per dataset of images, read by data loading, evaluation
(its LeNet and test-set statistics), model cards, the demo and the config schema, so adding a
dataset is one record here, its data module and its YAML. Data known only at run time (a
folder of the user's images, a Hugging Face dataset) gets a record from its data module
(`record`), which a model can save as a plain dict (`as_dict`) and `known_record` reads back."""

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

    def as_dict(self) -> dict[str, Any]:
        """The record as plain values (what checkpoints and config.json hold), no reader."""
        return {
            "name": self.name,
            "title": self.title,
            "shape": list(self.shape),
            "class_names": list(self.class_names),
            "hub": self.hub,
            "tag": self.tag,
            "augment": dict(self.augment),
        }

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> DatasetRecord:
        """The record `as_dict` wrote."""
        return cls(
            **{key: plain[key] for key in ("name", "title", "hub", "tag") if key in plain},
            shape=tuple(plain["shape"]),
            class_names=tuple(plain["class_names"]),
            augment=MappingProxyType(dict(plain.get("augment") or {})),
        )


# The built-in colour dataset (data/shapes.py): label = shape index × len(COLOURS) + colour index.
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")


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
        DatasetRecord(
            name="shapes",
            title="Shapes",
            shape=(3, 32, 32),
            class_names=tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS),
            augment=MappingProxyType({"max_shift": 2, "max_rotation": 0.0, "hflip": True}),
        ),
    )
}


def dataset_record(name: object, key: str = "data.name") -> DatasetRecord:
    """The record of `name`; one line naming `key` and the registered names otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(f"{key}={name!r} is unknown; choose one of {sorted(DATASETS)}")
    return DATASETS[name]


def known_record(name: object, saved: Mapping[str, Any] | None = None) -> DatasetRecord | None:
    """The record of a model's data: the registry's for a registered `name`, else the one
    saved from its data module (`DatasetRecord.as_dict`, e.g. a folder of images), else None."""
    if isinstance(name, str) and name in DATASETS:
        return DATASETS[name]
    return DatasetRecord.from_dict(saved) if saved else None
