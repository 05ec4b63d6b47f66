"""Images out of tensors: sample grids and the reverse-process animation."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid


def to_uint8(images: Tensor) -> Tensor:
    """[-1, 1] floats → uint8 in [0, 255], same shape."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """(N, C, H, W) in [-1, 1] → one (3, H', W') uint8 image on a black background."""
    nrow = nrow or math.ceil(math.sqrt(images.shape[0]))
    pictures = make_grid(images.float().clamp(-1, 1).add(1).div(2).cpu(), nrow=nrow, pad_value=0)
    return (pictures * 255).round().to(torch.uint8)


def to_pil(image: Tensor, scale: int = 1) -> Image.Image:
    """(3, H, W) uint8 → PIL image, enlarged `scale`× with nearest neighbours."""
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    return (
        pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
        if scale > 1
        else pil
    )


def save_grid(images: Tensor, path: Path, nrow: int | None = None) -> None:
    """Write (N, C, H, W) in [-1, 1] as a PNG grid."""
    to_pil(grid(images, nrow)).save(path)


def class_grid(images: Tensor, labels: Tensor) -> Tensor:
    """One row per class present in labels: (N,), as many columns as the rarest class has."""
    classes = labels.unique(sorted=True)
    per_class = min(int((labels == c).sum()) for c in classes)
    rows = [images[labels == c][:per_class] for c in classes]
    return grid(torch.cat(rows), nrow=per_class)


class ReverseProcessRecorder:
    """Sampler callback keeping (x_t, x̂₀) of the first `num_images` at about `num_frames` steps.

    Records only the first sampled chunk; `save_gif` writes left x_t, right x̂₀, as in Lior
    Sinai's MNIST post.
    """

    def __init__(self, num_steps: int, num_images: int = 16, num_frames: int = 50):
        count = min(num_frames, num_steps)
        self.frame_steps = {round(i * (num_steps - 1) / max(count - 1, 1)) for i in range(count)}
        self.last_step = num_steps - 1
        self.num_images = num_images
        self.frames: list[tuple[Tensor, Tensor]] = []
        self.done = False

    def __call__(self, i: int, t: int, x: Tensor, x0: Tensor) -> None:
        if self.done:
            return
        if i in self.frame_steps:
            self.frames.append((x[: self.num_images].cpu(), x0[: self.num_images].cpu()))
        self.done = i == self.last_step

    def save_gif(self, path: Path, final: Tensor, duration_ms: int = 80, scale: int = 2) -> None:
        """One frame per recorded step plus the final samples, held for a second."""
        final = final[: self.frames[0][0].shape[0] if self.frames else self.num_images].cpu()
        pairs = [*self.frames, (final, final)]
        nrow = math.ceil(math.sqrt(final.shape[0]))
        frames = [
            to_pil(torch.cat([grid(x, nrow), grid(x0, nrow)], dim=2), scale) for x, x0 in pairs
        ]
        durations = [duration_ms] * (len(frames) - 1) + [1000]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
