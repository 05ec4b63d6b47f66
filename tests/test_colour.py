"""Colour and 64 px images: networks fitted to the data, RGB grids and GIFs, a LeNet for any
labelled dataset, Inception FID through a stand-in network, and a whole run (train → sample →
FLD → export) on synthetic colour data without touching it after training."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, sample_config, tiny_config, writing_config
from omegaconf import OmegaConf
from PIL import Image
from torch import Tensor, nn

from ddpm_lightning.data.images import InMemoryDataModule, TensorBatches
from ddpm_lightning.errors import DataError
from ddpm_lightning.evaluation.fld import FLD, sha256
from ddpm_lightning.evaluation.inception import (
    INCEPTION_URL,
    InceptionFID,
    inception_weights,
    to_inception_input,
)
from ddpm_lightning.evaluation.pictures import ReverseProcessRecorder, grid, save_grid
from ddpm_lightning.models import UNet
from ddpm_lightning.models.data_fit import fitted_to_data
from ddpm_lightning.models.lenet import LeNet5

# Colour of each class of `ColourSquares`, in [-1, 1]: red, green, blue.
CLASS_COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


def colour_squares(count: int, channels: int, size: int, seed: int) -> TensorBatches:
    """`count` images (count, channels, size, size) of a square of its class's colour (grey
    images: its class's brightness) on black, at a random place, and their labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (count,), generator=generator)
    images = torch.full((count, channels, size, size), -1.0)
    side = size // 4
    corners = torch.randint(0, size - side, (count, 2), generator=generator)
    colours = CLASS_COLOURS[labels] if channels == 3 else (labels[:, None].float() - 1.0)
    for image, (row, column), colour in zip(images, corners.tolist(), colours, strict=True):
        image[:, row : row + side, column : column + side] = colour[:, None, None]
    return TensorBatches(images, labels)


class ColourSquares(InMemoryDataModule):
    """A tiny labelled image set built in memory: three classes of coloured squares."""

    def __init__(
        self,
        name: str = "colour_squares",
        channels: int = 3,
        size: int = 32,
        num_train: int = 40,
        num_test: int = 24,
        batch_size: int = 8,
        **kwargs,
    ):
        super().__init__(batch_size, **kwargs)
        self.name = name
        self.channels, self.size = int(channels), int(size)
        self.num_train, self.num_test = int(num_train), int(num_test)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def load(self) -> tuple[TensorBatches, TensorBatches]:
        return (
            colour_squares(self.num_train, self.channels, self.size, seed=0),
            colour_squares(self.num_test, self.channels, self.size, seed=1),
        )


def colour_data(channels: int = 3, size: int = 32):
    """The data config of `ColourSquares`, as a `data=` option would give it."""
    return OmegaConf.create(
        {
            "_target_": "test_colour.ColourSquares",
            "name": "colour_squares",
            "channels": channels,
            "size": size,
        }
    )


# Networks


@pytest.mark.parametrize(
    ("settings", "shape", "expected"),
    [
        ({"name": "unet", "in_channels": 1}, (3, 64, 64), {"name": "unet", "in_channels": 3}),
        ({"in_channels": 1, "sample_size": 32}, (3, 64, 64), {"in_channels": 3, "sample_size": 64}),
        ({"name": "mlp", "hidden": 8}, (2,), {"name": "mlp", "hidden": 8}),
    ],
)
def test_networks_follow_the_data_shape(settings, shape, expected):
    assert fitted_to_data(settings, shape) == expected


def test_a_training_config_builds_its_network_for_the_data(tmp_path):
    from ddpm_lightning.training.runinfo import module_arguments

    cfg = tiny_config(tmp_path, tmp_path)
    assert cfg.model.in_channels == 1
    assert module_arguments(cfg, (3, 64, 64))["model"]["in_channels"] == 3


