from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler

from ddpm_lightning.config import compose_config, validate_config
from ddpm_lightning.data.images import EpochShuffle, MNISTDataModule, check_idx_file, load_split
from ddpm_lightning.data.registry import DATASETS, DatasetRecord, dataset_record
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.sharing.card import card_data, dataset_title
from ddpm_lightning.sharing.onnx import class_names
from ddpm_lightning.sharing.site import model_title
from tests.conftest import write_idx


def make(data_root: Path, **kwargs) -> MNISTDataModule:
    datamodule = MNISTDataModule(root=str(data_root), **kwargs)
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_images_are_padded_scaled_and_labelled(data_root, name):
    datamodule = make(data_root, name=name, batch_size=16)
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 9
    assert x.min() >= -1 and x.max() <= 1
    border = torch.cat(
        [
            x[..., :2, :].flatten(),
            x[..., -2:, :].flatten(),
            x[..., :, :2].flatten(),
            x[..., :, -2:].flatten(),
        ]
    )
    assert torch.all(border == -1), "padding must be black (-1)"
    assert torch.all(x[..., 2:-2, 2:-2] > -1), "synthetic pixels are 1..255, never black"
    assert datamodule.data_shape == (1, 32, 32)


def test_pixel_values_map_exactly(data_root):
    images, _ = load_split(data_root, "mnist", train=True)
    datamodule = make(data_root, val_fraction=0.5)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(datamodule.split_seed))
    first_train = images[order[50]]
    expected = first_train.float() / 127.5 - 1
    assert torch.allclose(datamodule.splits["train"].inputs[0, 0, 2:-2, 2:-2], expected)


def test_split_sizes_and_loaders_cover_every_image(data_root):
    datamodule = make(data_root, batch_size=16, val_fraction=0.1)
    assert {k: len(v) for k, v in datamodule.splits.items()} == {"train": 90, "val": 10, "test": 30}
    batches = list(datamodule.train_dataloader())
    assert [len(b[0]) for b in batches] == [16] * 5 + [10]
    seen = torch.cat([b[0] for b in batches]).flatten(1)
    assert torch.unique(seen, dim=0).shape[0] == 90
    assert sum(len(b[0]) for b in datamodule.test_dataloader()) == 30


def test_split_is_seeded(data_root):
    a, b = make(data_root), make(data_root)
    c = make(data_root, split_seed=7)
    assert torch.equal(a.splits["val"].inputs, b.splits["val"].inputs)
    assert not torch.equal(a.splits["val"].inputs, c.splits["val"].inputs)
    labels = {
        k: torch.cat([d.splits["train"].labels, d.splits["val"].labels]).sort().values
        for k, d in (("a", a), ("c", c))
    }
    assert torch.equal(labels["a"], labels["c"]), "both splits partition the same 100 images"


def test_missing_data_names_folder_files_and_fix(tmp_path):
    with pytest.raises(DataError) as info:
        make(tmp_path / "nowhere")
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        assert name in message
    assert "DDPM_DATA_DIR" in message and "data.root" in message


def test_truncated_idx_file_is_reported_with_its_path(data_root):
    path = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        make(data_root)
    assert str(path) in str(info.value)


def test_corrupt_idx_magic_is_reported(data_root):
    path = data_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x99\x99" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="not an unsigned-byte IDX file") as info:
        check_idx_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("labels", "shape"),
    [
        (np.zeros(99, dtype=np.uint8), "(99,)"),
        (np.zeros((100, 28, 28), dtype=np.uint8), "(100, 28, 28)"),
    ],
)
def test_labels_that_do_not_match_their_images_are_one_line(data_root, labels, shape):
    raw = data_root / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    with pytest.raises(DataError) as info:
        make(data_root).setup()
    assert str(info.value) == (
        f"{raw}: train-images-idx3-ubyte holds an array of shape (100, 28, 28) and "
        f"train-labels-idx1-ubyte one of shape {shape}; they must be N images of 28×28 and "
        "their N labels, re-download them"
    )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"name": "cifar"}, "data.name"),
    ],
)
def test_bad_data_config_names_the_key(data_root, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        MNISTDataModule(root=str(data_root), **kwargs)


def test_data_root_comes_from_ddpm_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path))
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}"])
    assert cfg.data.root == str(tmp_path)
    monkeypatch.delenv("DDPM_DATA_DIR")
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}"])
    assert cfg.data.root == str(Path(__file__).resolve().parents[1] / "data")


def test_shuffle_depends_only_on_seed_and_epoch(data_root):
    datamodule = make(data_root, batch_size=16)
    split = datamodule.splits["train"]
    orders = {
        (seed, epoch): list(EpochShuffle(split, seed, epoch)) for seed in (0, 1) for epoch in (0, 1)
    }
    assert list(EpochShuffle(split, 0, 1)) == orders[(0, 1)], "the same order when rebuilt"
    assert len({tuple(order) for order in orders.values()}) == 4
    assert all(sorted(order) == list(range(len(split))) for order in orders.values())


