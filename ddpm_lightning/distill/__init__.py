"""Few-step generation by distillation: progressive distillation (Salimans & Ho 2022), each
round a Lightning fit whose student takes half its teacher's DDIM steps."""

from ddpm_lightning.distill.module import ProgressiveDistillation
from ddpm_lightning.distill.progressive import ProgressiveDiffusion
from ddpm_lightning.distill.round import distill_round

__all__ = ["ProgressiveDiffusion", "ProgressiveDistillation", "distill_round"]
