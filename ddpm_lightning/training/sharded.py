"""Sampling on every device a Lightning Trainer runs on: each process draws its contiguous
shard of the sample indices (`shard`) through `Trainer.predict`, and the shards are gathered
in index order on every process. Per-sample noise makes the images those of one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ddpm_lightning.diffusion.noise import shard
from ddpm_lightning.diffusion.samplers import Sampler, StepCallback
from ddpm_lightning.training.module import DiffusionModule


class ShardedSampling(L.LightningModule):
    """`num_samples` samples of `module` with the sampler `make_sampler` builds, reproducible
    from `seed`; `labels` (N,) for conditional models. After `Trainer.predict(self)`,
    `images` holds all N (N, *data_shape) on every process, in index order.

    The sampler is built in `predict_step`, once the module sits on its device. `callback`
    (e.g. the reverse-process recorder) runs on the first process, which draws samples 0, 1, ….
    `first_index` numbers the samples from there, so a second drawing with the same seed draws
    other noise.
    """

    def __init__(
        self,
        module: DiffusionModule,
        make_sampler: Callable[..., Sampler],
        num_samples: int,
        seed: int,
        labels: Tensor | None = None,
        callback: StepCallback | None = None,
        first_index: int = 0,
    ):
        super().__init__()
        self.module = module
        self.make_sampler = make_sampler
        self.num_samples, self.seed = int(num_samples), int(seed)
        self.labels, self.callback = labels, callback
        self.first_index = int(first_index)
        self.drawn: Tensor | None = None
        self.images: Tensor | None = None

    def indices(self) -> range:
        return shard(self.num_samples, self.trainer.global_rank, self.trainer.world_size)

    def predict_dataloader(self) -> DataLoader:
        """One batch: this process's shard of indices."""
        batches = [torch.tensor(self.indices(), dtype=torch.long)]
        # A list of ready batches serves as a map-style dataset; torch types only Dataset.
        return DataLoader(cast(Dataset, batches), batch_size=None)

    def predict_step(self, indices: Tensor, batch_idx: int) -> Tensor:
        """Draw the samples `indices` (B,) of the run: (B, *data_shape)."""
        if len(indices) == 0:
            self.drawn = torch.empty((0, *self.module.data_shape), device=self.device)
            return self.drawn
        first = self.trainer.is_global_zero
        sampler = self.module.make_sampler(self.make_sampler, progress=first)
        labels = None if self.labels is None else self.labels[indices.cpu()]
        self.drawn = self.module.generate(
            sampler,
            len(indices),
            self.seed,
            callback=self.callback if first else None,
            labels=labels,
            indices=(indices + self.first_index).tolist(),
        )
        return self.drawn

    def on_predict_epoch_end(self) -> None:
        """Gather the shards, each padded to the longest, and keep the first N rows."""
        assert self.drawn is not None, "predict_step ran on every process"
        longest = len(shard(self.num_samples, 0, self.trainer.world_size))
        padded = self.drawn.new_zeros((longest, *self.module.data_shape))
        padded[: len(self.drawn)] = self.drawn
        gathered: Any = self.all_gather(padded)
        self.images = gathered.reshape(-1, *self.module.data_shape)[: self.num_samples].cpu()
