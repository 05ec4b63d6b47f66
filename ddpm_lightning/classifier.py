"""`python -m ddpm_lightning.classifier data=mnist`: train the LeNet-5 that FLD measures with.

Trains on the same padded, [-1, 1]-scaled data as the diffusion model, with light
augmentation, then exports the weights, their SHA-256 and test accuracy, and the test set's
feature statistics to the run's folder (or `export_dir`). Only `replace_shipped=true` writes
them to `ddpm_lightning/assets/`, replacing the LeNet every FLD is measured with (see `fld.py`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from ddpm_lightning.config import hydra_command
from ddpm_lightning.data.registry import dataset_record
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import (
    ASSETS_DIR,
    add_images,
    asset_paths,
    feature_statistics,
    fld_metric,
    lenet_features,
    sha256,
)
from ddpm_lightning.models.lenet import LeNet5
from ddpm_lightning.training.preflight import writable_folder


def augment(x: Tensor, max_shift: int, max_rotation: float, hflip: bool) -> Tensor:
    """Random rotation (± degrees), translation (± pixels) and optional horizontal flips.

    x: (B, 1, H, W) in [-1, 1]; the background stays black (-1).
    """
    b, _, h, w = x.shape
    angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(max_rotation)
    shift = (
        (torch.rand(b, 2, device=x.device) * 2 - 1)
        * max_shift
        * 2
        / torch.tensor([w, h], device=x.device)
    )
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    if hflip:
        flip = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
        theta[:, :, 0] = theta[:, :, 0] * flip[:, None]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False) - 1


class ClassifierModule(L.LightningModule):
    """LeNet-5 trained with cross-entropy, Adam and a cosine learning-rate decay."""

    def __init__(self, lr: float = 1e-3, augment: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = LeNet5()
        self.augment = augment

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.augment:
            x = augment(x, **self.augment)
        loss = F.cross_entropy(self.model(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def evaluate(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, y = batch
        logits = self.model(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y))
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.evaluate(batch, "test")

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=int(self.trainer.estimated_stepping_batches)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def reference_rows(model: LeNet5, datamodule, test_stats: dict[str, Tensor]) -> dict:
    """FLD reference points: test half vs half, 10k training images and clamped noise vs test.

    The halves are a seeded random split: MNIST's first and last 5,000 test digits come from
    different writers (NIST SD-3 and SD-1), so contiguous halves differ in distribution.
    """
    test = datamodule.splits["test"].inputs
    test = test[torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(0))]
    half = test.shape[0] // 2
    train = datamodule.splits["train"].inputs[:10_000]
    noise = torch.randn(train.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)

    def fld(images: Tensor, reference: Tensor | None = None) -> float:
        """FLD of `images` against the `reference` images, or else the test statistics."""
        metric = fld_metric(model, test_stats if reference is None else None)
        if reference is not None:
            add_images(metric, reference, real=True)
        add_images(metric, images)
        return float(metric.compute())

    return {
        "test_half_vs_test_half": fld(test[:half], test[half:]),
        "train_10k_vs_test": fld(train),
        "gaussian_noise_vs_test": fld(noise),
    }


def export_folder(cfg: DictConfig) -> Path:
    """Where the LeNet goes: `export_dir`, else the run's folder; the package's assets folder
    only with `replace_shipped=true`, so a retraining never silently changes every FLD."""
    if cfg.get("replace_shipped"):
        if cfg.get("export_dir"):
            raise ConfigError(
                f"replace_shipped=true writes to {ASSETS_DIR}; drop export_dir={cfg.export_dir}"
            )
        return ASSETS_DIR
    folder = Path(cfg.export_dir) if cfg.get("export_dir") else Path(cfg.paths.output_dir)
    if folder.resolve() == ASSETS_DIR.resolve():
        raise ConfigError(
            f"export_dir={folder} holds the shipped LeNet every FLD is measured with; "
            "pass replace_shipped=true (without export_dir) to replace it"
        )
    return folder


def released_sha256(dataset: str) -> str | None:
    """SHA-256 of the LeNet released for `dataset`, from its record in the package."""
    record = asset_paths(dataset)["record"]
    if not record.is_file():
        return None
    shipped = json.loads(record.read_text())
    return shipped.get("released_sha256", shipped["sha256"])


def export(
    module: ClassifierModule, datamodule, test_accuracy: float, export_dir: Path, cfg
) -> dict:
    """Write weights, test-set statistics and a JSON record (SHA-256, accuracy) for `data.name`.

    The statistics hold the test features' mean and covariance, the class counts and the
    class-mean images, so evaluation needs no real data.
    """
    paths = asset_paths(datamodule.name, export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    model = module.model.eval().cpu()
    weights = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    torch.save(weights, paths["weights"])
    test = datamodule.splits["test"]
    mean, cov = feature_statistics(lenet_features(model, test.inputs))
    labels = test.labels.cpu()
    num_classes = dataset_record(datamodule.name).num_classes
    class_means = torch.stack([test.inputs[labels == c].mean(0) for c in range(num_classes)])
    stats = {
        "mean": mean,
        "cov": cov,
        "num_images": labels.shape[0],
        "label_counts": torch.bincount(labels, minlength=num_classes),
        "class_means": class_means.cpu(),
    }
    torch.save(stats, paths["stats"])
    record = {
        "dataset": datamodule.name,
        "weights": paths["weights"].name,
        "sha256": sha256(paths["weights"]),
        "released_sha256": released_sha256(datamodule.name),
        "stats": paths["stats"].name,
        "stats_sha256": sha256(paths["stats"]),
        "test_accuracy": test_accuracy,
        "epochs": int(cfg.trainer.max_epochs),
        "seed": int(cfg.seed),
        "augment": module.augment,
        "reference_fld": reference_rows(model, datamodule, stats),
        "command": "python -m ddpm_lightning.classifier " + " ".join(sys.argv[1:]),
    }
    paths["record"].write_text(json.dumps(record, indent=2) + "\n")
    return record


def train_classifier(cfg: DictConfig) -> dict:
    """Train, test and export the LeNet for `cfg.data`; return the JSON record. The export
    folder is checked to be writable before training."""
    export_dir = export_folder(cfg)
    writable_folder(export_dir, "export_dir")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    augment_cfg = cfg.get("augment") or dict(dataset_record(cfg.data.name).augment)
    module = ClassifierModule(lr=cfg.lr, augment=dict(augment_cfg) or None)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    (result,) = trainer.test(module, datamodule=datamodule)
    record = export(module, datamodule, float(result["test/acc"]), export_dir, cfg)
    print(json.dumps(record, indent=2))
    print(f"wrote {record['weights']}, {record['stats']} and their record to {export_dir}")
    return record


main = hydra_command("classifier", train_classifier)


if __name__ == "__main__":
    main()
