"""diffusers' UNet2DModel as the denoising network (`model=diffusers_unet`), behind our network
call, so diffusers' architecture trains with our data, objectives, callbacks and sweeps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from ddpm_lightning.errors import ConfigError, import_optional
from ddpm_lightning.settings import InChannels, NumClasses, Range, checked


class DiffusersUNet(nn.Module):
    """UNet2DModel of the diffusers library: x (B, C, H, W), t (B,), y (B,) or None → (B, C, H, W).

    The defaults mirror the default UNet (`model=unet`) in size: widths 16, 32, 48, one ResNet
    block per level and side, GroupNorm(8), self-attention (4 heads of 12) only in the middle,
    at 8×8: 425,281 parameters with diffusers 0.42. `down_block_types` / `up_block_types` take
    diffusers' block names (AttnDownBlock2D / AttnUpBlock2D add attention at a level).
    Conditional models (`num_classes`) use diffusers' class embedding with one extra index,
    `num_classes`, for the null label of classifier-free guidance.
    """

    @checked("model")
    def __init__(
        self,
        in_channels: InChannels = 1,
        # Image side (diffusers' pipelines draw images of this size); a training run sets it to
        # its data's.
        sample_size: Annotated[int, Range(ge=1)] = 32,
        # Width of each level.
        block_out_channels: Annotated[Sequence[int], Range(ge=1)] = (16, 32, 48),
        # ResNet blocks per level and side.
        layers_per_block: Annotated[int, Range(ge=1)] = 1,
        # diffusers' block names, one per level; AttnDownBlock2D adds self-attention there.
        down_block_types: Sequence[str] = ("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        # diffusers' block names, one per level; AttnUpBlock2D adds self-attention there.
        up_block_types: Sequence[str] = ("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        # GroupNorm groups; must divide every width.
        norm_num_groups: Annotated[int, Range(ge=1)] = 8,
        # Width of each attention head (the middle block's attention always runs).
        attention_head_dim: Annotated[int, Range(ge=1)] = 12,
        # Class-conditional: diffusers' class embedding with one more row, the null label.
        num_classes: NumClasses | None = None,
    ):
        super().__init__()
        diffusers = import_optional("diffusers", "model=diffusers_unet", "hf")
        widths = tuple(int(width) for width in block_out_channels)
        check_config(widths, tuple(down_block_types), tuple(up_block_types), norm_num_groups)
        self.in_channels = int(in_channels)
        self.sample_size = int(sample_size)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.unet = diffusers.UNet2DModel(
            sample_size=self.sample_size,
            in_channels=self.in_channels,
            out_channels=self.in_channels,
            block_out_channels=widths,
            layers_per_block=int(layers_per_block),
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            norm_num_groups=int(norm_num_groups),
            attention_head_dim=int(attention_head_dim),
            num_class_embeds=None if self.num_classes is None else self.num_classes + 1,
        )

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """ConfigError unless shape is (C, sample_size, sample_size): diffusers' pipelines draw
        images of `sample_size`, so an exported model must have been trained on that size."""
        expected = (self.in_channels, self.sample_size, self.sample_size)
        if tuple(shape) != expected:
            raise ConfigError(
                f"model=diffusers_unet takes images {expected} (model.in_channels, "
                f"model.sample_size) but the data gives shape {tuple(shape)}; set them to match"
            )

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W), t: (B,) int in [0, T), y: (B,) labels or None → (B, C, H, W)."""
        labels = None
        if self.num_classes is not None:
            labels = torch.full_like(t, self.num_classes) if y is None else y
        return self.unet(x, t, class_labels=labels, return_dict=False)[0]


def check_config(
    widths: tuple[int, ...],
    down_block_types: tuple[str, ...],
    up_block_types: tuple[str, ...],
    norm_num_groups: int,
) -> None:
    """ConfigError naming the `model.*` key for settings UNet2DModel would refuse obscurely."""
    if not len(widths) == len(down_block_types) == len(up_block_types):
        raise ConfigError(
            f"model.block_out_channels ({len(widths)} levels), model.down_block_types "
            f"({len(down_block_types)}) and model.up_block_types ({len(up_block_types)}) must "
            "have one entry per level"
        )
    if any(width % int(norm_num_groups) for width in widths):
        raise ConfigError(
            f"model.block_out_channels={list(widths)} must all be divisible by "
            f"model.norm_num_groups={norm_num_groups} (GroupNorm)"
        )
