"""`python -m ddpm_lightning.sample ckpt_path=PATH | pretrained=mnist`: samples from a model.

Images: grid.png, samples.npz (uint8 images, labels for conditional models, and `metadata`:
a JSON string with the dataset, the model, seed and sampler settings) and reverse.gif;
conditional models add class_grid.png (a row per class) and same_noise.png (the picture of
Nathan van Maastricht's post: every row starts from the same noise, one row per label). 2-D points
(data=spiral): points.png (samples over the spiral) and samples.npz (float points).
Samples are drawn on the devices of `trainer` (one by default; `trainer=ddp` splits them over
every GPU) and the files written once.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from ddpm_lightning.components import build, component_settings
from ddpm_lightning.config import hydra_command
from ddpm_lightning.data.spiral import save_spiral_plot
from ddpm_lightning.diffusion.guidance import require_conditional
from ddpm_lightning.diffusion.noise import SampleNoise
from ddpm_lightning.diffusion.samplers import Sampler, StepCallback
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.pictures import (
    ReverseProcessRecorder,
    class_grid,
    save_grid,
    to_pil,
    to_uint8,
)
from ddpm_lightning.preflight import check_sampling_request, writable_folder
from ddpm_lightning.sharing.pretrained import load_model
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.safety import find_last_checkpoint
from ddpm_lightning.training.sharded import ShardedSampling

# Lightning 2.6 calls torch APIs that torch 2.14 deprecates (a pytree check and the all-gather
# of the shards); nothing for users to act on.
warnings.filterwarnings("ignore", message=".*LeafSpec.*")
warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_checkpoint(cfg: DictConfig) -> str | Path | None:
    """The file behind `ckpt_path=` (`load_model` loads `pretrained=`). `ckpt_path=last` is
    the newest `checkpoints/last.ckpt` under `paths.log_dir/<train_task_name>/` (default
    `logs/train/`) that no fast_dev_run smoke test wrote; one line names it."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path == "last" and cfg.get("pretrained") is None:
        task = cfg.get("train_task_name", "train")
        ckpt_path = str(find_last_checkpoint(Path(cfg.paths.log_dir) / task, task))
    return ckpt_path


def applied_settings(cfg: DictConfig, sampler: Sampler) -> dict[str, Any]:
    """`cfg.sampler` with the guidance `make_sampler` applied: the default γ where the config
    left it null, no interval for unconditional models."""
    settings = component_settings("sampler", cfg.sampler)
    interval = sampler.guidance_interval
    return {
        **settings,
        "guidance_scale": sampler.guidance_scale,
        "guidance_interval": None if interval is None else list(interval),
    }


def image_source(cfg: DictConfig, ckpt_path: str | Path | None, sampler: Sampler) -> dict[str, Any]:
    """What makes the images: the checkpoint file (`ckpt_path=last` resolved) or the shipped
    model's name, the seed and the sampler's settings as applied."""
    model = (
        {"pretrained": str(cfg.pretrained)}
        if cfg.get("pretrained")
        else {"ckpt_path": str(ckpt_path)}
    )
    return {**model, "seed": cfg.seed, "sampler": applied_settings(cfg, sampler)}


def samples_metadata(
    cfg: DictConfig, ckpt_path: str | Path | None, module: DiffusionModule, sampler: Sampler
) -> dict[str, Any]:
    """The `metadata` entry of samples.npz (a JSON string): the model's dataset and
    `image_source`, so the evaluate command scores the images against the right test set."""
    return {"dataset": module.hparams.get("dataset"), **image_source(cfg, ckpt_path, sampler)}


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


def same_noise_grid(
    module: DiffusionModule, sampler: Sampler, columns: int, seed: int, path: Path
) -> None:
    """The same-noise picture of Nathan van Maastricht's post: `columns` starting noises (those
    of samples 0 … columns−1), each sampled once per class (rows)."""
    noise = SampleNoise(seed, range(columns), module.data_shape, 1, module.device).initial()
    classes = module.num_classes
    assert classes is not None, "called for conditional models only"
    images = module.generate(
        sampler,
        classes * columns,
        seed,
        labels=torch.arange(classes).repeat_interleave(columns),
        noise=noise.repeat(classes, *[1] * len(module.data_shape)),
    )
    save_grid(images, path, nrow=columns)


