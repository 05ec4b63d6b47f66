"""Magnitude-preserving layers of Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models" (EDM2, §2.2–2.5 and Appendix B.2): each keeps the expected
magnitude ‖x‖ / √numel (root mean square) of unit-magnitude inputs at 1, so activations
neither grow nor shrink through the network, and no biases or group norms are needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# RMS of SiLU(x) for x ~ N(0, 1): dividing by it restores unit magnitude (EDM2 §2.5).
SILU_MAGNITUDE = 0.596


def normalize(x: Tensor, dim: int | tuple[int, ...] | None = None, eps: float = 1e-4) -> Tensor:
    """x scaled to unit magnitude (RMS 1) over `dim` (default: all but the first axis): the
    weight normalisation of MP layers and, over channels, the pixel norm (EDM2 §2.3–2.4)."""
    dims = tuple(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: Tensor) -> Tensor:
    """SiLU(x) / 0.596: unit magnitude out for standard normal in (EDM2 §2.5)."""
    return F.silu(x) / SILU_MAGNITUDE


def mp_sum(a: Tensor, b: Tensor, t: float = 0.5) -> Tensor:
    """((1 − t) a + t b) / √((1 − t)² + t²): the blend of two uncorrelated unit-magnitude
    tensors, still of unit magnitude (EDM2 §2.5)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: Tensor, b: Tensor, dim: int = 1, t: float = 0.5) -> Tensor:
    """Concatenation along `dim` weighing a's N_a and b's N_b channels as (1 − t) : t overall
    at unit magnitude: a × C (1 − t) / √N_a and b × C t / √N_b with
    C = √((N_a + N_b) / ((1 − t)² + t²)) (EDM2 §2.5)."""
    n_a, n_b = a.shape[dim], b.shape[dim]
    scale = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))
    return torch.cat(
        [a * (scale * (1 - t) / math.sqrt(n_a)), b * (scale * t / math.sqrt(n_b))], dim
    )


class MPFourier(nn.Module):
    """Fourier features √2 cos(2π (f x + φ)) of a scalar per sample, f ~ N(0, 1) and φ ~ U[0, 1)
    fixed at construction (buffers saved with the weights): (B,) → (B, num_channels), unit
    magnitude for any input (EDM2 §2.5)."""

    freqs: Tensor
    phases: Tensor

    def __init__(self, num_channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.outer(x.float(), self.freqs.float()) + self.phases.float()
        return (y.cos() * math.sqrt(2)).to(x.dtype if x.is_floating_point() else torch.float32)


class MPConv(nn.Module):
    """Bias-free convolution (kernel (k, k)) or linear layer (kernel ()) whose weight is
    normalised to unit magnitude per output channel on every call and scaled by gain / √fan_in,
    so unit-magnitude inputs give unit-magnitude outputs (EDM2 §2.2). In training the
    stored weight itself is reset to unit magnitude first (forced weight normalisation, §2.3),
    which keeps the effective learning rate from decaying as weights grow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, ...] = ()):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: Tensor, gain: float | Tensor = 1.0) -> Tensor:
        """x: (B, C_in) or (B, C_in, H, W) → (B, C_out) or (B, C_out, H, W)."""
        w = self.weight.float()
        if self.training:
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


def resample(x: Tensor, mode: str) -> Tensor:
    """2 × 2 average pooling (`down`), nearest-neighbour doubling (`up`) or x (`keep`): EDM2's
    [1, 1] resampling filter. (B, C, H, W) → (B, C, H/2, W/2), (B, C, 2H, 2W) or the same."""
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x
