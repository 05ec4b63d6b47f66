"""`python -m ddpm_lightning.classifier data=NAME`: train the LeNet-5 that FLD measures with.

Trains on the same [-1, 1]-scaled images as the diffusion model (any labelled image dataset,
grey or colour, 16 px and up), with light augmentation, then exports the weights, their
SHA-256 and test accuracy, and the test set's feature statistics to the run's folder (or
`export_dir`), which `evaluate classifier=FOLDER` and `callbacks.fld.classifier=FOLDER` read.
Only `replace_shipped=true` writes them to `ddpm_lightning/assets/`, replacing the LeNet every
FLD of that dataset is measured with (see `fld.py`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from ddpm_lightning.config import hydra_command
from ddpm_lightning.data.registry import DATASETS
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
from ddpm_lightning.evaluation.inception import InceptionFID
from ddpm_lightning.evaluation.reference import features_path, write_test_features
from ddpm_lightning.models.lenet import INPUT_SHAPE, LeNet5
from ddpm_lightning.training.preflight import writable_folder


def augment(x: Tensor, max_shift: int, max_rotation: float, hflip: bool) -> Tensor:
    """Random rotation (± degrees), translation (± pixels) and optional horizontal flips.

    x: (B, C, H, W) in [-1, 1]; the background stays black (-1).
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
    """LeNet-5 for images `input_shape` (C, H, W) of `num_classes` classes, trained with
    cross-entropy, Adam and a cosine learning-rate decay."""

    def __init__(
        self,
        lr: float = 1e-3,
        augment: dict | None = None,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = INPUT_SHAPE,
    ):
        super().__init__()
        self.save_hyperparameters()
        channels, height, _ = input_shape
        self.model = LeNet5(num_classes, channels, height)
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


def split_images(split, limit: int | None = None, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """The first `limit` (default: all) images of a data split as the models see them, (N, C,
    H, W) float in [-1, 1] on the CPU, and their labels (N,): read through the split's `batch`,
    so bytes are scaled and files decoded (an unreadable file is left out with its label)."""
    count = len(split) if limit is None else min(limit, len(split))
    batches = [
        split.batch(list(range(start, min(start + batch_size, count))))
        for start in range(0, count, batch_size)
    ]
    return (
        torch.cat([x.float().cpu() for x, _ in batches]),
        torch.cat([y.cpu() for _, y in batches]),
    )


def reference_rows(model: LeNet5, datamodule, test_stats: dict[str, Tensor], test: Tensor) -> dict:
    """FLD reference points: test half vs half, 10k training images and clamped noise vs test;
    `test` (N, C, H, W): the test images in [-1, 1].

    The halves are a seeded random split: MNIST's first and last 5,000 test digits come from
    different writers (NIST SD-3 and SD-1), so contiguous halves differ in distribution.
    """
    test = test[torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(0))]
    half = test.shape[0] // 2
    train, _ = split_images(datamodule.splits["train"], limit=10_000)
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


def inception_files(inception: InceptionFID, images: Tensor, name: str, folder: Path) -> dict:
    """Write `inception_<name>_test_stats.pt`, the Inception-v3 feature statistics of the test
    images, so FID needs no data either; return its record entries."""
    inception.update(images, real=True)
    path = folder / f"inception_{name}_test_stats.pt"
    torch.save(inception.statistics(), path)
    return {"inception_stats": path.name, "inception_stats_sha256": sha256(path)}


