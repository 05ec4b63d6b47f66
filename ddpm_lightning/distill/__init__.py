"""Few-step generation by distillation: progressive distillation (Salimans & Ho 2022), each
round a Lightning fit whose student takes half its teacher's DDIM steps, and consistency
distillation (Song et al. 2023), whose student maps noise to data in one step or a few."""

from ddpm_lightning.distill.consistency import ConsistencyDiffusion
from ddpm_lightning.distill.module import ProgressiveDistillation
from ddpm_lightning.distill.progressive import ProgressiveDiffusion
from ddpm_lightning.distill.round import distill_round

__all__ = [
    "ConsistencyDiffusion",
    "ProgressiveDiffusion",
    "ProgressiveDistillation",
    "distill_round",
]
