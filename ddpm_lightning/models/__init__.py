"""Denoising networks: the UNet of Lior Sinai's MNIST post for images, an MLP for 2-D points."""

from ddpm_lightning.models.mlp import MLP
from ddpm_lightning.models.unet import UNet

__all__ = ["MLP", "UNet"]
