"""The classifier command on data kept as bytes (`data=shapes` holds its splits as uint8 and
scales a batch at a time): the LeNet trains, tests and describes the test set on the
diffusion model's [-1, 1] floats, never on 0..255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lightning.classifier import train_classifier
from ddpm_lightning.config import compose_config
from ddpm_lightning.data.shapes import ShapesDataModule
from ddpm_lightning.evaluation.fld import asset_paths
from ddpm_lightning.models.lenet import LeNet5

# 120 test images hold every one of the 12 classes, so each has a class-mean image.
SHAPES = {"num_images": 48, "num_test_images": 120, "image_size": 16, "batch_size": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[tuple[bool, torch.Tensor]], dict]:
    """(export folder, (training?, input) of every LeNet call, the record) of a one-batch
    `python -m ddpm_lightning.classifier data=shapes` run."""
    root = tmp_path_factory.mktemp("lenet")
    cfg = compose_config(
        "classifier",
        [
            f"paths.output_dir={root}",
            "data=shapes",
            *(f"data.{key}={value}" for key, value in SHAPES.items()),
            "trainer.accelerator=cpu",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
        ],
    )
    seen = []
    features = LeNet5.features

    def recording(self, x):
        seen.append((self.training, x.detach().clone()))
        return features(self, x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LeNet5, "features", recording)
        record = train_classifier(cfg)
    return root, seen, record


def shapes_splits() -> dict:
    datamodule = ShapesDataModule(**SHAPES)
    datamodule.setup("fit")
    return datamodule.splits


def test_shapes_keeps_its_splits_as_bytes():
    splits = shapes_splits()
    assert {key: split.inputs.dtype for key, split in splits.items()} == dict.fromkeys(
        ("train", "val", "test"), torch.uint8
    )


def test_the_lenet_sees_floats_in_minus_one_to_one(trained):
    """Every call (training with augmentation, validation, test, the exported features): float32
    in [-1, 1]; held-out batches reach black (-1) and colour (a channel at 245/255 → 0.92), so
    neither 0..255 nor 0..1 would pass."""
    _, seen, _ = trained
    assert {training for training, _ in seen} == {True, False}
    for training, x in seen:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 16, 16)
        assert x.min() >= -1 and x.max() <= 1, (training, x.min(), x.max())
        if not training:
            assert x.min() == -1 and x.max() > 0.9


def test_the_exported_statistics_are_of_the_scaled_test_images(trained):
    """The class-mean images are the test set's per-class means of bytes / 127.5 - 1, and the
    feature mean is the exported LeNet's on those floats."""
    root, _, record = trained
    files = asset_paths("shapes", root)
    stats = torch.load(files["stats"], weights_only=True)
    test = shapes_splits()["test"]
    images = test.inputs.float() / 127.5 - 1
    expected = torch.stack([images[test.labels == c].mean(0) for c in range(12)])
    assert record["num_classes"] == 12 and record["input_shape"] == [3, 16, 16]
    assert torch.allclose(stats["class_means"], expected, atol=1e-6)
    assert stats["num_images"] == 120
    assert stats["label_counts"].tolist() == torch.bincount(test.labels, minlength=12).tolist()
    lenet = LeNet5(12, 3, 16)
    lenet.load_state_dict(torch.load(files["weights"], weights_only=True))
    with torch.no_grad():
        mean = lenet.eval().features(images).double().mean(0)
    assert torch.allclose(stats["mean"], mean, atol=1e-5)


def test_a_folder_of_images_trains_a_lenet_named_after_it(tmp_path):
    """`data=image_folder` (files decoded a batch at a time): the LeNet's files carry the
    folder's name, and the class-mean images are the decoded pixels scaled to [-1, 1]."""
    grey = {"dark": 30, "light": 220}
    for label, value in grey.items():
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(30):
            image = Image.fromarray(np.full((16, 16, 3), value, dtype=np.uint8))
            image.save(tmp_path / "pics" / label / f"{i}.png")
    cfg = compose_config(
        "classifier",
        [
            f"paths.output_dir={tmp_path / 'run'}",
            "data=image_folder",
            f"data.root={tmp_path / 'pics'}",
            "data.labels=folders",
            "data.image_size=16",
            "data.num_workers=0",
            "data.batch_size=8",
            "trainer.accelerator=cpu",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
        ],
    )
    record = train_classifier(cfg)
    assert (record["dataset"], record["num_classes"]) == ("pics", 2)
    stats = torch.load(asset_paths("pics", tmp_path / "run")["stats"], weights_only=True)
    assert stats["num_images"] == 6, "the validation split (10% of 60) is the test set"
    means = stats["class_means"].flatten(1)
    expected = torch.tensor([value / 127.5 - 1 for value in grey.values()])
    assert torch.allclose(means, expected[:, None].expand_as(means), atol=1e-6)
