"""`python -m ddpm_lightning.sample ckpt_path=PATH`: samples from a trained checkpoint.

Images: grid.png, samples.npz (uint8 images) and reverse.gif. 2-D points (data=spiral):
points.png (samples over the spiral) and samples.npz (float points).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ddpm_lightning.checkpoints import load_module
from ddpm_lightning.config import config_dir
from ddpm_lightning.errors import ConfigError, report_errors
from ddpm_lightning.pictures import ReverseProcessRecorder, save_grid, to_uint8
from ddpm_lightning.spiral import save_spiral_plot


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Sample `cfg.num_samples` images with `cfg.sampler`; return the written files."""
    if int(cfg.num_samples) < 1:
        raise ConfigError(f"num_samples={cfg.num_samples} must be at least 1")
    device = default_device()
    module = load_module(cfg.ckpt_path).to(device)
    sampler = module.make_sampler(instantiate(cfg.sampler))
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    points = len(module.data_shape) == 1
    recorder = (
        None
        if points
        else ReverseProcessRecorder(len(sampler.steps()), cfg.gif_images, cfg.gif_frames)
    )
    samples = module.generate(sampler, cfg.num_samples, cfg.seed, callback=recorder)
    if points:
        files = {name: out_dir / name for name in ("points.png", "samples.npz")}
        save_spiral_plot(samples, files["points.png"])
        np.savez_compressed(files["samples.npz"], points=samples.cpu().numpy())
    else:
        files = {name: out_dir / name for name in ("grid.png", "samples.npz", "reverse.gif")}
        save_grid(samples, files["grid.png"])
        np.savez_compressed(files["samples.npz"], images=to_uint8(samples).cpu().numpy())
        recorder.save_gif(files["reverse.gif"], samples)
    for path in files.values():
        print(f"wrote {path}")
    return files


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="sample")
@report_errors
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
