"""Image networks fitted to the data: their channels (and diffusers' image side) follow the
data's shape, so `data=` alone switches a run between grey and colour, 32 and 64 px."""

from __future__ import annotations

from typing import Any


def fitted_to_data(settings: dict[str, Any], data_shape: tuple[int, ...]) -> dict[str, Any]:
    """`settings` of a network with `in_channels` set to the data's C, and `sample_size` (a
    diffusers UNet's image side) to its H, for images (C, H, W); points (D,) leave them as they
    are. Only keys the network takes are set."""
    if len(data_shape) != 3:
        return settings
    channels, height, _ = (int(n) for n in data_shape)
    fitted = dict(settings)
    if "in_channels" in fitted:
        fitted["in_channels"] = channels
    if "sample_size" in fitted:
        fitted["sample_size"] = height
    return fitted
