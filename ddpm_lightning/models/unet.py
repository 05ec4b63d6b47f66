"""The UNet of Lior Sinai's DenoisingDiffusion.jl MNIST post in PyTorch, with its layer names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models.blocks import (
    BLOCK_LAYERS,
    GuidanceEmbedding,
    MultiheadAttention,
    TimeEmbedding,
    conv3x3,
    downsample,
    upsample,
)
from ddpm_lightning.models.image_input import ImageInput
from ddpm_lightning.settings import (
    InChannels,
    NumClasses,
    NumTimesteps,
    OneOf,
    Range,
    checked,
)


def level_keys(prefix: str, level: int, num_blocks: int) -> list[str]:
    """Seed naming: `down_2` for one block per level, `down_2_1`, `down_2_2`, … for more."""
    if num_blocks == 1:
        return [f"{prefix}_{level}"]
    return [f"{prefix}_{level}_{i}" for i in range(1, num_blocks + 1)]


class UNet(ImageInput, nn.Module):
    """Noise-prediction UNet: x (B, C, H, W), t (B,), y (B,) or None and, with
    `guidance_embedding`, γ (B,) or None (1) → (B, C, H, W).

    Levels i = 1..L (L = len(channel_multipliers)) each hold `num_blocks_per_level` blocks
    down and up; only the last down block feeds the skip, concatenated on channels before
    the level's up blocks. Between levels a stride-2 conv halves the image and a nearest ×2
    + conv doubles it. The middle is conv → block → self-attention → block. Registration
    order follows the post's printout (time_embedding, init, down_1, downsample_1, …, final).
    """

    name = "unet"
    takes_guidance = False

    @checked("model")
    def __init__(
        self,
        # Image channels, in and out; a training run sets them to its data's (1 grey, 3 colour).
        in_channels: InChannels = 1,
        # Width d of the first level; the time (and label) embedding is 4d wide.
        model_channels: Annotated[int, Range(ge=1)] = 16,
        # Rows of the sinusoidal time table: the schedule's T.
        num_timesteps: NumTimesteps = 100,
        # Width of each level in multiples of d; H and W must be divisible by 2^(levels − 1).
        channel_multipliers: Annotated[Sequence[int], Range(ge=1)] = (1, 2, 3),
        # resblock (residual, two conditioned convolutions) or convembed (the post's one).
        block_layer: Annotated[str, OneOf(BLOCK_LAYERS)] = "resblock",
        # Blocks per level on each side.
        num_blocks_per_level: Annotated[int, Range(ge=1)] = 1,
        # GroupNorm groups; must divide model_channels.
        block_groups: Annotated[int, Range(ge=1)] = 8,
        # Heads of the middle self-attention; must divide its width d × the last multiplier.
        num_attention_heads: Annotated[int, Range(ge=1)] = 4,
        # Class-conditional: one learned label embedding per class plus the null label.
        num_classes: NumClasses | None = None,
        # Distilled guidance: γ is an input, embedded beside the label (distill.guidance sets it).
        guidance_embedding: bool = False,
    ):
        super().__init__()
        channel_multipliers = tuple(int(m) for m in channel_multipliers)
        check_unet_config(model_channels, channel_multipliers, block_groups, num_attention_heads)
        check_guidance_embedding(guidance_embedding, num_classes)
        self.num_levels = len(channel_multipliers)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.size_divisor = 2 ** (self.num_levels - 1)
        block = BLOCK_LAYERS[block_layer]
        emb_dim = 4 * model_channels
        channels = [model_channels] + [model_channels * m for m in channel_multipliers]
        in_out = list(zip(channels[:-1], channels[1:], strict=True))

        self.time_embedding = TimeEmbedding(num_timesteps, emb_dim)
        if num_classes is not None:
            self.label_embedding = nn.Embedding(num_classes + 1, emb_dim)
        if guidance_embedding:
            self.takes_guidance = True
            self.guidance_embedding = GuidanceEmbedding(emb_dim)
        self.init = conv3x3(in_channels, model_channels)
        self.down_keys: list[list[str]] = []
        self.up_keys: list[list[str]] = []
        for level, (c_in, _) in enumerate(in_out, start=1):
            if level > 1:
                self.add_module(f"downsample_{level - 1}", downsample(*in_out[level - 2]))
            self.down_keys.append(level_keys("down", level, num_blocks_per_level))
            for key in self.down_keys[-1]:
                self.add_module(key, block(c_in, c_in, emb_dim, block_groups))
        middle_in, middle = in_out[-1]
        self.add_module(f"down_{self.num_levels + 1}", conv3x3(middle_in, middle))
        self.middle_1 = block(middle, middle, emb_dim, block_groups)
        self.middle_attention = MultiheadAttention(middle, num_attention_heads)
        self.middle_2 = block(middle, middle, emb_dim, block_groups)
        for level in range(self.num_levels, 0, -1):
            c_in, c_out = in_out[level - 1]
            keys = level_keys("up", level, num_blocks_per_level)
            self.up_keys.insert(0, keys)
            for i, key in enumerate(keys):
                block_in = c_in + c_out if i == 0 else c_out
                self.add_module(key, block(block_in, c_out, emb_dim, block_groups))
            if level > 1:
                self.add_module(f"upsample_{level}", upsample(c_out, c_in))
        self.final = conv3x3(model_channels, in_channels)

    def embed(self, t: Tensor, y: Tensor | None, guidance: Tensor | None = None) -> Tensor:
        """Time embedding (B, 4d), plus the label embedding for conditional models and, with
        `guidance_embedding`, γ's (γ = 1, plain conditional, where `guidance` is None)."""
        emb = self.time_embedding(t)
        if self.num_classes is None:
            return emb
        if y is None:
            y = torch.full_like(t, self.num_classes)
        emb = emb + self.label_embedding(y)
        if not self.takes_guidance:
            return emb
        if guidance is None:
            guidance = torch.ones(t.shape, device=t.device)
        return emb + self.guidance_embedding(guidance)

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, guidance: Tensor | None = None
    ) -> Tensor:
        """x: (B, C, H, W), t: (B,) int in [0, T), y: (B,) labels or None, guidance: (B,)
        float γ or None (read only with `guidance_embedding`) → (B, C, H, W)."""
        self.check_image_size(x.shape[-2], x.shape[-1])
        emb = self.embed(t, y, guidance)
        h = self.init(x)
        skips = []
        for level, keys in enumerate(self.down_keys, start=1):
            if level > 1:
                h = getattr(self, f"downsample_{level - 1}")(h)
            for key in keys:
                h = getattr(self, key)(h, emb)
            skips.append(h)
        h = getattr(self, f"down_{self.num_levels + 1}")(h)
        h = self.middle_2(self.middle_attention(self.middle_1(h, emb)), emb)
        for level in range(self.num_levels, 0, -1):
            h = torch.cat([skips.pop(), h], dim=1)
            for key in self.up_keys[level - 1]:
                h = getattr(self, key)(h, emb)
            if level > 1:
                h = getattr(self, f"upsample_{level}")(h)
        return self.final(h)


def check_guidance_embedding(guidance_embedding: bool, num_classes: int | None) -> None:
    """A ConfigError unless a network taking γ is conditional: γ mixes its conditional and
    unconditional outputs."""
    if guidance_embedding and num_classes is None:
        raise ConfigError(
            "model.guidance_embedding=true needs a conditional model: set model.num_classes "
            "(model=unet_cond) or drop model.guidance_embedding"
        )


def check_unet_config(
    model_channels: int,
    channel_multipliers: tuple[int, ...],
    block_groups: int,
    num_attention_heads: int,
) -> None:
    """One-line ConfigErrors naming the `model.*` keys whose values must divide each other,
    with the post's wording where it has one."""
    if model_channels % block_groups:
        raise ConfigError(
            f"The number of block_groups ({block_groups}) must divide the number of "
            f"model_channels ({model_channels}): change model.block_groups or model.model_channels"
        )
    attention_dim = model_channels * channel_multipliers[-1]
    if attention_dim % num_attention_heads:
        raise ConfigError(
            f"model dimension={attention_dim} is not divisible by number of heads="
            f"{num_attention_heads}: model.model_channels × model.channel_multipliers[-1] must "
            "be divisible by model.num_attention_heads"
        )
