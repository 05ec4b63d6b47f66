"""Training callbacks of our own: two sample from the model as it trains (the FLD of fresh
samples, and sample grids from fixed noise; both run when validation ends, while the EMA
weights, if any, are swapped in), the others shape what a run shows and logs (a progress bar
over the whole run, throughput of training only, the test pass announced)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, ThroughputMonitor, WeightAveraging
from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from ddpm_lightning.diffusion.noise import shard
from ddpm_lightning.diffusion.samplers import Sampler
from ddpm_lightning.errors import ConfigError, DDPMError
from ddpm_lightning.evaluation.fld import FLD, record_files
from ddpm_lightning.evaluation.kid import kid_of_images
from ddpm_lightning.evaluation.pictures import grid, to_pil
from ddpm_lightning.evaluation.reference import test_features
from ddpm_lightning.training.time_budget import budget_timer, fitted_steps

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
    """Every `every_n_epochs`, sample `num_samples` images and log their FLD as `val/fld` and
    their KID as `val/kid`; after `trainer.test`, `test_num_samples` (0: none) as `test/fld`.

    The same seed every time, so epochs are comparable. Under DDP each process draws its
    shard of the samples (per-sample noise: the same images as one process) and torchmetrics
    adds up the processes' LeNet feature sums; each process's KID of its shard is unbiased, so
    their mean is too. Needs the shipped LeNet of the run's dataset,
    or `classifier` (a folder the classifier command wrote) for any other; without one, or
    with one for images of another shape, it warns once and does nothing (data=spiral has no
    dataset name, so it is simply off). Skipped under `fast_dev_run`, which only checks that
    code runs.
    """

    def __init__(
        self,
        sampler: Callable[..., Sampler],
        every_n_epochs: int = 1,
        num_samples: int = 1000,
        seed: int = 0,
        test_num_samples: int = 0,
        classifier: str | None = None,
    ):
        self.make_sampler = sampler
        self.every_n_epochs = int(every_n_epochs)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.test_num_samples = int(test_num_samples)
        self.classifier = classifier
        self.fld: FLD | None = None
        self.test_features: Tensor | None = None
        self.kid = float("nan")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dataset = pl_module.hparams.get("dataset")
        try:
            self.fld = (
                FLD(dataset, pl_module.device, trainer.is_global_zero, self.classifier)
                if dataset
                else None
            )
            if self.fld is not None:
                weights = record_files(self.fld.dataset, self.classifier)["weights"]
                self.test_features = test_features(
                    self.fld.model, self.fld.dataset, weights, weights.parent
                )[0]
        except DDPMError as exc:
            rank_zero_warn(f"FLD callback off: {exc}")
            self.fld = None
        shape = tuple(cast("DiffusionModule", pl_module).data_shape)
        if self.fld is not None and self.fld.input_shape != shape:
            rank_zero_warn(
                f"FLD callback off: the {dataset} LeNet takes images {self.fld.input_shape}, "
                f"the data are {shape}; pass callbacks.fld.classifier=<a classifier run folder>"
            )
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
        pl_module.log("val/kid", self.kid, sync_dist=True)

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
            assert self.test_features is not None, "loaded with the LeNet"
            self.kid = kid_of_images(self.fld.model, images, self.test_features, seed=self.seed)
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


class RunProgressBar(RichProgressBar):
    """Lightning's rich progress bar with one training bar for the whole run instead of one per
    epoch: the optimizer steps done out of the run's (`trainer.max_steps` or the epochs' steps,
    whichever is smaller), so the time it shows left is the run's. With `+trainer.max_time` the
    total is the steps that fit the time left at the pace so far (validation included), so the
    bar ends at the time limit. Validation and the test pass keep their own bars."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start: tuple[int, float] | None = None
        self.endless = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.start = None

    def run_steps(self, trainer: L.Trainer) -> float:
        """The run's total optimizer steps as described above (infinite when nothing bounds
        them, or while the pace of a time-limited run without a step bound is unknown)."""
        planned = trainer.estimated_stepping_batches
        timer = budget_timer(trainer)
        if timer is None:
            return planned
        step, elapsed = trainer.global_step, timer.time_elapsed()
        if self.start is None:
            self.start = (step, elapsed)
        start_step, start_time = self.start
        seconds_left = timer.time_remaining()
        if step == start_step or elapsed <= start_time or seconds_left is None:
            return planned
        return fitted_steps(
            step, (elapsed - start_time) / (step - start_step), seconds_left, planned
        )

    def show_run(self, trainer: L.Trainer) -> None:
        """Point the training bar at the steps done out of `run_steps`; an infinite total gets
        Lightning's bar without an end, replaced once the total is known. The total is set on
        the task itself: rich's `update(total=)` would forget the pace it measured, and with
        it the time left, each time a time-limited run's total moves."""
        if self.progress is None or not self.is_enabled:
            return
        total = self.run_steps(trainer)
        if self.train_progress_bar_id is not None and self.endless != math.isinf(total):
            self.progress.remove_task(self.train_progress_bar_id)
            self.train_progress_bar_id = None
        if self.train_progress_bar_id is None:
            description = self._get_train_description(trainer.current_epoch)
            self.train_progress_bar_id = self._add_task(total, description)
            self.endless = math.isinf(total)
        (task,) = [task for task in self.progress.tasks if task.id == self.train_progress_bar_id]
        task.total = total
        self.progress.update(self.train_progress_bar_id, completed=trainer.global_step)

    def _get_train_description(self, current_epoch: int) -> str:
        """Lightning's `Epoch N/M`, or `Epoch N` without an epoch limit (it would show `/-2`)."""
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            return f"Epoch {current_epoch}"
        return super()._get_train_description(current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.show_run(trainer)
        if self.progress is not None and self.train_progress_bar_id is not None:
            description = self._get_train_description(trainer.current_epoch)
            self.progress.update(self.train_progress_bar_id, description=description)
        self.refresh()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.show_run(trainer)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class TrainingThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor that logs training's figures only (`train/samples_per_sec`
    and the rest): validation is still timed, so that training's rate leaves it out, but neither
    validation nor the test pass logs its bookkeeping (`validate/*`, `test/batches`,
    `test/time`, `test/device/*`, each batch)."""

    def _compute(self, trainer: L.Trainer, iter_num: int | None = None) -> None:
        if trainer.state.stage == RunningStage.TRAINING:
            super()._compute(trainer, iter_num)


class TestAnnouncement(L.Callback):
    """Says, as the test pass after training begins, which weights it tests on how many
    batches: it runs over the whole test split and shows its results only at the end."""

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        averaged = any(isinstance(c, WeightAveraging) for c in trainer.callbacks)  # type: ignore[attr-defined]
        weights = "final EMA weights" if averaged else "final weights"
        batches = sum(trainer.num_test_batches)
        each = " per process" if trainer.world_size > 1 else ""
        print(f"testing the {weights} on {batches:,} batches{each} of the test split…", flush=True)
