"""The diffusion math: noise schedules, the Gaussian forward process and its loss, the
the denoiser every sampler draws through, the reverse-process samplers (ours, and diffusers'
schedulers through DiffusersSampler) and classifier-free guidance. Independent of Lightning."""

from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.diffusers_bridge import DiffusersSampler
from ddpm_lightning.diffusion.euler_ancestral import EulerAncestralSampler
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion, Network
from ddpm_lightning.diffusion.samplers import (
    DDIMSampler,
    DDPMSampler,
    DPMSolverSampler,
    HeunSampler,
    Sampler,
    Step,
)
from ddpm_lightning.diffusion.schedules import NoiseSchedule

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "Denoiser",
    "DiffusersSampler",
    "EulerAncestralSampler",
    "GaussianDiffusion",
    "HeunSampler",
    "Network",
    "NoiseSchedule",
    "Sampler",
    "Step",
]
