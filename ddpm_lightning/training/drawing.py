"""Drawing a model's samples for the sample and evaluate commands, from plain values: which
checkpoint `ckpt_path=last` means, the samples drawn on every device of a Trainer, and the
record of what made them (samples.npz's metadata, metrics.json)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from ddpm_lightning.components import build, component_settings
from ddpm_lightning.diffusion.denoiser import Denoiser
from ddpm_lightning.diffusion.samplers import Sampler, StepCallback
from ddpm_lightning.diffusion.self_check import (
    check_seed,
    check_timesteps,
    label_errors,
    off_own_class,
    self_check_settings,
)
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.safety import find_last_checkpoint
from ddpm_lightning.training.sharded import ShardedSampling


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_checkpoint(
    ckpt_path: str | None, pretrained: str | None, log_dir: str | Path, task: str
) -> str | Path | None:
    """The file behind `ckpt_path=` (`load_model` loads `pretrained=`). `last` is the newest
    `checkpoints/last.ckpt` under `log_dir/<task>/` that no fast_dev_run smoke test wrote; one
    line names it."""
    if ckpt_path == "last" and pretrained is None:
        return str(find_last_checkpoint(Path(log_dir) / task, task))
    return ckpt_path


@dataclass(frozen=True)
class Drawing:
    """What the sample and evaluate commands draw from and with, resolved once from their
    config: the model (`pretrained`, or the `ckpt_path` file with `last` found), the sampler's
    named settings, the Trainer's config, the seed and the model that autoguidance guides away
    from (`guide`), if any; `folder_guide` is false for guide=false, which turns off the guide a
    model folder ships too."""

    pretrained: str | None
    ckpt_path: str | Path | None
    sampler: dict[str, Any]
    trainer: dict[str, Any]
    seed: int
    guide: str | None = None
    folder_guide: bool = True

    @classmethod
    def from_config(cls, cfg: DictConfig) -> Drawing:
        pretrained = cfg.get("pretrained")
        task = cfg.get("train_task_name", "train")
        guide = cfg.get("guide")
        return cls(
            pretrained=None if pretrained is None else str(pretrained),
            ckpt_path=resolve_checkpoint(cfg.get("ckpt_path"), pretrained, cfg.paths.log_dir, task),
            sampler=component_settings("sampler", cfg.sampler),
            trainer=cast("dict[str, Any]", OmegaConf.to_container(cfg.trainer, resolve=True)),
            seed=int(cfg.seed),
            guide=None if guide is None or guide is False else str(guide),
            folder_guide=guide is not False,
        )

    @property
    def source(self) -> dict[str, str]:
        """`{"pretrained": …}` or `{"ckpt_path": …}`: the model, as samples' metadata names it."""
        if self.pretrained:
            return {"pretrained": self.pretrained}
        return {"ckpt_path": str(self.ckpt_path)}

    @property
    def provenance(self) -> dict[str, str]:
        """`source`, and the `guide` the samples were drawn with."""
        return self.source if self.guide is None else {**self.source, "guide": self.guide}

    def make_sampler(self) -> Callable[..., Sampler]:
        """The sampler's partial, which `DiffusionModule.make_sampler` completes."""
        return build("sampler", self.sampler)


def applied_settings(settings: dict[str, Any], sampler: Sampler) -> dict[str, Any]:
    """The sampler's named `settings` with the guidance its denoiser applies (`make_sampler`):
    the default γ where they left it null, no interval for unconditional models."""
    applied = cast(Denoiser, sampler.denoiser).settings()
    return {**settings, **{key: applied[key] for key in ("guidance_scale", "guidance_interval")}}


def samples_metadata(
    module: DiffusionModule,
    source: dict[str, str],
    seed: int,
    settings: dict[str, Any],
    sampler: Sampler,
) -> dict[str, Any]:
    """What made a set of samples: the model's dataset (so evaluate scores them against the
    right test set), `source` (`{"pretrained": …}` or `{"ckpt_path": …}`), the seed and the
    sampler's settings as applied, with its network calls per sample."""
    return {
        "dataset": module.hparams.get("dataset"),
        **source,
        "seed": seed,
        "sampler": applied_settings(settings, sampler),
        "network_evaluations": sampler.network_evaluations(),
    }


