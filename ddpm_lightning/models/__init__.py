"""Denoising networks: the UNet of Lior Sinai's MNIST post for images and its
magnitude-preserving counterpart after EDM2 (UNetMP), an MLP for 2-D points, and, behind the
same call, diffusers' UNet2DModel (the optional `hf` extra) and lucidrains'
denoising-diffusion-pytorch Unet (the optional `bench` extra)."""

from ddpm_lightning.models.diffusers_unet import DiffusersUNet
from ddpm_lightning.models.lucidrains_unet import LucidrainsUNet
from ddpm_lightning.models.mlp import MLP
from ddpm_lightning.models.unet import UNet
from ddpm_lightning.models.unet_mp import UNetMP

__all__ = ["DiffusersUNet", "LucidrainsUNet", "MLP", "UNet", "UNetMP"]
