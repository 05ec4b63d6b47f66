"""Training callbacks of our own: FLD of fresh samples during training."""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from ddpm_lightning.errors import DDPMError
from ddpm_lightning.fld import FLD
from ddpm_lightning.samplers import Sampler


class FLDCallback(L.Callback):
    """Every `every_n_epochs`, sample `num_samples` images and log their FLD as `val/fld`.

    The same seed every time, so epochs are comparable. Needs the shipped LeNet of the
    run's dataset; without one it warns once and does nothing (data=spiral has no dataset
    name, so it is simply off). Skipped under `fast_dev_run`, which only checks that code runs.
    """

    def __init__(
        self,
        sampler: Callable[..., Sampler],
        every_n_epochs: int = 1,
        num_samples: int = 1000,
        seed: int = 0,
    ):
        self.make_sampler = sampler
        self.every_n_epochs = int(every_n_epochs)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.fld: FLD | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dataset = pl_module.hparams.get("dataset")
        try:
            self.fld = FLD(dataset, pl_module.device) if dataset else None
        except DDPMError as exc:
            rank_zero_warn(f"FLD callback off: {exc}")
            self.fld = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fld is None or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self.fld.model.to(pl_module.device)
        sampler = pl_module.make_sampler(self.make_sampler, progress=False)
        images = pl_module.generate(sampler, self.num_samples, self.seed)
        pl_module.log("val/fld", self.fld(images), prog_bar=True)
