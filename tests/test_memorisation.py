"""The memorisation check on synthetic blob images with the shipped MNIST LeNet: planted exact
copies of training images, copies moved by 1 to 2 px, and fresh images from the same
distribution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import load_lenet
from ddpm_lightning.evaluation.memorisation import (
    memorisation,
    nearest_neighbours,
    shifted,
)
from ddpm_lightning.evaluation.pictures import LABEL_HEIGHT

SHIFTS = [(1, 0), (0, -1), (1, 1), (-2, 0), (0, 2), (2, -1), (-1, 2), (-2, -2)]


def blobs(n: int, seed: int) -> torch.Tensor:
    """(n, 1, 32, 32) in [-1, 1]: smooth random strokes on 28×28, padded black to 32 px."""
    noise = torch.randn(n, 1, 7, 7, generator=torch.Generator().manual_seed(seed))
    smooth = F.interpolate(noise, size=(28, 28), mode="bicubic", align_corners=False)
    strokes = ((smooth - 0.8) * 4).clamp(0, 1) * 2 - 1
    return F.pad(strokes, (2, 2, 2, 2), value=-1.0)


@pytest.fixture(scope="module")
def data():
    torch.set_num_threads(1)
    return {"train": blobs(1500, 0), "test": blobs(400, 1), "lenet": load_lenet("mnist")}


def check(data, samples, **kwargs):
    return memorisation(samples, data["train"], data["test"], data["lenet"], **kwargs)


def test_nearest_neighbours_in_chunks_match_brute_force():
    generator = torch.Generator().manual_seed(0)
    queries, references = (
        torch.randn(37, 5, generator=generator),
        torch.randn(101, 5, generator=generator),
    )
    distances, indices = nearest_neighbours(queries, references, k=3, chunk_size=4)
    expected = torch.cdist(queries.double(), references.double()).topk(3, largest=False)
    torch.testing.assert_close(distances, expected.values)
    assert torch.equal(indices, expected.indices)


def test_a_shift_moves_the_image_and_fills_with_black():
    image = torch.arange(16.0).view(1, 1, 4, 4)
    moved = shifted(image, 1, -2)
    assert torch.equal(moved[0, 0, 1:, :2], image[0, 0, :3, 2:])
    assert (moved[0, 0, 0] == -1).all() and (moved[0, 0, :, 2:] == -1).all()


def test_every_exact_copy_is_found_and_counted(data, tmp_path):
    chosen = torch.arange(0, 1500, 50)
    result = check(data, data["train"][chosen], quantile=0.05, picture=tmp_path / "pairs.png")
    assert result["n"] == 30 and result["exact_copies"] == 30
    assert result["pixel"]["share"] == 1.0 and result["lenet"]["share"] == 1.0
    assert result["share"] == 1.0 and sorted(result["flagged"]) == list(range(30))
    picture = np.asarray(Image.open(tmp_path / "pairs.png"))[LABEL_HEIGHT:]
    half = picture.shape[1] // 2
    assert np.array_equal(picture[:, :half], picture[:, half:])


def test_copies_moved_by_one_or_two_pixels_are_found_up_to_a_shift(data):
    """Every one is found by the shift-tolerant distance, at distance 0: moved back, it is
    its source."""
    sources = torch.arange(7, 1500, 190)
    moved = torch.cat(
        [
            shifted(data["train"][i : i + 1], dy, dx)
            for i, (dy, dx) in zip(sources, SHIFTS, strict=True)
        ]
    )
    result = check(data, moved, quantile=0.05)
    assert result["exact_copies"] == 0
    assert result["pixel_shifted"]["median_distance"] == 0.0
    assert result["pixel_shifted"]["share"] == 1.0 and result["share"] == 1.0


def test_fresh_samples_fall_under_the_thresholds_at_about_the_quantile(data):
    """300 fresh images, quantile 0.1: each space's share lies within 0.1 ± 0.07 (the binomial
    sd of 300 draws is 0.017, and the threshold's own error from 400 test images adds
    about as much)."""
    result = check(data, blobs(300, 2), quantile=0.1)
    assert result["exact_copies"] == 0
    assert len(result["flagged"]) == round(result["share"] * 300)
    for space in ("pixel", "lenet", "pixel_shifted"):
        assert abs(result[space]["share"] - 0.1) < 0.07, (space, result[space])
    assert result["share"] >= max(result[s]["share"] for s in ("pixel", "lenet"))


def test_a_quantile_outside_0_1_is_refused(data):
    with pytest.raises(ConfigError, match="memorisation.quantile"):
        check(data, data["test"][:4], quantile=1.5)
