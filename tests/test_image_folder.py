"""data=image_folder: a real folder of PNG, JPEG, WebP and BMP files written with Pillow."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ddpm_lightning.config import compose_config, validate_config
from ddpm_lightning.data.decoded import batch_flips
from ddpm_lightning.data.image_folder import ImageFolderDataModule
from ddpm_lightning.data.listing import list_images
from ddpm_lightning.errors import ConfigError, DataError

COLOUR = (200, 100, 50)


def solid(mode: str, size=(40, 40), colour=COLOUR) -> Image.Image:
    """An image of one colour in `mode` (L takes the colour's first value)."""
    value = {"L": colour[0], "RGBA": (*colour, 128)}.get(mode, colour)
    return Image.new(mode, size, value)


def png_bytes(image: Image.Image, path: Path) -> bytes:
    image.save(path)
    return path.read_bytes()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """cats/: 6 RGB PNGs, an RGBA PNG, a greyscale PNG and a BMP; dogs/: 5 JPEGs in a nested
    folder and a WebP; plus an empty PNG, a truncated PNG, a text file called .jpg and a
    .txt that is no image at all: 15 images, 3 bad files."""
    root = tmp_path / "images"
    (root / "cats").mkdir(parents=True)
    (root / "dogs" / "nested").mkdir(parents=True)
    for i in range(6):
        solid("RGB").save(root / "cats" / f"rgb_{i}.png")
    solid("RGBA").save(root / "cats" / "alpha.png")
    solid("L").save(root / "cats" / "grey.png")
    solid("RGB").save(root / "cats" / "bitmap.bmp")
    for i in range(5):
        solid("RGB").save(root / "dogs" / "nested" / f"photo_{i}.jpg", quality=100)
    solid("RGB").save(root / "dogs" / "lossless.webp", lossless=True)
    (root / "dogs" / "empty.png").write_bytes(b"")
    whole = png_bytes(solid("RGB"), root / "dogs" / "cut.png")
    (root / "dogs" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "dogs" / "notes.jpg").write_text("not an image")
    (root / "dogs" / "readme.txt").write_text("ignored")
    return root


def make(root: Path, **kwargs) -> ImageFolderDataModule:
    kwargs = {"num_workers": 0, "batch_size": 32, **kwargs}
    datamodule = ImageFolderDataModule(root=str(root), **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule.setup()
    return datamodule


def test_listing_finds_every_image_and_each_bad_file_with_why(folder):
    listing = list_images(folder)
    assert len(listing.images) == 15
    assert dict(listing.bad) == {
        "dogs/cut.png": "truncated PNG",
        "dogs/empty.png": "empty",
        "dogs/notes.jpg": "not a PNG, JPEG, WebP or BMP image",
    }
    assert "dogs/nested/photo_0.jpg" in listing.images and "cats/alpha.png" in listing.images


def test_bad_files_give_one_warning_naming_count_and_files(folder):
    datamodule = ImageFolderDataModule(root=str(folder), num_workers=0)
    with pytest.warns(UserWarning) as caught:
        datamodule.setup()
    lines = [str(w.message) for w in caught if "cannot be read" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "3 of 18 image files cannot be read: dogs/cut.png (truncated PNG)" in lines[0]


def test_bad_files_stop_the_run_with_on_bad_file_error(folder):
    with pytest.raises(DataError, match=r"^data.root=.*: 3 of 18 .*set data.on_bad_file=skip$"):
        make(folder, on_bad_file="error")


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_modes_become_the_channels_asked_for_in_range(folder, channels):
    """RGB, RGBA, greyscale, JPEG, WebP and BMP files all come out (C, 32, 32) in [-1, 1]."""
    datamodule = make(folder, channels=channels, val_fraction=0.2)
    x = torch.cat([x for x, _ in datamodule.train_dataloader()])
    assert x.shape == (12, channels, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


def test_pixel_values_map_exactly_and_alpha_and_grey_convert(folder):
    files = make(folder, val_fraction=0.2).listing.images
    datamodule = make(folder)
    full = datamodule.splits["train"].subset(torch.arange(0))  # the dataset's kind, to index
    full.names, full.labels = files, torch.zeros(len(files), dtype=torch.long)
    x, _ = full.batch([files.index(name) for name in ("cats/rgb_0.png", "cats/alpha.png")])
    expected = torch.tensor(COLOUR).float().view(3, 1, 1) / 127.5 - 1
    assert torch.equal(x[0], expected.expand(3, 32, 32)), "lossless RGB maps exactly"
    assert torch.equal(x[1], x[0]), "alpha is dropped, colour kept"
    (grey,), _ = full.batch([files.index("cats/grey.png")])
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert grey[0, 0, 0].item() == pytest.approx(COLOUR[0] / 127.5 - 1)


@pytest.mark.parametrize(("fit", "black_rows"), [("crop", 0), ("pad", 16)])
def test_crop_fills_and_pad_keeps_all(tmp_path, fit, black_rows):
    """A white 64×32 image at 32×32: crop cuts the sides; pad scales it to 32×16 and pads 8
    black rows above and below."""
    for i in range(2):
        Image.new("RGB", (64, 32), (255, 255, 255)).save(tmp_path / f"wide_{i}.png")
    x, _ = next(iter(make(tmp_path, fit=fit, val_fraction=0.5).train_dataloader()))
    black = (x[0] == -1).all(dim=0).all(dim=1)
    assert int(black.sum()) == black_rows
    assert (x[0][:, ~black] == 1).all()


def test_labels_are_the_class_folders(folder):
    datamodule = make(folder, labels="folders")
    assert datamodule.record.class_names == ("cats", "dogs") and datamodule.num_classes == 2
    assert datamodule.record.shape == (3, 32, 32)
    for split in ("train", "val"):
        files = datamodule.splits[split]
        folders = [name.split("/")[0] for name in files.names]
        assert files.labels.tolist() == [("cats", "dogs").index(f) for f in folders]
    assert make(folder).num_classes is None


def test_split_sizes_are_exact_seeded_and_test_is_the_held_out_split(folder):
    datamodule = make(folder, val_fraction=0.2)
    sizes = {key: len(split) for key, split in datamodule.splits.items()}
    assert sizes == {"train": 12, "val": 3, "test": 3}
    assert datamodule.splits["test"] is datamodule.splits["val"]
    again, other = make(folder, val_fraction=0.2), make(folder, val_fraction=0.2, split_seed=7)
    assert again.splits["val"].names == datamodule.splits["val"].names
    assert other.splits["val"].names != datamodule.splits["val"].names
    every = datamodule.splits["train"].names + datamodule.splits["val"].names
    assert sorted(every) == sorted(datamodule.listing.images)


def test_flips_only_in_training_and_reproducible(folder):
    for i in range(8):
        image = np.zeros((32, 32, 3), np.uint8)
        image[:, :8] = 255
        Image.fromarray(image).save(folder / "cats" / f"left_{i}.png")
    datamodule = make(folder, augment=True, val_fraction=0.2)
    train = datamodule.splits["train"]
    indices = [train.names.index(name) for name in train.names if "left_" in name]
    x, _ = train.batch(indices)
    flips = batch_flips(indices, datamodule.split_seed)
    assert torch.equal(x[:, 0, 0, 0] == -1, flips), "a flipped image is white on the right"
    assert 0 < int(flips.sum()) < len(indices)
    assert torch.equal(train.batch(indices)[0], x)
    assert datamodule.splits["val"].flip_seed is None


def test_a_file_that_fails_to_decode_is_left_out_of_its_batch(tmp_path):
    """Damage inside a file of the right length passes the listing; its worker skips it."""
    for i in range(3):
        solid("RGB").save(tmp_path / f"good_{i}.png")
    whole = png_bytes(solid("RGB"), tmp_path / "broken.png")
    middle = len(whole) // 2
    (tmp_path / "broken.png").write_bytes(whole[:middle] + b"\x00" * 16 + whole[middle + 16 :])
    datamodule = make(tmp_path, val_fraction=0.25)
    everything = datamodule.splits["train"].subset(torch.arange(0))
    everything.names = datamodule.listing.images
    everything.labels = torch.zeros(4, dtype=torch.long)
    with pytest.warns(UserWarning, match=r"broken.png: cannot be decoded .*; left out$"):
        x, y = everything.batch([0, 1, 2, 3])
    assert x.shape == (3, 3, 32, 32) and y.shape == (3,)
    everything.on_bad_file = "error"
    with pytest.raises(DataError, match=r"broken.png: cannot be decoded"):
        everything.batch([0, 1, 2, 3])


def test_worker_processes_serve_the_same_batches(folder):
    in_process = [x for x, _ in make(folder).train_dataloader()]
    workers = [x for x, _ in make(folder, num_workers=2).train_dataloader()]
    assert len(in_process) == len(workers)
    for a, b in zip(in_process, workers, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("setup", "kwargs", "message"),
    [
        ("missing", {}, r"^data.root=\S+missing does not exist; point it at a folder of images$"),
        ("empty", {}, r"^data.root=\S+empty holds no readable images: it needs png, jpg, "),
        ("one", {}, r"^data.root=\S+one holds 1 image \(only.png\); training needs at least 2"),
        ("loose", {"labels": "folders"}, r"^data.labels=folders: 2 images lie in data.root="),
        ("one_class", {"labels": "folders"}, r"has 1 class folder \(only\); a conditional"),
    ],
)
def test_folders_that_cannot_train_say_why_in_one_line(tmp_path, setup, kwargs, message):
    root = tmp_path / setup
    if setup != "missing":
        root.mkdir()
    if setup == "one":
        solid("RGB").save(root / "only.png")
    if setup == "loose":
        solid("RGB").save(root / "a.png")
        solid("RGB").save(root / "b.png")
    if setup == "one_class":
        (root / "only").mkdir()
        solid("RGB").save(root / "only" / "a.png")
        solid("RGB").save(root / "only" / "b.png")
    with pytest.raises(DataError, match=message):
        make(root, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 36}, r"^data.image_size=36 must be a multiple of 8 .*use 32 or 40$"),
        ({"channels": 2}, r"^data.channels=2 must be 1 \(greyscale\) or 3 \(RGB\)$"),
        ({"fit": "stretch"}, r"^data.fit='stretch' is unknown; choose one of crop, pad$"),
        ({"root": None}, r"^data=image_folder needs data.root=PATH"),
    ],
)
def test_bad_settings_are_one_line(folder, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ImageFolderDataModule(**{"root": str(folder), **kwargs})


def test_selected_from_the_command_line_at_64_pixels(folder):
    cfg = compose_config(
        "train", ["data=image_folder", f"data.root={folder}", "data.image_size=64"]
    )
    validate_config(cfg, "train")
    datamodule = instantiate(cfg.data, num_workers=0)
    assert datamodule.data_shape == (3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datamodule.setup()
    x, _ = next(iter(datamodule.val_dataloader()))
    assert x.shape[1:] == (3, 64, 64)
