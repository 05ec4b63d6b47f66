"""Denoising networks."""

from ddpm_lightning.models.unet import UNet

__all__ = ["UNet"]
