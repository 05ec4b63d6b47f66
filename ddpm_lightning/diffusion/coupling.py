"""Which noise draw goes with which image in a training batch.

`immiscible`: the batch's noise vectors are reassigned to its images by the linear assignment
of least total squared distance ‖x₀ᵢ − ε_π(i)‖² (Li et al. 2024, "Immiscible Diffusion"; the
minibatch optimal-transport coupling of Tong et al. 2023), so each image is noised toward a
nearby draw. The noise stays a set of i.i.d. N(0, I) draws; only its order changes.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

# The couplings `diffusion.noise_coupling` chooses from.
NOISE_COUPLINGS = ("none", "immiscible")


def assignment(images: Tensor, noise: Tensor) -> Tensor:
    """(B,) int64 permutation π minimising Σᵢ ‖imagesᵢ − noise_π(i)‖² (scipy's
    linear_sum_assignment on the (B, B) squared-distance matrix, float64 on the CPU)."""
    distances = torch.cdist(images.flatten(1).double(), noise.flatten(1).double()) ** 2
    _, columns = linear_sum_assignment(distances.cpu().numpy())
    return torch.as_tensor(columns, dtype=torch.long, device=noise.device)


def assign_noise(images: Tensor, noise: Tensor, coupling: str = "immiscible") -> Tensor:
    """`noise` (B, …) reordered so that row i goes with `images` row i: by `assignment` for
    `immiscible`, unchanged for `none`."""
    if coupling == "none":
        return noise
    if coupling != "immiscible":
        raise ValueError(f"coupling={coupling!r} is not one of {NOISE_COUPLINGS}")
    return noise[assignment(images, noise)]
