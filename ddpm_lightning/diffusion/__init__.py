"""The diffusion math: noise schedules, the Gaussian forward process and its loss, the
reverse-process samplers and classifier-free guidance. Independent of Lightning."""

from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, Sampler
from ddpm_lightning.diffusion.schedules import NoiseSchedule

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "GaussianDiffusion",
    "NoiseSchedule",
    "Sampler",
]
