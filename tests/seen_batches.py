"""A test-only callback, passed as `+callbacks.seen._target_=seen_batches.SeenBatches`: each
process writes a fingerprint of every training image it saw to `seen_rank<R>.json`, so a
test can check that DDP processes trained on disjoint shards."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
from torch import Tensor


def fingerprint(image: Tensor) -> str:
    return hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest()


class SeenBatches(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.seen: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.extend(fingerprint(image) for image in batch[0])

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"seen_rank{trainer.global_rank}.json"
        record = {"world_size": trainer.world_size, "images": self.seen}
        path.write_text(json.dumps(record))
