"""The magnitude-preserving UNet of Karras et al. 2024, "Analyzing and Improving the Training
Dynamics of Diffusion Models" (EDM2 config G, §2 and Appendix B), at our UNet's size and call.

Every layer keeps unit-magnitude activations (`mp_layers`): weight-normalised convolutions
without biases (forced weight normalisation in training), pixel norm instead of group norm,
MP-SiLU, MP-sum residuals and MP-cat skips, and Fourier features of the noise level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models.image_input import ImageInput
from ddpm_lightning.models.mp_layers import (
    MPConv,
    MPFourier,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    resample,
)
from ddpm_lightning.models.unet import check_guidance_embedding
from ddpm_lightning.settings import InChannels, NumClasses, NumTimesteps, Range, checked

# EDM2's balances: the residual branch's share in a block's MP-sum, the attention's, the
# skip's share in the decoder's MP-cat and the label's in the embedding; and the activation clip.
RES_BALANCE, ATTN_BALANCE, CONCAT_BALANCE, LABEL_BALANCE = 0.3, 0.3, 0.5, 0.5
CLIP_ACT = 256.0


class MPBlock(nn.Module):
    """EDM2's block: x (B, C_in, H, W), emb (B, E) → (B, C_out, H', W').

    Encoder (`enc`): resample, 1×1 conv to C_out if the width changes, pixel norm, then
    x ← MP-sum(x, res(x)); decoder (`dec`): resample, x ← MP-sum(skip(x), res(x)). res is
    conv3×3(MP-SiLU) → × (1 + gain · linear(emb)) → MP-SiLU → conv3×3. With heads > 0,
    an MP-sum of self-attention over pixel-normed q, k, v follows.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        flavor: str = "enc",
        resample_mode: str = "keep",
        num_heads: int = 0,
    ):
        super().__init__()
        self.out_channels = out_channels
        self.flavor, self.resample_mode, self.num_heads = flavor, resample_mode, num_heads
        self.emb_gain = nn.Parameter(torch.zeros([]))
        res_in = out_channels if flavor == "enc" else in_channels
        self.conv_res0 = MPConv(res_in, out_channels, (3, 3))
        self.emb_linear = MPConv(emb_channels, out_channels)
        self.conv_res1 = MPConv(out_channels, out_channels, (3, 3))
        self.conv_skip = (
            MPConv(in_channels, out_channels, (1, 1)) if in_channels != out_channels else None
        )
        if num_heads:
            self.attn_qkv = MPConv(out_channels, 3 * out_channels, (1, 1))
            self.attn_proj = MPConv(out_channels, out_channels, (1, 1))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = self.conv_res1(mp_silu(y * scale[:, :, None, None].to(y.dtype)))
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, RES_BALANCE)
        if self.num_heads:
            x = mp_sum(x, self.attention(x), ATTN_BALANCE)
        return x.clamp(-CLIP_ACT, CLIP_ACT)

    def attention(self, x: Tensor) -> Tensor:
        """Multi-head self-attention over the pixels, q, k and v pixel-normed per head."""
        b, c, h, w = x.shape
        qkv = self.attn_qkv(x).reshape(b, self.num_heads, c // self.num_heads, 3, h * w)
        q, k, v = normalize(qkv, dim=2).unbind(3)
        y = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
        return self.attn_proj(y.transpose(2, 3).reshape(b, c, h, w))


class UNetMP(ImageInput, nn.Module):
    """Magnitude-preserving noise-prediction UNet: x (B, C, H, W), t (B,), y (B,) or None and,
    with `guidance_embedding`, γ (B,) or None (1) → (B, C, H, W), the same call as `UNet`.

    Levels i = 1..L at widths d × multiplier: the encoder has a 3×3 conv (level 1) or a
    down-sampling block, then `num_blocks_per_level` blocks; the decoder has two middle blocks
    (the first with self-attention) or an up-sampling block, then one block more than the
    encoder, each after an MP-cat with the matching encoder output. Noise level: Fourier
    features of t scaled to (−1, 1); labels: one-hot over the classes and the null label. The
    output gain starts at 0 (EDM2), so the untrained network predicts 0; so does the gain of
    γ's Fourier features, so that a network gaining them keeps its outputs.
    """

    name = "unet_mp"
    takes_guidance = False

    @checked("model")
    def __init__(
        self,
        # Image channels, in and out; a training run sets them to its data's (1 grey, 3 colour).
        in_channels: InChannels = 1,
        # Width d of the first level; the embedding is d × the largest multiplier wide.
        model_channels: Annotated[int, Range(ge=1)] = 16,
        # The schedule's T: timesteps 0 … T − 1 map to noise features at (2t + 1) / T − 1.
        num_timesteps: NumTimesteps = 100,
        # Width of each level in multiples of d; H and W must be divisible by 2^(levels − 1).
        channel_multipliers: Annotated[Sequence[int], Range(ge=1)] = (1, 2, 3),
        # Encoder blocks per level (the decoder has one more).
        num_blocks_per_level: Annotated[int, Range(ge=1)] = 1,
        # Heads of the middle self-attention; must divide its width d × the last multiplier.
        num_attention_heads: Annotated[int, Range(ge=1)] = 4,
        # Class-conditional: one label embedding per class plus the null label.
        num_classes: NumClasses | None = None,
        # Distilled guidance: γ is an input, embedded beside the label (distill.guidance sets it).
        guidance_embedding: bool = False,
    ):
        super().__init__()
        check_guidance_embedding(guidance_embedding, num_classes)
        widths = [model_channels * int(m) for m in channel_multipliers]
        if widths[-1] % num_attention_heads:
            raise ConfigError(
                f"model.num_attention_heads={num_attention_heads} must divide the middle width "
                f"model.model_channels × model.channel_multipliers[-1] = {widths[-1]}"
            )
        self.in_channels, self.num_classes, self.num_timesteps = (
            in_channels,
            num_classes,
            num_timesteps,
        )
        self.num_levels = len(widths)
        self.size_divisor = 2 ** (self.num_levels - 1)
        emb = max(widths)
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(model_channels)
        self.emb_noise = MPConv(model_channels, emb)
        if num_classes is not None:
            self.emb_label = MPConv(num_classes + 1, emb)
        if guidance_embedding:
            self.takes_guidance = True
            self.emb_guidance_fourier = MPFourier(model_channels)
            self.emb_guidance = MPConv(model_channels, emb)
            self.emb_guidance_gain = nn.Parameter(torch.zeros([]))
        self.enc = nn.ModuleDict()
        self.dec = nn.ModuleDict()
        skips = self.build_encoder(widths, emb, num_blocks_per_level)
        self.build_decoder(widths, skips, emb, num_blocks_per_level, num_attention_heads)
        self.out_conv = MPConv(model_channels, in_channels, (3, 3))

    def build_encoder(self, widths: list[int], emb: int, num_blocks: int) -> list[int]:
        """The encoder's modules; returns the width of each one's output (the skips)."""
        skips = [widths[0]]
        self.enc["level1_conv"] = MPConv(self.in_channels + 1, widths[0], (3, 3))
        for level, width in enumerate(widths, start=1):
            if level > 1:
                self.enc[f"level{level}_down"] = MPBlock(skips[-1], skips[-1], emb, "enc", "down")
                skips.append(skips[-1])
            for i in range(num_blocks):
                self.enc[f"level{level}_block{i}"] = MPBlock(skips[-1], width, emb, "enc")
                skips.append(width)
        return skips

    def build_decoder(
        self, widths: list[int], skips: list[int], emb: int, num_blocks: int, heads: int
    ) -> None:
        """The decoder's modules, taking the encoder's outputs of widths `skips` last first."""
        c_out = widths[-1]
        for level in range(len(widths), 0, -1):
            width = widths[level - 1]
            if level == len(widths):
                self.dec[f"level{level}_in0"] = MPBlock(c_out, c_out, emb, "dec", num_heads=heads)
                self.dec[f"level{level}_in1"] = MPBlock(c_out, c_out, emb, "dec")
            else:
                self.dec[f"level{level}_up"] = MPBlock(c_out, c_out, emb, "dec", "up")
            for i in range(num_blocks + 1):
                self.dec[f"level{level}_block{i}"] = MPBlock(c_out + skips.pop(), width, emb, "dec")
                c_out = width

    def embed(self, t: Tensor, y: Tensor | None, guidance: Tensor | None = None) -> Tensor:
        """(B, E) embedding: MP-SiLU of the noise features, MP-summed with the label's, plus
        with `guidance_embedding` γ's features times their gain (γ = 1 where None)."""
        noise_level = (2 * t.float() + 1) / self.num_timesteps - 1
        emb = self.emb_noise(self.emb_fourier(noise_level))
        if self.num_classes is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes)
            one_hot = F.one_hot(y.long(), self.num_classes + 1).to(emb.dtype)
            label = self.emb_label(one_hot * math.sqrt(self.num_classes + 1))
            emb = mp_sum(emb, label, LABEL_BALANCE)
        if self.takes_guidance:
            if guidance is None:
                guidance = torch.ones(t.shape, device=t.device)
            features = self.emb_guidance_fourier(guidance.float())
            emb = emb + self.emb_guidance(features, gain=self.emb_guidance_gain)
        return mp_silu(emb)

    def forward(
        self, x: Tensor, t: Tensor, y: Tensor | None = None, guidance: Tensor | None = None
    ) -> Tensor:
        """x: (B, C, H, W), t: (B,) int in [0, T), y: (B,) labels or None, guidance: (B,)
        float γ or None (read only with `guidance_embedding`) → (B, C, H, W)."""
        self.check_image_size(x.shape[-2], x.shape[-1])
        emb = self.embed(t, y, guidance).to(x.dtype)
        h = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            h = block(h) if name.endswith("conv") else block(h, emb)
            skips.append(h)
        for name, block in self.dec.items():
            if "block" in name:
                h = mp_cat(h, skips.pop(), t=CONCAT_BALANCE)
            h = block(h, emb)
        return self.out_conv(h, gain=self.out_gain)
