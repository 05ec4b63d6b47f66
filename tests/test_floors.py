"""Real-data floors on synthetic images: the file's structure and counts, the tool end to end on
the synthetic IDX data, and `floor_for`'s choice of the nearest size."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import write_fake_dataset

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import ASSETS_DIR, lenet_identity
from ddpm_lightning.evaluation.floors import (
    floor_for,
    floors_path,
    labelled_images,
    measure_floors,
    write_floors,
)
from ddpm_lightning.models.lenet import LeNet5
from ddpm_lightning.tools import floors as floors_tool


@pytest.fixture
def lenet() -> LeNet5:
    torch.manual_seed(0)
    return LeNet5().eval()


def images(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=generator) * 2 - 1


def test_each_size_gets_one_fld_and_one_kid_per_draw(lenet, one_thread, tmp_path):
    floors = measure_floors(
        lenet, images(400, 0), images(200, 1), sizes=[100, 200], draws=3, kid_subsets=10
    )
    assert list(floors) == ["100", "200"]
    for values in floors.values():
        assert set(values) == {"fld", "kid"}
        assert len(values["fld"]) == 3 and len(values["kid"]) == 3
        assert all(math.isfinite(v) for v in values["fld"] + values["kid"])
        assert min(values["fld"]) > 0
    path = write_floors(tmp_path / "floors_mnist.json", "mnist", "abc (shipped)", 3, floors)
    record = json.loads(path.read_text())
    assert record == {"dataset": "mnist", "lenet": "abc (shipped)", "draws": 3, "n": floors}


def test_the_same_seed_gives_the_same_floors(lenet, one_thread):
    run = [
        measure_floors(lenet, images(200, 0), images(100, 1), sizes=[100], draws=2, kid_subsets=5)
        for _ in range(2)
    ]
    assert run[0] == run[1]


def test_one_draw_is_refused(lenet):
    with pytest.raises(ConfigError, match="floors.draws"):
        measure_floors(lenet, images(20, 0), images(20, 1), sizes=[10], draws=1)


def test_the_tool_writes_the_floors_of_the_synthetic_data(tmp_path, one_thread, capsys):
    root = tmp_path / "data"
    write_fake_dataset(root, "MNIST", num_train=300, num_test=150)
    out = tmp_path / "floors_mnist.json"
    floors_tool.main(
        ["--root", str(root), "--sizes", "100", "200", "--draws", "2", "--out", str(out)]
    )
    record = json.loads(out.read_text())
    assert record["dataset"] == "mnist" and record["draws"] == 2
    assert record["lenet"] == lenet_identity("mnist")
    assert {n: [len(v["fld"]), len(v["kid"])] for n, v in record["n"].items()} == {
        "100": [2, 2],
        "200": [2, 2],
    }
    assert "n=   200" in capsys.readouterr().out


def test_floor_for_reads_the_nearest_size(tmp_path):
    floors = {
        "1000": {"fld": [2.0, 4.0], "kid": [0.1, 0.3]},
        "10000": {"fld": [0.5, 0.7], "kid": [0.0, 0.2]},
    }
    write_floors(floors_path("mnist", tmp_path), "mnist", "abc (shipped)", 2, floors)
    near = floor_for("mnist", 2_500, tmp_path)
    assert near is not None and near["n"] == 1000 and near["draws"] == 2
    assert near["fld_mean"] == pytest.approx(3.0) and near["fld_sd"] == pytest.approx(math.sqrt(2))
    far = floor_for("mnist", 4_000, tmp_path)
    assert far is not None and far["n"] == 10000 and far["kid_mean"] == pytest.approx(0.1)
    assert floor_for("fashion_mnist", 1000, tmp_path) is None


def test_the_shipped_floors_cover_the_shipped_sizes():
    for dataset in ("mnist", "fashion_mnist", "shapes"):
        floor = floor_for(dataset, 10_000)
        assert floor is not None and floor["n"] == 10_000 and floor["draws"] == 5
        assert floor["lenet"] == lenet_identity(dataset)


def test_the_shapes_floors_score_the_test_set_the_shipped_lenet_was_measured_on():
    """Drawn, not read: the test split equals the one the shapes LeNet's statistics hold, to
    within Pillow's anti-aliasing, which moves a few edge pixels by one grey level (2/255, or
    about 1e-5 in a class mean of about 830 images) from one Pillow release to another."""
    images, labels = labelled_images("shapes", train=False)
    stats = torch.load(ASSETS_DIR / "lenet_shapes_test_stats.pt", weights_only=True)
    assert images.shape == (10_000, 3, 32, 32) and images.min() == -1 and images.max() <= 1
    assert torch.bincount(labels, minlength=12).tolist() == stats["label_counts"].tolist()
    means = torch.stack([images[labels == c].mean(0) for c in range(12)])
    assert torch.allclose(means, stats["class_means"], atol=1e-4)
