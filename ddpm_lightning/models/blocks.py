"""The UNet's building blocks, ported from Lior Sinai's DenoisingDiffusion.jl MNIST post."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# γ's position in the sinusoidal features: γ in [0, 10] spans what timesteps 0 … 1000 do.
GUIDANCE_POSITIONS = 100.0


def conv3x3(in_channels: int, out_channels: int, bias: bool = True) -> nn.Conv2d:
    """3×3 convolution, stride 1, padding 1: keeps the spatial size."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


def downsample(in_channels: int, out_channels: int) -> nn.Conv2d:
    """4×4 convolution, stride 2, padding 1: halves H and W (the post's `downsample_layer`)."""
    return nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1)


def upsample(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest-neighbour ×2, then a 3×3 convolution (the post's `upsample_layer`)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(in_channels, out_channels)
    )


def sinusoidal_frequencies(dim: int) -> Tensor:
    """(dim/2,) float64 frequencies ω_i = 10000^(−i/(dim/2 − 1)) of the sinusoidal features."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float64) / (half - 1)
    return torch.exp(-math.log(10000.0) * exponents)


def sinusoidal_table(num_positions: int, dim: int) -> Tensor:
    """(num_positions, dim) table: [sin(t·ω_i), cos(t·ω_i)], ω_i = 10000^(−i/(dim/2 − 1))."""
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * sinusoidal_frequencies(dim)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


class SinusoidalPositionEmbedding(nn.Module):
    """Fixed lookup t → table[t], as in Lior Sinai's "Denoising Diffusion Probabilistic Models
    for AI Art Generation from First Principles in Julia"; the table is a buffer, not a
    parameter."""

    table: Tensor

    def __init__(self, num_positions: int, dim: int):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(num_positions, dim), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) integer timesteps → (B, dim)."""
        return self.table[t]


class TimeEmbedding(nn.Sequential):
    """Sinusoidal table (T × 4d) → Linear(4d, 4d) + GELU → Linear(4d, 4d), as lucidrains."""

    def __init__(self, num_timesteps: int, dim: int):
        super().__init__(
            SinusoidalPositionEmbedding(num_timesteps, dim),
            nn.Linear(dim, dim),
            nn.GELU(),
            nn.Linear(dim, dim),
        )


class GuidanceEmbedding(nn.Module):
    """γ (B,) → (B, dim): sinusoidal features [sin(p·ω_i), cos(p·ω_i)] of p = GUIDANCE_POSITIONS · γ
    → Linear + GELU → Linear, the last layer zero at start, so that a network gaining it keeps
    its outputs (distilled guidance, Meng et al. 2023: the student takes γ as input)."""

    frequencies: Tensor

    def __init__(self, dim: int):
        super().__init__()
        frequencies = sinusoidal_frequencies(dim).float()
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.hidden = nn.Linear(dim, dim)
        self.activation = nn.GELU()
        self.output = nn.Linear(dim, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, guidance: Tensor) -> Tensor:
        """guidance: (B,) float γ → (B, dim)."""
        angles = (GUIDANCE_POSITIONS * guidance.float())[:, None] * self.frequencies.float()
        features = torch.cat([angles.sin(), angles.cos()], dim=1)
        return self.output(self.activation(self.hidden(features.to(self.hidden.weight.dtype))))


class ConvEmbed(nn.Module):
    """activation(norm(conv(x)) + embed_layers(emb)): the post's conditioned conv block."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.embed_layers = nn.Linear(emb_dim, out_channels)
        self.conv = conv3x3(in_channels, out_channels)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.activation = nn.SiLU()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C_in, H, W), emb: (B, E) → (B, C_out, H, W)."""
        h = self.norm(self.conv(x))
        return self.activation(h + self.embed_layers(emb)[:, :, None, None])


class ResBlock(nn.Module):
    """ConvEmbed → conv → GroupNorm → SiLU, plus a skip (3×3 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.in_layers = ConvEmbed(in_channels, out_channels, emb_dim, groups)
        self.out_layers = nn.Sequential(
            conv3x3(out_channels, out_channels), nn.GroupNorm(groups, out_channels), nn.SiLU()
        )
        self.skip_transform = (
            nn.Identity() if in_channels == out_channels else conv3x3(in_channels, out_channels)
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, C_in, H, W), emb: (B, E) → (B, C_out, H, W)."""
        return self.out_layers(self.in_layers(x, emb)) + self.skip_transform(x)


BLOCK_LAYERS = {"resblock": ResBlock, "convembed": ConvEmbed}


class MultiheadAttention(nn.Module):
    """Self-attention over pixels with 3×3-conv projections, returning x + attention(x).

    qkv: 3×3 conv without bias, output: 3×3 conv (as in the post); channels are split into
    `num_heads` contiguous groups. Computed with `scaled_dot_product_attention`.
    """

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = conv3x3(channels, 3 * channels, bias=False)
        self.to_out = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) → (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = (
            part.reshape(b, self.num_heads, c // self.num_heads, h * w).transpose(2, 3)
            for part in self.to_qkv(x).chunk(3, dim=1)
        )
        attention = F.scaled_dot_product_attention(q, k, v)
        return x + self.to_out(attention.transpose(2, 3).reshape(b, c, h, w))