@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 64), (3, 64)])
def test_the_unet_maps_colour_and_64_px_images_to_their_own_shape(channels, size):
    torch.manual_seed(0)
    net = UNet(channels, 8, 20, (1, 2, 2), block_groups=4, num_attention_heads=2)
    x = torch.randn(2, channels, size, size)
    assert net(x, torch.tensor([0, 19])).shape == (2, channels, size, size)
    net.check_input_shape((channels, size, size))


@pytest.mark.parametrize(
    ("channels", "size", "parameters"),
    # 61,706 for 1×32×32; colour adds 2 × 6 × 25 weights to the first conv; 64 px widens the
    # first dense layer from 16·5·5 = 400 to 16·13·13 = 2,704 inputs: (2,704 − 400) × 120 more.
    [(1, 32, 61_706), (3, 32, 62_006), (1, 64, 61_706 + 2_304 * 120)],
)
def test_lenet_size_for_colour_and_64_px(channels, size, parameters):
    lenet = LeNet5(3, channels, size)
    assert sum(p.numel() for p in lenet.parameters()) == parameters - 7 * 85
    assert lenet(torch.zeros(2, channels, size, size)).shape == (2, 3)


# Pictures


def coloured(count: int) -> Tensor:
    """`count` 8×8 images, pure red, green and blue in turn, in [-1, 1]."""
    return CLASS_COLOURS[torch.arange(count) % 3][:, :, None, None].expand(-1, -1, 8, 8)


def test_grids_of_colour_images_keep_their_colours(tmp_path):
    save_grid(coloured(3), tmp_path / "grid.png", nrow=3)
    picture = np.asarray(Image.open(tmp_path / "grid.png"))
    assert picture.shape == (12, 32, 3)  # 2 px padding around 8 px images
    assert picture[5, 5].tolist() == [255, 0, 0]
    assert picture[5, 15].tolist() == [0, 255, 0]
    assert picture[5, 25].tolist() == [0, 0, 255]


def test_the_reverse_gif_of_colour_images_is_rgb(tmp_path):
    recorder = ReverseProcessRecorder(num_steps=2, num_images=3, num_frames=2)
    for i in range(2):
        recorder(i, 1 - i, coloured(3), coloured(3))
    recorder.save_gif(tmp_path / "reverse.gif", coloured(3))
    gif = Image.open(tmp_path / "reverse.gif")
    assert gif.n_frames == 3
    frame = np.asarray(gif.convert("RGB"))
    # Second panel of the first frame (x̂₀), first image, below the 16 px label strip.
    width = grid(coloured(3), 2).shape[-1] * 2
    assert frame[16 + 10, width + 10].tolist() == [255, 0, 0]
    assert frame[16 + 10, 10].tolist() == [255, 0, 0]


# Inception FID through a stand-in of the same interface


class MeanColour(nn.Module):
    """Stand-in for Inception-v3: uint8 images (B, 3, H, W) → their mean colour (B, 3) with a
    per-image jitter that keeps the covariance full."""

    def forward(self, images: Tensor) -> Tensor:
        means = images.double().mean(dim=(2, 3))
        return means + images.double()[:, :, 0, 0] / 255


def test_inception_fid_is_the_squared_shift_of_equal_covariance_sets():
    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 200, (64, 3, 4, 4), generator=generator, dtype=torch.uint8)
    fid = InceptionFID(MeanColour())
    fid.update(real, real=True)
    fid.update(real)
    assert fid.compute() == pytest.approx(0.0, abs=1e-6)
    # Adding 10 to every pixel shifts every feature by 10 + 10/255 and keeps the covariance.
    fid.update(real + 10)
    assert fid.compute() == pytest.approx(3 * (10 + 10 / 255) ** 2, rel=1e-6)


def test_grey_and_float_images_enter_inception_as_uint8_rgb():
    grey = torch.tensor([-1.0, 0.0, 1.0]).reshape(3, 1, 1, 1).expand(-1, -1, 2, 2)
    images = to_inception_input(grey)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 2, 2)
    assert images[:, :, 0, 0].tolist() == [[0] * 3, [128] * 3, [255] * 3]


