"""`python -m ddpm_lightning.sample ckpt_path=PATH | pretrained=mnist`: samples from a model.

Images: grid.png, grid_large.png (the same, each image enlarged to at least 64 px), samples.npz
(uint8 images, labels for conditional models, and `metadata`: a JSON string with the dataset,
the model, seed and sampler settings) and reverse.gif (x_t and x̂₀, labelled with t);
conditional models add class_grid.png (a row per class) and same_noise.png (the picture of
Nathan van Maastricht's post: every row starts from the same noise, one row per label). 2-D points
(data=spiral): points.png (samples over the spiral) and samples.npz (float points).
Samples are drawn on the devices of `trainer` (one by default; `trainer=ddp` splits them over
every GPU) and the files written once, as one set that replaces the set of an earlier run in
`out_dir` whole (`ddpm_lightning.training.outputs`).
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from torch import Tensor

from ddpm_lightning.config import hydra_command
from ddpm_lightning.data.spiral import save_spiral_plot
from ddpm_lightning.diffusion.guidance import require_conditional
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.pictures import (
    ReverseProcessRecorder,
    class_grid,
    save_grid,
    save_large_grid,
    to_pil,
    to_uint8,
)
from ddpm_lightning.settings.overrides import command_overrides
from ddpm_lightning.sharing.pretrained import load_drawn
from ddpm_lightning.sharing.recommended import with_recommended_sampler
from ddpm_lightning.training.drawing import (
    Drawing,
    draw_checked_samples,
    samples_metadata,
    with_check,
)
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.outputs import Writer, claimed, write_outputs
from ddpm_lightning.training.preflight import check_sampling_request

# Lightning 2.6 calls torch APIs that torch 2.14 deprecates (a pytree check and the all-gather
# of the shards); nothing for users to act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")


def requested_labels(labels, num_samples: int, module: DiffusionModule) -> Tensor | None:
    """The `labels=` option: null (all classes for conditional models), `all`, or a list."""
    if labels is None:
        return module.sample_labels(num_samples)
    require_conditional(module.num_classes, f"labels={labels}")
    if labels == "all":
        return module.sample_labels(num_samples)
    if isinstance(labels, str) or not labels or not all(isinstance(v, int) for v in labels):
        raise ConfigError(f"labels={labels} must be `all` or a list of class indices like [3,7]")
    return module.sample_labels(len(labels), torch.tensor(list(labels)))


SAMPLE_FILES = (
    "grid.png",
    "grid_large.png",
    "samples.npz",
    "reverse.gif",
    "class_grid.png",
    "same_noise.png",
    "points.png",
)
# Writes one file of the samples to the path it is given.


def same_noise_images(module: DiffusionModule, sampler: Sampler, columns: int, seed: int) -> Tensor:
    """The same-noise picture of Nathan van Maastricht's post: `columns` starting noises (those
    of samples 0 … columns−1), each sampled once per class (rows), class-major."""
    noise = SampleNoise(seed, range(columns), module.data_shape, 1, module.device).initial()
    classes = module.num_classes
    assert classes is not None, "called for conditional models only"
    return module.generate(
        sampler,
        classes * columns,
        seed,
        labels=torch.arange(classes).repeat_interleave(columns),
        noise=noise.repeat(classes, *[1] * len(module.data_shape)),
    )


def point_outputs(samples: Tensor) -> dict[str, Writer]:
    """points.png and samples.npz of 2-D points, by name."""
    return {
        "points.png": partial(save_spiral_plot, samples),
        "samples.npz": lambda path: np.savez_compressed(path, points=samples.cpu().numpy()),
    }


def image_outputs(
    samples: Tensor,
    labels: Tensor | None,
    metadata: dict[str, Any],
    recorder: ReverseProcessRecorder,
) -> dict[str, Writer]:
    """grid.png, grid_large.png, samples.npz and reverse.gif of images, by name, and
    class_grid.png for labels."""
    arrays: dict[str, Any] = {
        "images": to_uint8(samples).cpu().numpy(),
        "metadata": np.array(json.dumps(metadata)),
    }
    if labels is not None:
        arrays["labels"] = labels.numpy()
    outputs: dict[str, Writer] = {
        "grid.png": partial(save_grid, samples),
        "grid_large.png": partial(save_large_grid, samples),
        "samples.npz": lambda path: np.savez_compressed(path, **arrays),
        "reverse.gif": lambda path: recorder.save_gif(path, samples),
    }
    if labels is not None:
        outputs["class_grid.png"] = to_pil(class_grid(samples.cpu(), labels)).save
    return outputs


def draw_outputs(cfg: DictConfig) -> dict[str, Writer] | None:
    """The files of `cfg`'s samples by name, drawn on the devices of `cfg.trainer` and ready to
    write; None on every process but the first."""
    drawing, module = load_drawn(Drawing.from_config(cfg))
    drawing = with_recommended_sampler(
        drawing, command_overrides(), module.diffusion.objective.value
    )
    make_sampler = drawing.make_sampler()
    sampler = module.make_sampler(make_sampler)
    labels = requested_labels(cfg.labels, int(cfg.num_samples), module)
    num_samples = int(cfg.num_samples) if labels is None else len(labels)
    check_sampling_request(module, sampler, num_samples, bool(cfg.force))
    points = len(module.data_shape) == 1
    recorder = (
        None
        if points
        else ReverseProcessRecorder(len(sampler.steps()), cfg.gif_images, cfg.gif_frames)
    )
    samples, trainer, checked = draw_checked_samples(
        drawing, module, make_sampler, labels, cfg, recorder
    )
    if not trainer.is_global_zero:
        return None
    if recorder is None:
        return point_outputs(samples)
    metadata = samples_metadata(module, drawing.provenance, drawing.seed, drawing.sampler, sampler)
    outputs = image_outputs(samples, labels, {**metadata, **with_check(checked)}, recorder)
    columns = int(cfg.same_noise_columns)
    if labels is not None and columns > 0:
        module.to(trainer.strategy.root_device)
        images = same_noise_images(module, module.make_sampler(make_sampler), columns, cfg.seed)
        outputs["same_noise.png"] = partial(save_grid, images, nrow=columns)
    return outputs


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Sample `cfg.num_samples` images with `cfg.sampler` on the devices of `cfg.trainer`;
    return the files written (by the first process only; {} on the others). A second command
    into `cfg.out_dir` is refused while this one runs."""
    if int(cfg.num_samples) < 1:
        raise ConfigError(f"num_samples={cfg.num_samples} must be at least 1")
    if getattr(rank_zero_only, "rank", 0) == 0:
        print(f"out_dir: {Path(cfg.out_dir).resolve()}", flush=True)
    with claimed(cfg.out_dir, "sample") as out_dir:
        outputs = draw_outputs(cfg)
        return {} if outputs is None else write_outputs(out_dir, SAMPLE_FILES, outputs)


main = hydra_command("sample", sample)


if __name__ == "__main__":
    main()
