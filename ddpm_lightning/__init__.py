"""Denoising diffusion models on MNIST and Fashion-MNIST with PyTorch Lightning and Hydra."""

__version__ = "0.2.0"