def export(
    module: ClassifierModule,
    datamodule,
    test_accuracy: float,
    export_dir: Path,
    cfg,
    inception: InceptionFID | None = None,
) -> dict:
    """Write weights, test-set statistics and a JSON record (SHA-256, accuracy) for `data.name`,
    and with `inception` the test set's Inception statistics too.

    The statistics hold the test features' mean and covariance, the class counts and the
    class-mean images, and the test features themselves are written beside them (KID, precision
    and recall), so evaluation needs no real data.
    """
    name = dataset_name(datamodule)
    paths = asset_paths(name, export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    model = module.model.eval().cpu()
    weights = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    torch.save(weights, paths["weights"])
    images, labels = split_images(datamodule.splits["test"])
    features = lenet_features(model, images)
    mean, cov = feature_statistics(features)
    num_classes = module.model.head.out_features
    class_means = torch.stack([images[labels == c].mean(0) for c in range(num_classes)])
    stats: dict[str, Any] = {
        "mean": mean,
        "cov": cov,
        "num_images": labels.shape[0],
        "label_counts": torch.bincount(labels, minlength=num_classes),
        "class_means": class_means.cpu(),
    }
    torch.save(stats, paths["stats"])
    features_file = write_test_features(
        features_path(name, export_dir), features, labels, sha256(paths["weights"])
    )
    record = {
        "dataset": name,
        "input_shape": list(module.model.input_shape),
        "num_classes": num_classes,
        "weights": paths["weights"].name,
        "sha256": sha256(paths["weights"]),
        "released_sha256": released_sha256(name),
        "stats": paths["stats"].name,
        "stats_sha256": sha256(paths["stats"]),
        "test_features": features_file.name,
        "test_accuracy": test_accuracy,
        "epochs": int(cfg.trainer.max_epochs),
        "seed": int(cfg.seed),
        "augment": module.augment,
        "reference_fld": reference_rows(model, datamodule, stats, images),
        "command": "python -m ddpm_lightning.classifier " + " ".join(sys.argv[1:]),
    }
    if inception is not None:
        record.update(inception_files(inception, images, name, export_dir))
    paths["record"].write_text(json.dumps(record, indent=2) + "\n")
    return record


def dataset_name(datamodule) -> str:
    """The name the LeNet's files carry: the data module's `name`, else its record's (a
    folder's own name, a Hub dataset's)."""
    record = getattr(datamodule, "record", None)
    name = getattr(datamodule, "name", None) or (record.name if record is not None else None)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"data={type(datamodule).__name__} has no name for the LeNet's files; set data.name"
        )
    return name


def labelled_images(datamodule) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) of the data module's images and the number of classes its labels hold (the
    registry's for a registered dataset, else the largest label + 1); one line otherwise."""
    shape = tuple(datamodule.data_shape)
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] < 16:
        raise ConfigError(
            f"data={dataset_name(datamodule)} gives shape {shape}; the LeNet classifies square "
            "images (C, H, H) of at least 16 px"
        )
    datamodule.prepare_data()
    datamodule.setup("fit")
    splits = datamodule.splits
    labels = torch.cat([splits[key].labels for key in ("train", "val", "test")])
    if labels.dtype.is_floating_point or labels.numel() == 0 or int(labels.min()) < 0:
        raise ConfigError(
            f"data={dataset_name(datamodule)} has no class labels 0, 1, …; the classifier "
            "needs a labelled dataset"
        )
    record = DATASETS.get(dataset_name(datamodule))
    num_classes = record.num_classes if record else int(labels.max()) + 1
    return (int(shape[0]), int(shape[1]), int(shape[2])), num_classes


def augmentation(cfg: DictConfig, name: str) -> dict | None:
    """`augment`, else the registered dataset's, else none."""
    if cfg.get("augment"):
        return dict(cfg.augment)
    record = DATASETS.get(name)
    return dict(record.augment) if record and record.augment else None


def train_classifier(cfg: DictConfig) -> dict:
    """Train, test and export the LeNet for `cfg.data`; return the JSON record. The export
    folder is checked to be writable before training."""
    export_dir = export_folder(cfg)
    writable_folder(export_dir, "export_dir")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    input_shape, num_classes = labelled_images(datamodule)
    module = ClassifierModule(
        lr=cfg.lr,
        augment=augmentation(cfg, dataset_name(datamodule)),
        num_classes=num_classes,
        input_shape=input_shape,
    )
    # Its weights are fetched (or their absence reported) before training, not after.
    inception = InceptionFID() if cfg.get("inception") else None
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=datamodule)
    (result,) = trainer.test(module, datamodule=datamodule)
    record = export(module, datamodule, float(result["test/acc"]), export_dir, cfg, inception)
    print(json.dumps(record, indent=2))
    print(f"wrote {record['weights']}, {record['stats']} and their record to {export_dir}")
    return record


main = hydra_command("classifier", train_classifier)


if __name__ == "__main__":
    main()
