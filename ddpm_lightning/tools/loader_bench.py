"""Is the image-folder loader fast enough to keep training busy? Images/s of `data=image_folder`
(listing at start, then decoding in the default worker processes) on a generated folder of
PNGs, beside the images/s of a training step of the default UNet at the same image size.

    python -m ddpm_lightning.tools.loader_bench [--images 10000] [--sizes 32 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf
from PIL import Image

from ddpm_lightning.config import compose_config
from ddpm_lightning.data.image_folder import ImageFolderDataModule
from ddpm_lightning.data.shapes import make_shapes
from ddpm_lightning.training.module import DiffusionModule


def write_folder(root: Path, count: int, size: int) -> Path:
    """`count` RGB PNGs of size×size (drawn shapes), 1,000 to a subfolder."""
    images, _ = make_shapes(count, size, seed=0, split=0)
    for i, image in enumerate(images):
        folder = root / f"part_{i // 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
    return root


def loader_rate(root: Path, size: int, batch_size: int, batches: int) -> dict[str, float]:
    """Seconds to list the folder, to the first batch, and images/s over the next batches,
    with data=image_folder's default workers."""
    start = time.perf_counter()
    datamodule = ImageFolderDataModule(root=str(root), image_size=size, batch_size=batch_size)
    datamodule.setup()
    listed = time.perf_counter()
    loader = iter(datamodule.train_dataloader())
    next(loader)
    first = time.perf_counter()
    seen = sum(len(x) for _, (x, _) in zip(range(batches), loader, strict=False))
    return {
        "listing_s": listed - start,
        "first_batch_s": first - listed,
        "images_per_s": seen / (time.perf_counter() - first),
        "workers": datamodule.num_workers,
    }


def training_rate(size: int, batch_size: int, steps: int, device: torch.device) -> float:
    """Images/s of training steps (loss, backward, Adam) of the default UNet on RGB size×size
    batches already in memory, after two warm-up steps."""
    cfg = compose_config("train", ["model.in_channels=3"])

    def plain(node: Any) -> dict[str, Any]:
        return cast(dict, OmegaConf.to_container(node, resolve=True))

    module = DiffusionModule(
        model=plain(cfg.model),
        schedule=plain(cfg.schedule),
        diffusion=plain(cfg.diffusion),
        optimizer=plain(cfg.optimizer),
        data_shape=(3, size, size),
    ).to(device)
    optimizer = torch.optim.Adam(module.model.parameters(), lr=2e-4)
    x = torch.rand((batch_size, 3, size, size), device=device) * 2 - 1
    start = 0.0
    for step in range(steps + 2):
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        loss = module.diffusion.training_loss(module.model, x, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="PNGs in the folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="image sides")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=50, help="batches timed per loader")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--folder", type=Path, default=None, help="where to write the PNGs")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        for size in args.sizes:
            root = write_folder(Path(scratch) / f"png_{size}", args.images, size)
            results[size] = {
                "loader": loader_rate(root, size, args.batch_size, args.batches),
                "training_images_per_s": training_rate(
                    size, args.batch_size, args.steps, torch.device(args.device)
                ),
            }
            print(json.dumps({f"{size}px": results[size]}), flush=True)
    return results


if __name__ == "__main__":
    main()
