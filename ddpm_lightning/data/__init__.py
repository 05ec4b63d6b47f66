"""Datasets as Lightning data modules: MNISTDataModule for the image datasets of the registry
(MNIST, Fashion-MNIST), SpiralDataModule for the 2-D spiral; `DATA_MODULES` names the module
of each `data=` option."""

from ddpm_lightning.data.images import InMemoryDataModule, MNISTDataModule
from ddpm_lightning.data.registry import DATASETS
from ddpm_lightning.data.spiral import SpiralDataModule

DATA_MODULES: dict[str, type[InMemoryDataModule]] = {
    **{name: MNISTDataModule for name, record in DATASETS.items() if record.torchvision},
    "spiral": SpiralDataModule,
}

__all__ = ["DATA_MODULES", "InMemoryDataModule", "MNISTDataModule", "SpiralDataModule"]