def test_cached_inception_weights_are_used_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cached = tmp_path / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]
    cached.parent.mkdir()
    cached.write_bytes(b"weights")

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    assert inception_weights() == cached


def test_offline_without_cached_inception_weights_names_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataError) as error:
        inception_weights()
    message = str(error.value)
    assert "\n" not in message
    assert INCEPTION_URL in message
    assert str(tmp_path / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]) in message


# A LeNet for any labelled dataset


def train_lenet(root: Path, *overrides: str, channels: int = 3, size: int = 32) -> Path:
    """The classifier command's folder for `ColourSquares` after a one-batch run."""
    from ddpm_lightning.classifier import train_classifier
    from ddpm_lightning.config import compose_config

    cfg = compose_config(
        "classifier",
        [
            f"paths.output_dir={root}",
            "trainer.accelerator=cpu",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
            *overrides,
        ],
    )
    cfg.data = colour_data(channels, size)
    train_classifier(cfg)
    return root


@pytest.fixture(scope="module")
def lenet_folder(tmp_path_factory) -> Path:
    """The classifier's folder with `inception=true`, `MeanColour` standing in for Inception."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ddpm_lightning.classifier.InceptionFID", lambda: InceptionFID(MeanColour()))
        return train_lenet(tmp_path_factory.mktemp("lenet"), "inception=true")


def test_the_classifier_writes_a_colour_lenet_with_its_test_statistics(lenet_folder):
    record = json.loads((lenet_folder / "lenet_colour_squares.json").read_text())
    assert record["input_shape"] == [3, 32, 32]
    assert record["num_classes"] == 3
    stats = torch.load(lenet_folder / record["stats"], weights_only=True)
    assert stats["label_counts"].sum() == stats["num_images"] == 24
    assert stats["class_means"].shape == (3, 3, 32, 32)


def test_fld_of_the_test_set_against_its_own_statistics_is_zero(lenet_folder):
    fld = FLD("colour_squares", classifier=lenet_folder)
    assert fld.input_shape == (3, 32, 32) and fld.num_classes == 3
    assert fld.lenet.endswith("(retrained)")
    test = colour_squares(24, 3, 32, seed=1).inputs
    assert fld(test) == pytest.approx(0.0, abs=1e-6)
    record = lenet_folder / "lenet_colour_squares.json"
    assert FLD("colour_squares", classifier=record)(test) == pytest.approx(0.0, abs=1e-6)


def test_the_classifier_writes_inception_statistics_of_the_test_set(lenet_folder):
    record = json.loads((lenet_folder / "lenet_colour_squares.json").read_text())
    path = lenet_folder / record["inception_stats"]
    assert sha256(path) == record["inception_stats_sha256"]
    reference = torch.load(path, weights_only=True)
    assert int(reference["num_images"]) == 24 and reference["cov"].shape == (3, 3)
    fid = InceptionFID(MeanColour(), reference=reference)
    fid.update(colour_squares(24, 3, 32, seed=1).inputs)
    assert fid.compute() == pytest.approx(0.0, abs=1e-6)


def test_a_missing_classifier_folder_is_one_line(tmp_path):
    with pytest.raises(DataError, match="classifier=") as error:
        FLD("colour_squares", classifier=tmp_path)
    assert "\n" not in str(error.value)


# A whole run, never reading the data after training


def train_colour_run(root: Path, channels: int, size: int, lenet: Path) -> tuple[Path, dict]:
    """last.ckpt and the final metrics of a 2-step run of the tiny UNet on `ColourSquares`,
    its val/fld from 4 samples scored by the LeNet in the folder `lenet`."""
    from ddpm_lightning.train import train

    cfg = tiny_config(
        root / "unused",
        root / "run",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "test=false",
        model=TINY_MODEL,
    )
    cfg.data = colour_data(channels, size)
    cfg.callbacks.fld = OmegaConf.create(
        {
            "_target_": "ddpm_lightning.training.callbacks.FLDCallback",
            "num_samples": 4,
            "classifier": str(lenet),
            "sampler": {
                "_target_": "ddpm_lightning.diffusion.samplers.DDIMSampler",
                "_partial_": True,
                "num_steps": 2,
            },
        }
    )
    metrics = train(cfg)
    return root / "run" / "checkpoints" / "last.ckpt", metrics


def refuse_data(*args, **kwargs):
    raise AssertionError("the data were read")


@pytest.mark.slow
@pytest.mark.parametrize(("channels", "size"), [(3, 32), (3, 64)])
def test_train_sample_score_and_export_colour_images(tmp_path, monkeypatch, channels, size):
    from test_sharing import export_config

    from ddpm_lightning.evaluate import evaluate
    from ddpm_lightning.export import export
    from ddpm_lightning.sample import sample
    from ddpm_lightning.sharing.folder import load_folder
    from ddpm_lightning.training.checkpoints import read_checkpoint

    lenet = train_lenet(tmp_path / "lenet", channels=channels, size=size)
    checkpoint, metrics = train_colour_run(tmp_path, channels, size, lenet)
    assert metrics["val/fld"] > 0
    hparams = read_checkpoint(checkpoint)["hyper_parameters"]
    assert list(hparams["data_shape"]) == [channels, size, size]
    assert hparams["model"]["in_channels"] == channels

    monkeypatch.setattr(ColourSquares, "load", refuse_data)
    files = sample(
        sample_config(checkpoint, tmp_path / "samples", "num_samples=4", "sampler.num_steps=2")
    )
    images = np.load(files["samples.npz"])["images"]
    assert images.shape == (4, channels, size, size) and images.dtype == np.uint8
    assert Image.open(files["grid.png"]).mode == "RGB"
    assert Image.open(files["reverse.gif"]).convert("RGB").size[1] > size

    scored = evaluate(
        writing_config(
            "evaluate",
            tmp_path / "scores",
            f"samples={files['samples.npz']}",
            f"classifier={lenet}",
        )
    )
    assert scored["fld"] == pytest.approx(FLD("colour_squares", classifier=lenet)(images))
    assert len(scored["label_counts"]) == 3 and sum(scored["label_counts"]) == 4

    metrics = tmp_path / "scores" / "metrics.json"
    export(
        export_config(
            tmp_path / "folder", f"ckpt_path={checkpoint}", "num_samples=4", f"metrics={metrics}"
        )
    )
    module = load_folder(tmp_path / "folder")
    assert module.data_shape == (channels, size, size)
    assert Image.open(tmp_path / "folder" / "samples.png").mode == "RGB"
    card = (tmp_path / "folder" / "README.md").read_text()
    assert f"{channels}x{size}x{size} images" in card
    assert "with a LeNet trained by `python -m ddpm_lightning.classifier`" in card

    diffusers = pytest.importorskip("diffusers")
    import ddpm_lightning.sharing.diffusers_model  # noqa: F401

    export(
        export_config(
            tmp_path / "pipeline", f"ckpt_path={checkpoint}", "format=diffusers", "samples=false"
        )
    )
    pipeline = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipeline")
    pipeline.set_progress_bar_config(disable=True)
    drawn = pipeline(batch_size=2, num_inference_steps=2, output_type="np").images
    assert drawn.shape == (2, size, size, channels)

    pytest.importorskip("onnxruntime")
    import onnxruntime

    export(export_config(tmp_path / "onnx", f"ckpt_path={checkpoint}", "format=onnx"))
    record = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert record["data_shape"] == [channels, size, size]
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    x = np.random.default_rng(0).standard_normal((2, channels, size, size)).astype(np.float32)
    (out,) = session.run(None, {"x": x, "t": np.array([0, 5], dtype=np.int64)})
    with torch.no_grad():
        expected = module.model(torch.from_numpy(x), torch.tensor([0, 5]))
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-4)
