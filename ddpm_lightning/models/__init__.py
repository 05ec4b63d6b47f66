"""Denoising networks: the UNet of Lior Sinai's MNIST post for images, an MLP for 2-D points,
and diffusers' UNet2DModel behind the same call (the optional `hf` extra)."""

from ddpm_lightning.models.diffusers_unet import DiffusersUNet
from ddpm_lightning.models.mlp import MLP
from ddpm_lightning.models.unet import UNet

__all__ = ["DiffusersUNet", "MLP", "UNet"]
