import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.pictures import LABEL_HEIGHT
from ddpm_lightning.sample import sample
from ddpm_lightning.train import train
from tests.conftest import PYTHON, cli_env, sample_config, tiny_config


@pytest.fixture
def checkpoint(data_root, tmp_path):
    """last.ckpt of a 2-step run of the tiny UNet (T=20)."""
    train(
        tiny_config(
            data_root,
            tmp_path / "train",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
        )
    )
    return tmp_path / "train" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("sampler", "steps", "frames"), [("ddim", 5, 6), ("ddpm", 20, 21), ("dpm_solver", 10, 11)]
)
def test_sample_writes_grid_npz_and_gif(checkpoint, tmp_path, sampler, steps, frames):
    out = tmp_path / sampler
    extra = [] if sampler == "ddpm" else [f"sampler.num_steps={steps}"]
    files = sample(
        sample_config(
            checkpoint, out, f"sampler={sampler}", "num_samples=10", "gif_images=4", *extra
        )
    )
    images = np.load(files["grid.png"].with_name("samples.npz"))["images"]
    assert images.shape == (10, 1, 32, 32) and images.dtype == np.uint8
    grid = Image.open(files["grid.png"])
    # 10 images → 4 columns × 3 rows of 32 px with make_grid's 2 px padding.
    assert grid.size == (4 * 34 + 2, 3 * 34 + 2)
    gif = Image.open(files["reverse.gif"])
    # Left x_t, right x̂₀ (2×2 grids of 4 images), enlarged 2×, under a strip of labels; one
    # frame per step + the final.
    assert gif.size == (2 * 2 * (2 * 34 + 2), 2 * (2 * 34 + 2) + LABEL_HEIGHT)
    assert gif.n_frames == frames


def test_gif_has_about_50_frames_for_long_samplers(checkpoint, tmp_path):
    cfg = sample_config(
        checkpoint,
        tmp_path / "s",
        "sampler=ddim",
        "sampler.num_steps=20",
        "num_samples=2",
        "gif_frames=5",
    )
    gif = Image.open(sample(cfg)["reverse.gif"])
    assert gif.n_frames == 5 + 1


def test_same_seed_same_images(checkpoint, tmp_path):
    def draw(seed, name):
        cfg = sample_config(
            checkpoint,
            tmp_path / name,
            "sampler=ddim",
            "sampler.num_steps=5",
            "sampler.eta=1.0",
            "num_samples=4",
            f"seed={seed}",
        )
        return np.load(sample(cfg)["samples.npz"])["images"]

    assert np.array_equal(draw(0, "a"), draw(0, "b"))
    assert not np.array_equal(draw(0, "a"), draw(1, "c"))


def test_missing_or_wrong_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        sample(sample_config(tmp_path / "nope.ckpt", tmp_path))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a loadable checkpoint"):
        sample(sample_config(junk, tmp_path))
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match="not a ddpm_lightning checkpoint"):
        sample(sample_config(tmp_path / "other.ckpt", tmp_path))


def test_sample_cli_error_is_one_line(tmp_path):
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "ddpm_lightning.sample",
            f"ckpt_path={tmp_path / 'missing.ckpt'}",
            f"hydra.run.dir={tmp_path}",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "missing.ckpt" in errors[0]
