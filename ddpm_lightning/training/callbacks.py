"""Training callbacks of our own, which sample from the model as it trains: the FLD of fresh
samples, and sample grids from fixed noise. Both run when validation ends, while the EMA
weights (if any) are swapped in."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import lightning as L
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from ddpm_lightning.diffusion.noise import shard
from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.errors import ConfigError, DDPMError
from ddpm_lightning.evaluation.fld import FLD
from ddpm_lightning.evaluation.pictures import grid, to_pil

if TYPE_CHECKING:
    from ddpm_lightning.training.module import DiffusionModule


def batch_size(batch: tuple[Tensor, Tensor]) -> int:
    """Images in a training batch, for Lightning's ThroughputMonitor."""
    return batch[0].shape[0]


def log_image(loggers: list[Logger], key: str, image: Tensor, step: int) -> None:
    """Send a (3, H, W) uint8 picture to every logger that takes images (wandb, TensorBoard)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[to_pil(image)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=step)


class FLDCallback(L.Callback):
    """Every `every_n_epochs`, sample `num_samples` images and log their FLD as `val/fld`;
    after `trainer.test`, `test_num_samples` (0: none) as `test/fld`.

    The same seed every time, so epochs are comparable. Under DDP each process draws its
    shard of the samples (per-sample noise: the same images as one process) and torchmetrics
    adds up the processes' LeNet feature sums. Needs the shipped LeNet of the run's dataset;
    without one it warns once and does nothing (data=spiral has no dataset name, so it is
    simply off). Skipped under `fast_dev_run`, which only checks that code runs.
    """

    def __init__(
        self,
        sampler: Callable[..., Sampler],
        every_n_epochs: int = 1,
        num_samples: int = 1000,
        seed: int = 0,
        test_num_samples: int = 0,
    ):
        self.make_sampler = sampler
        self.every_n_epochs = int(every_n_epochs)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.test_num_samples = int(test_num_samples)
        self.fld: FLD | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dataset = pl_module.hparams.get("dataset")
        try:
            self.fld = (
                FLD(dataset, pl_module.device, holds_test_set=trainer.is_global_zero)
                if dataset
                else None
            )
        except DDPMError as exc:
            rank_zero_warn(f"FLD callback off: {exc}")
            self.fld = None
        if self.fld is not None:
            rank_zero_info(f"val/fld is measured with the LeNet-5 {self.fld.lenet}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Trainer.__init__ sets fast_dev_run (in _init_debugging_flags) without declaring it.
        if self.fld is None or trainer.sanity_checking or trainer.fast_dev_run:  # type: ignore[attr-defined]
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        pl_module.log("val/fld", self.measure(trainer, pl_module, self.num_samples), prog_bar=True)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fld is None or self.test_num_samples == 0 or trainer.fast_dev_run:  # type: ignore[attr-defined]
            return
        pl_module.log("test/fld", self.measure(trainer, pl_module, self.test_num_samples))

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, num_samples: int) -> float:
        """FLD of `num_samples` samples, this process drawing its shard of them."""
        assert self.fld is not None, "measured only with a LeNet"
        module = cast("DiffusionModule", pl_module)
        self.fld.to(module.device)
        indices = shard(num_samples, trainer.global_rank, trainer.world_size)
        if indices:
            sampler = module.make_sampler(self.make_sampler, progress=False)
            labels = module.sample_labels(num_samples)
            images = module.generate(
                sampler,
                len(indices),
                self.seed,
                labels=None if labels is None else labels[indices.start : indices.stop],
                indices=indices,
            )
            self.fld.update(images)
        return self.fld.compute()


class SampleGridCallback(L.Callback):
    """Every `every_n_epochs` and when training ends, a grid of `num_samples` images from the
    same noise and seed each time (so epochs compare), saved as `samples/epoch_XXX.png`
    (`samples/final.png` at the end) and logged as `samples/grid` to every image logger.
    Conditional models get an equal share of each class, sorted by class. Drawn by the first
    process only."""

    def __init__(
        self,
        sampler: Callable[..., Sampler],
        dirpath: str | Path,
        every_n_epochs: int = 1,
        num_samples: int = 64,
        seed: int = 0,
    ):
        if int(every_n_epochs) < 1 or int(num_samples) < 1:
            raise ConfigError(
                "callbacks.sample_grid.every_n_epochs and .num_samples must be at least 1"
            )
        self.make_sampler = sampler
        self.dirpath = Path(dirpath)
        self.every_n_epochs = int(every_n_epochs)
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def draw(self, trainer: L.Trainer, pl_module: DiffusionModule, name: str) -> None:
        sampler = pl_module.make_sampler(self.make_sampler, progress=False)
        images = pl_module.generate(sampler, self.num_samples, self.seed)
        picture = grid(images.cpu())
        self.dirpath.mkdir(parents=True, exist_ok=True)
        to_pil(picture).save(self.dirpath / name)
        log_image(trainer.loggers, "samples/grid", picture, trainer.global_step)

    def active(self, trainer: L.Trainer, pl_module: DiffusionModule) -> bool:
        # Trainer.__init__ sets fast_dev_run (in _init_debugging_flags) without declaring it.
        return (
            trainer.is_global_zero
            and not (trainer.sanity_checking or trainer.fast_dev_run)  # type: ignore[attr-defined]
            and len(pl_module.data_shape) == 3
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = cast("DiffusionModule", pl_module)
        if not self.active(trainer, module) or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.draw(trainer, module, f"epoch_{trainer.current_epoch:03d}.png")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = cast("DiffusionModule", pl_module)
        if self.active(trainer, module) and trainer.global_step > 0:
            self.draw(trainer, module, "final.png")
