"""The diffusion math: noise schedules, the Gaussian forward process and its loss, the
reverse-process samplers (ours, and diffusers' schedulers through DiffusersSampler) and
classifier-free guidance. Independent of Lightning."""

from ddpm_lightning.diffusion.diffusers_bridge import DiffusersSampler
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    HeunSampler,
    Sampler,
)
from ddpm_lightning.diffusion.schedules import NoiseSchedule

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "DiffusersSampler",
    "GaussianDiffusion",
    "HeunSampler",
    "NoiseSchedule",
    "Sampler",
]
