"""The samples a conditional model draws in another class: counts and their picture."""

import itertools

import pytest
import torch
from PIL import Image

from ddpm_lightning.evaluation.off_class import (
    PER_ROW,
    confusion,
    off_class,
    off_class_picture,
)
from ddpm_lightning.evaluation.pictures import LABEL_HEIGHT


def test_confusion_and_off_class_match_counting_by_hand():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=generator)
    predicted = torch.randint(0, 4, (200,), generator=generator)
    counts = confusion(predicted, labels, 4)
    for wanted, got in itertools.product(range(4), repeat=2):
        by_hand = sum(1 for w, g in zip(labels, predicted, strict=True) if (w, g) == (wanted, got))
        assert counts[wanted][got] == by_hand
    found = off_class(predicted, labels)
    assert found == [
        [i, int(w), int(g)]
        for i, (w, g) in enumerate(zip(labels, predicted, strict=True))
        if w != g
    ]
    assert len(found) == 200 - sum(counts[c][c] for c in range(4))


@pytest.mark.parametrize("count, rows", [(3, 1), (PER_ROW, 1), (27, 4), (100, 8)])
# 100 found: the first OFF_CLASS_IMAGES = 64 shown, 8 rows.
def test_the_picture_holds_each_shown_sample_in_rows_of_per_row(tmp_path, count, rows):
    images = torch.linspace(-1, 1, 120).view(120, 1, 1, 1).expand(120, 1, 32, 32)
    found = [[i, i % 10, (i + 1) % 10] for i in range(count)]
    picture = Image.open(off_class_picture(images, found, tmp_path / "off.png"))
    columns = min(count, PER_ROW)
    # make_grid pads each 32 px tile by 2 px; tiles are drawn at twice their size.
    assert picture.size == (2 * (columns * 34 + 2), rows * (2 * 36 + LABEL_HEIGHT))


def test_the_picture_orders_samples_by_requested_class(tmp_path):
    images = torch.full((3, 1, 32, 32), -1.0)
    images[2] = 1.0
    found = [[0, 5, 1], [1, 7, 2], [2, 3, 8]]
    picture = Image.open(off_class_picture(images, found, tmp_path / "off.png")).convert("L")
    # The white sample (requested 3) comes first, left of the two black ones.
    first, second = (
        picture.getpixel((2 * 2 + 10, LABEL_HEIGHT + 2 * 2 + 10)),
        picture.getpixel((2 * 36 + 10, LABEL_HEIGHT + 2 * 2 + 10)),
    )
    assert first == 255 and second == 0
