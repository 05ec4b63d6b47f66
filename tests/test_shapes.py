"""data=shapes: the drawn colour dataset, its determinism, areas, colours and a training run."""

import math

import pytest
import torch

from ddpm_lightning.config import compose_config, validate_config
from ddpm_lightning.data.registry import COLOURS, DATASETS, SHAPES
from ddpm_lightning.data.shapes import PALETTE, ShapesDataModule, make_shapes, signed_distance
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.train import train


def make(**kwargs) -> ShapesDataModule:
    datamodule = ShapesDataModule(**{"num_images": 200, "num_test_images": 50, **kwargs})
    datamodule.setup()
    return datamodule


def test_same_seed_same_images_and_another_seed_others():
    images, labels = make_shapes(64, 32, seed=3, split=0)
    again, labels_again = make_shapes(64, 32, seed=3, split=0)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    assert not torch.equal(images, make_shapes(64, 32, seed=4, split=0)[0])
    assert not torch.equal(images, make_shapes(64, 32, seed=3, split=1)[0]), "test ≠ train"


def test_split_sizes_shape_range_and_labels():
    datamodule = make(val_fraction=0.1)
    assert {key: len(split) for key, split in datamodule.splits.items()} == {
        "train": 180,
        "val": 20,
        "test": 50,
    }
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() <= 1, "black background, colours below white"
    assert y.min() >= 0 and y.max() < 12
    assert DATASETS["shapes"].num_classes == len(SHAPES) * len(COLOURS) == 12
    assert DATASETS["shapes"].class_names[:2] == ("red circle", "green circle")


@pytest.mark.parametrize(("kind", "area"), [(0, math.pi), (1, 2.56), (2, 3 * math.sqrt(3) / 4)])
def test_drawn_areas_are_the_shapes_areas(kind, area):
    """Anti-aliased coverage of a shape of circumradius 100 px sums to its area (r² ×): π for
    the circle, (1.6)² for the square of half-side 0.8 r, 3√3/4 for the triangle; ±0.2%."""
    pixels = torch.arange(256, dtype=torch.float32) + 0.5 - 128
    dx, dy = pixels.view(1, 1, -1), pixels.view(1, -1, 1)
    coverage = (0.5 - signed_distance(kind, dx, dy, torch.tensor(100.0))).clamp(0, 1)
    assert coverage.sum().item() == pytest.approx(area * 100**2, rel=2e-3)


def test_each_label_is_drawn_in_its_colour():
    images, labels = make_shapes(600, 32, seed=0, split=0)
    for colour in range(len(COLOURS)):
        chosen = images[labels % len(COLOURS) == colour].float()
        inside = chosen.amax(dim=1) == chosen.amax(dim=(1, 2, 3)).view(-1, 1, 1)
        rgb = chosen.permute(0, 2, 3, 1)[inside].mean(0) / 255
        assert torch.allclose(rgb, PALETTE[colour], atol=1 / 255)


def test_greyscale_is_the_luma_of_the_colour_images_at_64_pixels():
    datamodule = ShapesDataModule(channels=1, image_size=64, num_images=20, num_test_images=4)
    grey, _ = datamodule.load()
    rgb, _ = make_shapes(20, 64, datamodule.split_seed, 0)
    luma = (rgb.float() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)
    assert grey.inputs.shape == (20, 1, 64, 64) and datamodule.data_shape == (1, 64, 64)
    assert (grey.inputs[:, 0].float() - luma).abs().max() <= 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 20}, r"^data.image_size=20 must be a multiple of 8"),
        ({"channels": 2}, r"^data.channels=2 must be 1 \(greyscale\) or 3 \(RGB\)$"),
        ({"num_images": 1}, r"^data.num_images=1 must be at least 2$"),
    ],
)
def test_bad_settings_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ShapesDataModule(**kwargs)


def test_fast_dev_run_trains_a_three_channel_model(tmp_path):
    overrides = [
        "data=shapes",
        "data.num_images=64",
        "data.num_test_images=16",
        "data.batch_size=16",
        "model.in_channels=3",
        "model.model_channels=8",
        "model.channel_multipliers=[1,2]",
        "model.block_groups=4",
        "model.num_attention_heads=2",
        "schedule.num_timesteps=20",
        "trainer.accelerator=cpu",
        "trainer.fast_dev_run=true",
        "callbacks.rich_progress_bar=null",
        "callbacks.fld=null",
        "callbacks.sample_grid=null",
        f"paths.output_dir={tmp_path}",
        f"paths.log_dir={tmp_path}/logs",
    ]
    cfg = compose_config("train", overrides)
    validate_config(cfg, "train")
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
