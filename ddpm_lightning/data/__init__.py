"""Datasets as Lightning data modules: MNISTDataModule for the image datasets of the registry
(MNIST, Fashion-MNIST), SpiralDataModule for the 2-D spiral, ShapesDataModule for the drawn
colour shapes, ImageFolderDataModule for a folder of the user's images and HFDataModule for a
Hugging Face dataset; `DATA_MODULES` names the module of each `data=` option."""

from ddpm_lightning.data.hf import HFDataModule
from ddpm_lightning.data.image_folder import ImageFolderDataModule
from ddpm_lightning.data.images import InMemoryDataModule, MNISTDataModule
from ddpm_lightning.data.registry import DATASETS
from ddpm_lightning.data.shapes import ShapesDataModule
from ddpm_lightning.data.spiral import SpiralDataModule

DATA_MODULES: dict[str, type[InMemoryDataModule]] = {
    **{name: MNISTDataModule for name, record in DATASETS.items() if record.torchvision},
    "spiral": SpiralDataModule,
    "shapes": ShapesDataModule,
    "image_folder": ImageFolderDataModule,
    "hf": HFDataModule,
}

__all__ = [
    "DATA_MODULES",
    "HFDataModule",
    "ImageFolderDataModule",
    "InMemoryDataModule",
    "MNISTDataModule",
    "ShapesDataModule",
    "SpiralDataModule",
]
