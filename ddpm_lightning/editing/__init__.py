"""Editing images with a trained model: inpainting (replacement, RePaint's resampling),
SDEdit, DDIM inversion and interpolation between inverted noises (docs/editing.md). Each
method takes a loaded model (or a `Denoiser` and a sampler) and images in [-1, 1]."""

from ddpm_lightning.editing.images import Inputs, load_inputs
from ddpm_lightning.editing.inpaint import inpaint
from ddpm_lightning.editing.interpolate import interpolate, slerp
from ddpm_lightning.editing.inversion import invert, psnr, reconstruct
from ddpm_lightning.editing.masks import MASK_NAMES, known_mask
from ddpm_lightning.editing.sdedit import sdedit

# The settings each method declares in its signature (group `edit`), by method.
METHOD_SETTINGS = {
    "inpaint": (inpaint, ("resample_jumps", "jump_length")),
    "sdedit": (sdedit, ("strength",)),
    "invert": (invert, ()),
    "interpolate": (interpolate, ("frames",)),
}

__all__ = [
    "MASK_NAMES",
    "METHOD_SETTINGS",
    "Inputs",
    "inpaint",
    "interpolate",
    "invert",
    "known_mask",
    "load_inputs",
    "psnr",
    "reconstruct",
    "sdedit",
    "slerp",
]
