"""The input checks every UNet-shaped network shares: images of its channel count whose sides
its down-samplings divide."""

from __future__ import annotations

from ddpm_lightning.errors import ConfigError


class ImageInput:
    """Checks for a network selected as `model=<name>` on images (C = `in_channels`, H, W) at
    `num_levels` resolutions: H and W divisible by `size_divisor` = 2^(num_levels − 1)."""

    name: str
    in_channels: int
    num_levels: int
    size_divisor: int

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """ConfigError unless shape is (C, H, W) with H and W divisible by 2^(down-samplings)."""
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ConfigError(
                f"model={self.name} takes images (C={self.in_channels}, H, W) but the data gives "
                f"shape {tuple(shape)}; use an image dataset or model=mlp"
            )
        self.check_image_size(shape[1], shape[2])

    def check_image_size(self, height: int, width: int) -> None:
        """Raise a ConfigError unless H and W are divisible by 2^(number of down-samplings)."""
        if height % self.size_divisor or width % self.size_divisor:
            raise ConfigError(
                f"image size {height}x{width} is not divisible by 2^{self.num_levels - 1}="
                f"{self.size_divisor}, as {self.num_levels - 1} down-samplings need "
                "(model.channel_multipliers); change data.pad or model.channel_multipliers"
            )
