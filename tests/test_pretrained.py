"""Shipped models (`pretrained=`): export from a checkpoint, SHA-256 check, sample/evaluate."""

import json

import numpy as np
import pytest
import torch

from ddpm_lightning.config import compose_config
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.pretrained import available, checkpoint_path, export, main
from ddpm_lightning.sample import sample
from ddpm_lightning.train import train
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from tests.conftest import tiny_config

SHIPPED_LIMIT = 5 * 2**20


@pytest.fixture
def checkpoint(data_root, tmp_path):
    """last.ckpt of a 3-step run of the tiny UNet with EMA, in a folder with Hydra overrides."""
    run = tmp_path / "run"
    train(
        tiny_config(
            data_root,
            run,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
        )
    )
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- data=mnist\n- trainer.max_epochs=1\n")
    return run / "checkpoints" / "last.ckpt"


def test_export_keeps_the_ema_weights_and_records_the_run(checkpoint, tmp_path):
    metrics = tmp_path / "eval" / "metrics.json"
    metrics.parent.mkdir()
    sampler = {"num_steps": 20, "eta": 1.0}
    metrics.write_text(
        json.dumps({"fld": 12.5, "mean_confidence": 0.9, "histogram": [1], "sampler": sampler})
    )
    out = tmp_path / "assets"
    paths = export(checkpoint, "tiny", metrics, out)
    record = json.loads(paths["record"].read_text())
    original = read_checkpoint(checkpoint)
    assert record["ema"] is True and record["global_step"] == 3
    assert record["train_overrides"] == ["data=mnist", "trainer.max_epochs=1"]
    assert record["metrics"] == {"fld": 12.5, "mean_confidence": 0.9, "sampler": sampler}
    assert record["evaluate_overrides"] is None
    shipped = torch.load(paths["weights"], weights_only=True)
    assert set(shipped) == {"hyper_parameters", "state_dict"}
    module = load_module(checkpoint_path(None, "tiny", out))
    for key, value in module.state_dict().items():
        assert torch.equal(value, original["state_dict"][key]), key
    raw = original["current_model_state"]
    assert any(not torch.equal(raw[k], v) for k, v in original["state_dict"].items())
    assert available(out) == ["tiny"]


def test_export_command_prints_the_size(checkpoint, tmp_path, capsys):
    main([str(checkpoint), "--name", "tiny", "--out-dir", str(tmp_path / "assets")])
    assert "ddpm_tiny.pt (" in capsys.readouterr().out


def test_bad_pretrained_settings_name_the_key(checkpoint, tmp_path):
    out = tmp_path / "assets"
    export(checkpoint, "tiny", directory=out)
    with pytest.raises(ConfigError, match="not both"):
        checkpoint_path(str(checkpoint), "tiny", out)
    with pytest.raises(ConfigError, match=r"pretrained=cifar is not shipped; .* \['tiny'\]"):
        checkpoint_path(None, "cifar", out)
    weights = out / "ddpm_tiny.pt"
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(DataError, match="SHA-256 does not match"):
        checkpoint_path(None, "tiny", out)
    assert checkpoint_path(str(checkpoint), None, out) == str(checkpoint)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_shipped_model_is_small_intact_and_samples(name, tmp_path):
    assert name in available()
    path = checkpoint_path(None, name)
    assert path.stat().st_size < SHIPPED_LIMIT
    module = load_module(path)
    assert module.hparams["dataset"] == name
    files = sample(
        compose_config(
            "sample",
            [
                f"pretrained={name}",
                f"out_dir={tmp_path}",
                f"paths.output_dir={tmp_path}",
                "sampler.num_steps=2",
                "num_samples=4",
                "gif_images=4",
            ],
        )
    )
    images = np.load(files["samples.npz"])["images"]
    assert images.shape == (4, 1, 32, 32)


def test_evaluate_a_shipped_model(tmp_path):
    metrics = evaluate(
        compose_config(
            "evaluate",
            [
                "pretrained=mnist",
                f"out_dir={tmp_path}",
                f"paths.output_dir={tmp_path}",
                "sampler.num_steps=2",
                "num_samples=100",
            ],
        )
    )
    assert sum(metrics["label_counts"]) == 100 and metrics["fld"] > 0
    assert metrics["pretrained"] == "mnist" and metrics["seed"] == 0
    assert metrics["sampler"]["num_steps"] == 2 and metrics["sampler"]["eta"] == 0.0