def predict_trainer(cfg: DictConfig) -> L.Trainer:
    """`cfg.trainer` for sampling: one process per device (`trainer=ddp`, `trainer=ddp_cpu`,
    `trainer.devices=N`); no logger, checkpoints, model summary or Lightning progress bar (the
    sampler shows its own); `ShardedSampling` chooses each process's samples."""
    return instantiate(
        cfg.trainer,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )


def draw_samples(
    cfg: DictConfig,
    module: DiffusionModule,
    num_samples: int,
    labels: Tensor | None,
    callback: StepCallback | None = None,
) -> tuple[Tensor, L.Trainer]:
    """`num_samples` samples (N, *data_shape) of `module` with `cfg.sampler` and `cfg.seed`,
    drawn on the devices of `cfg.trainer` and gathered in order on every process (on the CPU),
    and the trainer that drew them (its `global_rank` says which process this is)."""
    trainer = predict_trainer(cfg)
    task = ShardedSampling(
        module, build("sampler", cfg.sampler), num_samples, cfg.seed, labels, callback
    )
    trainer.predict(task, return_predictions=False)
    assert task.images is not None, "set by ShardedSampling.on_predict_epoch_end"
    return task.images, trainer


def sample(cfg: DictConfig) -> dict[str, Path]:
    """Sample `cfg.num_samples` images with `cfg.sampler` on the devices of `cfg.trainer`;
    return the files written (by the first process only; {} on the others)."""
    if int(cfg.num_samples) < 1:
        raise ConfigError(f"num_samples={cfg.num_samples} must be at least 1")
    out_dir = writable_folder(cfg.out_dir, "out_dir")
    ckpt_path = resolve_checkpoint(cfg)
    module = load_model(ckpt_path, cfg.get("pretrained"))
    sampler = module.make_sampler(build("sampler", cfg.sampler))
    labels = requested_labels(cfg.labels, int(cfg.num_samples), module)
    num_samples = int(cfg.num_samples) if labels is None else len(labels)
    check_sampling_request(module, sampler, num_samples, bool(cfg.force))
    points = len(module.data_shape) == 1
    recorder = (
        None
        if points
        else ReverseProcessRecorder(len(sampler.steps()), cfg.gif_images, cfg.gif_frames)
    )
    samples, trainer = draw_samples(cfg, module, num_samples, labels, recorder)
    if not trainer.is_global_zero:
        return {}
    if points:
        files = {name: out_dir / name for name in ("points.png", "samples.npz")}
        save_spiral_plot(samples, files["points.png"])
        np.savez_compressed(files["samples.npz"], points=samples.cpu().numpy())
    else:
        files = {name: out_dir / name for name in ("grid.png", "samples.npz", "reverse.gif")}
        save_grid(samples, files["grid.png"])
        arrays: dict[str, Any] = {
            "images": to_uint8(samples).cpu().numpy(),
            "metadata": np.array(json.dumps(samples_metadata(cfg, ckpt_path, module, sampler))),
        }
        if labels is not None:
            arrays["labels"] = labels.numpy()
        np.savez_compressed(files["samples.npz"], **arrays)
        assert recorder is not None  # recorded unless the samples are points
        recorder.save_gif(files["reverse.gif"], samples)
        if labels is not None:
            files["class_grid.png"] = out_dir / "class_grid.png"
            to_pil(class_grid(samples.cpu(), labels)).save(files["class_grid.png"])
            if int(cfg.same_noise_columns) > 0:
                files["same_noise.png"] = out_dir / "same_noise.png"
                module.to(trainer.strategy.root_device)
                same_noise_grid(
                    module,
                    module.make_sampler(build("sampler", cfg.sampler)),
                    int(cfg.same_noise_columns),
                    cfg.seed,
                    files["same_noise.png"],
                )
    for path in files.values():
        print(f"wrote {path}")
    return files


main = hydra_command("sample", sample)


if __name__ == "__main__":
    main()
