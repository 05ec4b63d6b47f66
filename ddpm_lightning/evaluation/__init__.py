"""Measuring and showing samples: the Fréchet LeNet Distance and pictures."""

from ddpm_lightning.evaluation.fld import FLD

__all__ = ["FLD"]
