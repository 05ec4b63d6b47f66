"""Datasets as Lightning data modules: MNIST and Fashion-MNIST images, the 2-D spiral."""

from ddpm_lightning.data.images import InMemoryDataModule, MNISTDataModule
from ddpm_lightning.data.spiral import SpiralDataModule

__all__ = ["InMemoryDataModule", "MNISTDataModule", "SpiralDataModule"]
