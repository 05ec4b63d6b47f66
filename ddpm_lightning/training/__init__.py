"""Training with Lightning: the LightningModule, callbacks, EMA, interrupt safety, loggers,
checkpoint reading and run records."""

from ddpm_lightning.training.module import DiffusionModule

__all__ = ["DiffusionModule"]
