"""Denoising networks: the seed UNet for images, an MLP for 2-D points."""

from ddpm_lightning.models.mlp import MLP
from ddpm_lightning.models.unet import UNet

__all__ = ["MLP", "UNet"]
