"""Phil Wang's (lucidrains') denoising-diffusion-pytorch `Unet` as the denoising network
(`model=lucidrains_unet`, the optional `bench` extra), so the benchmark's second peer also trains
with our data, objectives and callbacks and can be compared with ours at equal training time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from torch import Tensor, nn

from ddpm_lightning.errors import ConfigError, import_optional
from ddpm_lightning.settings import InChannels, Range, checked


class LucidrainsUNet(nn.Module):
    """denoising_diffusion_pytorch.Unet: x (B, C, H, W), t (B,) → (B, C, H, W); unconditional.

    The defaults are the benchmark's peer at the default UNet's widths (`dim` 16, `dim_mults`
    (1, 2, 3)): linear attention at every level, full attention in the middle; 544,049
    parameters with denoising-diffusion-pytorch 2.3.4.
    """

    @checked("model")
    def __init__(
        self,
        in_channels: InChannels = 1,
        # Width of the first level.
        dim: Annotated[int, Range(ge=1)] = 16,
        # Width multipliers per level; H and W must be divisible by 2^(levels − 1).
        dim_mults: Annotated[Sequence[int], Range(ge=1)] = (1, 2, 3),
        # Heads of its attention layers.
        attn_heads: Annotated[int, Range(ge=1)] = 4,
        # Width of each attention head.
        attn_dim_head: Annotated[int, Range(ge=1)] = 32,
    ):
        super().__init__()
        library = import_optional("denoising_diffusion_pytorch", "model=lucidrains_unet", "bench")
        self.in_channels = int(in_channels)
        self.size_divisor = 2 ** (len(dim_mults) - 1)
        self.unet = library.Unet(
            dim=int(dim),
            dim_mults=tuple(int(m) for m in dim_mults),
            channels=self.in_channels,
            attn_heads=int(attn_heads),
            attn_dim_head=int(attn_dim_head),
            flash_attn=False,
        )

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """ConfigError unless shape is (C, H, W) with H and W divisible by 2^(levels − 1)."""
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ConfigError(
                f"model=lucidrains_unet takes images (C={self.in_channels}, H, W) but the data "
                f"gives shape {tuple(shape)}; set model.in_channels or use an image dataset"
            )
        if shape[1] % self.size_divisor or shape[2] % self.size_divisor:
            raise ConfigError(
                f"model=lucidrains_unet needs H and W divisible by {self.size_divisor} "
                f"(model.dim_mults has {len(self.unet.downs)} levels) but the data gives "
                f"{shape[1]}×{shape[2]}; change data.pad or model.dim_mults"
            )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), t: (B,) int in [0, T) → (B, C, H, W); y must be None."""
        if y is not None:
            raise ConfigError("model=lucidrains_unet is unconditional; use model=unet_cond")
        return self.unet(x, t)