def predict_trainer(trainer: dict[str, Any]) -> L.Trainer:
    """The `trainer` config for sampling: one process per device (`trainer=ddp`,
    `trainer=ddp_cpu`, `trainer.devices=N`); no logger, checkpoints, model summary or Lightning
    progress bar (the sampler shows its own); `ShardedSampling` chooses each process's
    samples. Precisions that convert the weights themselves (`16-true`, `bf16-true`) are
    refused: the sampler's noise and arithmetic stay float32."""
    precision = str(trainer.get("precision"))
    if precision in ("16-true", "bf16-true"):
        raise ConfigError(
            f"trainer.precision={precision} converts the network's weights, which sampling does "
            "not support; use 32-true, or bf16-mixed / 16-mixed for autocast"
        )
    return instantiate(
        trainer,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )


def draw_samples(
    trainer: dict[str, Any],
    module: DiffusionModule,
    make_sampler: Callable[..., Sampler],
    num_samples: int,
    seed: int,
    labels: Tensor | None,
    callback: StepCallback | None = None,
    first_index: int = 0,
) -> tuple[Tensor, L.Trainer]:
    """`num_samples` samples (N, *data_shape) of `module` with the sampler `make_sampler`
    builds and `seed`, drawn on the devices of the `trainer` config and gathered in order on
    every process (on the CPU), and the Trainer that drew them (its `global_rank` says which
    process this is). Samples with NaN or infinite values stop here, before any file.
    `first_index` numbers the samples from there (`ShardedSampling`)."""
    predictor = predict_trainer(trainer)
    task = ShardedSampling(module, make_sampler, num_samples, seed, labels, callback, first_index)
    predictor.predict(task, return_predictions=False)
    assert task.images is not None, "set by ShardedSampling.on_predict_epoch_end"
    bad = int((~torch.isfinite(task.images)).flatten(1).any(1).sum())
    if bad:
        raise DataError(
            f"{bad} of {num_samples} samples hold NaN or infinite values: the model's weights "
            "are damaged or its training diverged; nothing was written"
        )
    return task.images, predictor


def draw_checked_samples(
    drawing: Drawing,
    module: DiffusionModule,
    make_sampler: Callable[..., Sampler],
    labels: Tensor | None,
    settings: Mapping[str, Any],
    callback: StepCallback | None = None,
) -> tuple[Tensor, L.Trainer, dict[str, Any] | None]:
    """`draw_samples` of len(labels) samples (`settings["num_samples"]` for an unconditional
    model) on `drawing`'s devices and seed, then for a conditional model
    `settings["self_check"]["rounds"]` rounds of drawing again the samples the model itself
    puts in another class (`self_check_settings`; round r draws sample indices from r × N on),
    and the record of the check (None when none ran): its settings, how many samples each round
    checked and drew again."""
    check = self_check_settings(**settings["self_check"])
    num_samples = int(settings["num_samples"]) if labels is None else len(labels)
    trainer, seed = drawing.trainer, drawing.seed
    images, predictor = draw_samples(
        trainer, module, make_sampler, num_samples, seed, labels, callback
    )
    classes = module.num_classes
    if labels is None or classes is None or check["rounds"] == 0:
        return images, predictor, None
    images = images.clone()
    timesteps = check_timesteps(module.diffusion.num_timesteps, check["num_levels"])
    suspects, first_index = torch.arange(num_samples), 0
    checked, redrawn = [], []
    for round_ in range(1, check["rounds"] + 1):
        seeds = [check_seed(seed, first_index + i) for i in range(len(suspects))]
        errors = label_errors(
            module.model,
            module.diffusion,
            images[suspects],
            classes,
            timesteps,
            seeds,
            progress=predictor.is_global_zero,
        )
        off = suspects[off_own_class(errors, labels[suspects], check["margin"])]
        checked.append(len(suspects))
        redrawn.append(len(off))
        if predictor.is_global_zero:
            print(
                f"self-check, round {round_} of {check['rounds']}: the model puts {len(off):,} "
                f"of {len(suspects):,} samples in another class"
                + ("; drawing them again" if len(off) else ""),
                flush=True,
            )
        if not len(off):
            break
        suspects, first_index = off, round_ * num_samples
        images[off], _ = draw_samples(
            trainer, module, make_sampler, len(off), seed, labels[off], first_index=first_index
        )
    return images, predictor, {**check, "checked": checked, "redrawn": redrawn}


def with_check(checked: dict[str, Any] | None) -> dict[str, Any]:
    """The samples' metadata entry of a self-check's record (`draw_checked_samples`), if any."""
    return {} if checked is None else {"self_check": checked}