def test_resumed_loader_skips_the_batches_already_trained_on(data_root):
    datamodule = make(data_root, batch_size=16)
    whole = [y for _, y in datamodule.train_dataloader()]
    datamodule.load_state_dict({"epoch": 0, "batches": 2, "shuffle_seed": torch.initial_seed()})
    loader = datamodule.train_dataloader()
    for a, b in zip([y for _, y in loader], whole[2:], strict=True):
        assert torch.equal(a, b)
    assert len([y for _, y in loader]) == len(whole), "only the first epoch after a resume skips"


@pytest.mark.parametrize("split", ["train", "val"])
def test_ddp_sampler_keeps_whole_batches(data_root, split):
    """Lightning swaps in a DistributedSampler under DDP: each process still gets whole
    (B, 1, 32, 32) batches, and the processes' shards cover the split once."""
    datamodule = make(data_root, batch_size=4)
    loader = getattr(datamodule, f"{split}_dataloader")()
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        shard = list(_update_dataloader(loader, sampler))
        assert shard[0][0].shape == (4, 1, 32, 32) and shard[0][1].shape == (4,)
        seen.append(torch.cat([x for x, _ in shard]).flatten(1))
    images = torch.cat(seen)
    assert len(images) == len(loader.dataset)
    assert torch.unique(images, dim=0).shape[0] == len(loader.dataset)


def test_splits_live_on_the_accelerator(data_root):
    """On a GPU the whole dataset sits on the device and batches are cut there; checked on
    CPU with PyTorch's `meta` device standing in for the GPU."""
    datamodule = MNISTDataModule(root=str(data_root), batch_size=16)
    device = torch.device("meta")
    datamodule.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device))
    datamodule.setup()
    assert {split.inputs.device for split in datamodule.splits.values()} == {device}
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.device == device and x.shape == (16, 1, 32, 32) and y.shape == (16,)


def test_ddp_resume_skips_within_the_resumed_epochs_order(data_root):
    """Under DDP the skip must follow the `DistributedSampler`'s order for the resumed epoch,
    whose `set_epoch` Lightning calls only after it has created the iterator."""
    datamodule = make(data_root, batch_size=4)
    shards = {}
    for skip in (0, 2):
        datamodule.load_state_dict({"epoch": 1, "batches": skip, "shuffle_seed": 0})
        loader = datamodule.train_dataloader()
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=0, shuffle=True)
        loader = _update_dataloader(loader, sampler)
        batches = iter(loader)
        loader.sampler.set_epoch(1)
        shards[skip] = [y for _, y in batches]
    assert len(shards[2]) == len(shards[0]) - 2
    for resumed, whole in zip(shards[2], shards[0][2:], strict=True):
        assert torch.equal(resumed, whole)


def test_every_layer_reads_a_dataset_from_its_one_record(monkeypatch):
    """A record added to the registry is known to the schema, model cards, the ONNX record and
    the demo page at once; nothing else lists datasets."""
    record = DatasetRecord(
        name="kmnist",
        title="Kuzushiji-MNIST",
        shape=(1, 32, 32),
        class_names=tuple("おきすつなはまやれを"),
        hub="tanganke/kmnist",
        tag="kmnist",
    )
    monkeypatch.setitem(DATASETS, "kmnist", record)
    with pytest.raises(ConfigError, match=r"^dataset=emnist: must be one of mnist, .*kmnist"):
        validate_config(compose_config("evaluate", ["dataset=emnist"]), "evaluate")
    validate_config(compose_config("evaluate", ["dataset=kmnist"]), "evaluate")
    validate_config(compose_config("train", ["data.name=kmnist"]), "train")
    config = {"dataset": "kmnist", "model": {"num_classes": 10}}
    assert dataset_title(config, "?") == "Kuzushiji-MNIST"
    assert card_data(config, "k").datasets == ["tanganke/kmnist"]
    assert class_names("kmnist", 10) == list("おきすつなはまやれを")
    assert class_names("kmnist", 3) is None
    assert model_title("kmnist", 10, "mine") == "Kuzushiji-MNIST, class-conditional (mine)"
    assert dataset_record("kmnist").num_classes == 10
    with pytest.raises(ConfigError, match=r"^data.name='emnist' is unknown; choose one of"):
        dataset_record("emnist")


def test_a_record_made_at_run_time_travels_as_plain_values(tmp_path):
    """A folder's record (known only when the data is listed) survives `as_dict` (what a
    checkpoint holds) and is found by `known_record` beside the registry's records."""
    from ddpm_lightning.data.image_folder import ImageFolderDataModule
    from ddpm_lightning.data.registry import known_record

    for label in ("ants", "bees"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "pics" / label / f"{i}.bmp").write_bytes(b"BM" + bytes(60))
    datamodule = ImageFolderDataModule(root=str(tmp_path / "pics"), labels="folders")
    record = datamodule.record
    assert (record.name, record.shape) == ("pics", (3, 32, 32))
    assert record.class_names == ("ants", "bees")
    saved = record.as_dict()
    assert saved == {**saved, "shape": [3, 32, 32], "class_names": ["ants", "bees"]}
    assert known_record(None, saved) == record and datamodule.num_classes == 2
    assert known_record("mnist", saved) is DATASETS["mnist"]
    assert known_record("pics") is None
    assert MNISTDataModule(batch_size=4).num_classes == 10
