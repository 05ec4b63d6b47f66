"""Per-sample noise: every random number that sample i of a run draws comes from a generator of
its own, seeded by (seed, i) alone, so any split of the samples over batches, processes or
devices gives the same images; and the split of a run over processes (`shard`)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

# Floats of step noise one sample draws per generator call (256 KiB): whole blocks of steps at
# once keep many-step samplers on small data fast, while images stay within memory.
BLOCK_FLOATS = 2**16


def shard(num_samples: int, rank: int, world_size: int) -> range:
    """The sample indices process `rank` of `world_size` draws: contiguous blocks of
    ⌈N / world_size⌉ in rank order (the last ones shorter or empty), so blocks laid end to end
    are 0 … N−1 in order."""
    size = math.ceil(num_samples / world_size)
    return range(min(rank * size, num_samples), min((rank + 1) * size, num_samples))


def sample_seed(seed: int, index: int, *stream: int) -> int:
    """The 64-bit seed of sample `index` of a run seeded `seed` (NumPy's SeedSequence mixes the
    pair, so (seed, i + 1) does not repeat (seed + 1, i)); a `stream` number gives the sample
    other draws beside its own noise."""
    entropy = [int(seed), int(index), *map(int, stream)]
    (state,) = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
    return int(state)


class SampleNoise:
    """Standard normal noise for the samples `indices` of a run seeded `seed`, each of `shape`.

    Sample i draws its x_T first, then the noise of its steps, as many steps per call as fit in
    `BLOCK_FLOATS` (at most `num_steps`). The blocks depend only on the step count and the data
    shape, so a sample draws the same numbers in every split.
    """

    def __init__(
        self,
        seed: int,
        indices: Iterable[int],
        shape: tuple[int, ...],
        num_steps: int,
        device: torch.device | str = "cpu",
    ):
        self.generators = [
            torch.Generator(device).manual_seed(sample_seed(seed, i)) for i in indices
        ]
        self.shape, self.device = tuple(shape), torch.device(device)
        self.block = max(1, min(int(num_steps), BLOCK_FLOATS // max(1, math.prod(self.shape))))
        self.cached: tuple[int, Tensor] | None = None

    def draw(self, *leading: int) -> Tensor:
        """One call per sample: (B, *leading, *shape)."""
        return torch.stack(
            [
                torch.randn((*leading, *self.shape), generator=g, device=self.device)
                for g in self.generators
            ]
        )

    def initial(self) -> Tensor:
        """x_T: (B, *shape)."""
        return self.draw()

    def at_step(self, i: int) -> Tensor:
        """The noise z of the i-th visited step: (B, *shape)."""
        block = i // self.block
        if self.cached is None or self.cached[0] != block:
            self.cached = (block, self.draw(self.block))
        return self.cached[1][:, i % self.block]
