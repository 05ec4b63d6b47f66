"""data=hf: a Hugging Face dataset written to disk in the test (no download)."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ddpm_lightning.config import compose_config, validate_config
from ddpm_lightning.data.hf import HFDataModule
from ddpm_lightning.errors import ConfigError, DataError

datasets = pytest.importorskip(
    "datasets", reason="data=hf needs the optional datasets package (pip install '.[data]')"
)
NAMES = ["zero", "one", "two"]


def table(num_rows: int, grey: bool = False):
    """Rows of 20×20 images of value 10·i (RGB, or L with `grey`) labelled i mod 3."""
    mode = "L" if grey else "RGB"
    images = [Image.new(mode, (20, 20), (10 * i,) * len(mode)) for i in range(num_rows)]
    features = datasets.Features(
        {"picture": datasets.Image(), "kind": datasets.ClassLabel(names=NAMES)}
    )
    rows = {"picture": images, "kind": [i % 3 for i in range(num_rows)]}
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A save_to_disk folder: train 20 RGB rows, test 6 greyscale rows."""
    path = tmp_path / "saved"
    datasets.DatasetDict({"train": table(20), "test": table(6, grey=True)}).save_to_disk(path)
    return path


def make(path: Path | str | None, **kwargs) -> HFDataModule:
    kwargs = {"image_column": "picture", "num_workers": 0, "batch_size": 8, **kwargs}
    datamodule = HFDataModule(path=None if path is None else str(path), **kwargs)
    datamodule.setup()
    return datamodule


def test_a_saved_dataset_gives_splits_labels_and_class_names(saved):
    datamodule = make(saved, label_column="kind", val_fraction=0.25)
    sizes = {key: len(split) for key, split in datamodule.splits.items()}
    assert sizes == {"train": 15, "val": 5, "test": 6}
    assert datamodule.record.class_names == tuple(NAMES) and datamodule.num_classes == 3
    x, y = datamodule.splits["train"].batch(list(range(15)))
    rows = datamodule.splits["train"].rows
    assert x.shape == (15, 3, 32, 32) and torch.equal(y, rows % 3)
    expected = (10 * rows).float() / 127.5 - 1
    assert torch.allclose(x.flatten(1).mean(1), expected, atol=1e-6), "values map exactly"


def test_greyscale_rows_become_three_channels_and_rgb_one(saved):
    test = make(saved).splits["test"]
    x, _ = test.batch([5])
    assert x.shape == (1, 3, 32, 32) and torch.equal(x[0, 0], x[0, 2])
    x, _ = make(saved, channels=1).splits["train"].batch([3])
    assert x.shape == (1, 1, 32, 32)
    assert x.min() >= -1 and x.max() <= 1


def test_a_parquet_file_without_a_test_split_tests_on_the_held_out_rows(tmp_path):
    path = tmp_path / "rows.parquet"
    table(10).to_parquet(str(path))
    datamodule = make(path, val_fraction=0.2)
    assert {key: len(split) for key, split in datamodule.splits.items()} == {
        "train": 8,
        "val": 2,
        "test": 2,
    }
    assert datamodule.num_classes is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"image_column": "img"},
            ConfigError,
            r"^data.image_column=img: \S+ has no such column; its columns are picture, kind$",
        ),
        ({"label_column": "class"}, ConfigError, r"^data.label_column=class: .* no such column"),
        ({"split": "validation"}, ConfigError, r"^data.split=validation: \S+ has the splits"),
        ({"path": None}, ConfigError, r"^data=hf needs data.path=NAME_OR_PATH"),
    ],
)
def test_bad_settings_are_one_line(saved, kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**{"path": saved, **kwargs})


def test_offline_and_not_cached_says_so(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"^data.path=someone/missing is neither a local "):
        make("someone/missing")


def test_selected_from_the_command_line(saved):
    overrides = ["data=hf", f"data.path={saved}", "data.image_column=picture", "data.channels=1"]
    cfg = compose_config("train", overrides)
    validate_config(cfg, "train")
    datamodule = instantiate(cfg.data, num_workers=0)
    datamodule.setup()
    x, _ = next(iter(datamodule.train_dataloader()))
    assert x.shape == (18, 1, 32, 32), "the 18 training rows of 20 in one batch of 64"
