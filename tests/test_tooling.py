import csv
import json
import math
import subprocess

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

from ddpm_lightning.config import compose_config
from ddpm_lightning.train import train
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from ddpm_lightning.training.ema import EMA, MAX_SIGMA_REL, power_decay, power_gamma, warmup_decay
from tests.conftest import PYTHON, cli_env, tiny_config, tiny_overrides

SHORT = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1"]
# A 1-epoch run resumed to 2 epochs plans its cosine decay over 1 epoch, the one-go run over 2:
# the resume comparisons use a constant learning rate after the warm-up.
CONSTANT_LR = ["lr_schedule.cosine_decay=false"]


def test_warmup_decay():
    assert warmup_decay(0.9999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.9999, 90) == pytest.approx(0.91)
    assert warmup_decay(0.9999, 10**6) == 0.9999
    assert warmup_decay(0.5, 10) == 0.5


def test_ema_update_follows_the_recursion():
    ema = EMA(decay=0.9, warmup=False)
    averaged = [torch.zeros(3), torch.ones(2)]
    expected = [a.clone() for a in averaged]
    for step in range(5):
        current = [torch.full((3,), float(step)), torch.full((2,), -float(step))]
        ema.update(averaged, current, torch.tensor(step + 1))
        expected = [0.9 * e + 0.1 * c for e, c in zip(expected, current, strict=True)]
    for a, e in zip(averaged, expected, strict=True):
        torch.testing.assert_close(a, e)


def test_power_function_exponent_matches_edm2():
    """Karras et al. 2024 pair σ_rel 0.05 with γ 16.97 and σ_rel 0.10 with γ 6.94."""
    assert power_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert power_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    assert power_gamma(MAX_SIGMA_REL) == pytest.approx(0.0, abs=1e-9)


def power_ema_of(values: list[float], sigma_rel: float) -> float:
    """The power-function EMA of a scalar weight taking `values` at successive updates."""
    ema = EMA(sigma_rel=sigma_rel)
    averaged = [torch.tensor([values[0]], dtype=torch.float64)]  # Lightning starts with a copy
    for n, value in enumerate(values[1:], start=1):
        ema.update(averaged, [torch.tensor([value], dtype=torch.float64)], torch.tensor(n))
    return float(averaged[0])


def test_power_function_ema_weights():
    """γ = 0 (β_t = 1 − 1/t) is the running mean. γ = 2 (σ_rel = √(3/80)): β_2 = (1/2)³ and
    β_3 = (2/3)³ weigh three updates 1/27, 7/27 and 19/27."""
    assert power_ema_of([3.0, -1.0, 10.0], MAX_SIGMA_REL) == pytest.approx(4.0)
    assert power_gamma(math.sqrt(3 / 80)) == pytest.approx(2.0)
    assert power_decay(2.0, 1) == 1 / 8 and power_decay(2.0, 2) == pytest.approx(8 / 27)
    expected = (1 * 3.0 + 7 * -1.0 + 19 * 10.0) / 27
    assert power_ema_of([3.0, -1.0, 10.0], math.sqrt(3 / 80)) == pytest.approx(expected)


def test_bad_ema_settings_name_the_key():
    from ddpm_lightning.errors import ConfigError

    with pytest.raises(ConfigError, match="callbacks.ema.decay"):
        EMA(decay=1.0)
    with pytest.raises(ConfigError, match="callbacks.ema.update_every_n_steps"):
        EMA(update_every_n_steps=0)
    with pytest.raises(ConfigError, match="callbacks.ema.sigma_rel"):
        EMA(sigma_rel=0.3)


def wandb_history_and_config(path):
    """{metric: [values]} and the config from an offline run's `run-*.wandb` file: a LevelDB-style
    log (7-byte ':W&B' header, 32 KiB blocks of chunks with checksum, length and type) of
    protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, position, chunks = path.read_bytes(), 7, []
    history, config = {}, {}
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:
            position += 32768 - position % 32768
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        chunks.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind not in (1, 4):  # 1: a whole record; 2, 3: first and middle chunks; 4: the last
            continue
        record = pb.Record()
        record.ParseFromString(b"".join(chunks))
        chunks = []
        if record.HasField("history"):
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
        if record.HasField("config"):
            for item in record.config.update:
                config[item.key] = json.loads(item.value_json)
    return history, config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch tiny run with the default callbacks (EMA, sample grid) and all loggers."""
    from tests.conftest import write_fake_dataset

    root = tmp_path_factory.mktemp("tooling")
    write_fake_dataset(root / "data", "MNIST")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("WANDB_MODE", "WANDB_API_KEY"):
            patch.delenv(key, raising=False)
        patch.setenv("HOME", str(root))  # no ~/.netrc: no credentials, so offline
        cfg = tiny_config(
            root / "data",
            root / "run",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "logger=many",
            *SHORT,
        )
        defaults = compose_config("train", [f"paths.output_dir={root / 'run'}"])
        cfg.callbacks.sample_grid = defaults.callbacks.sample_grid
        cfg.callbacks.sample_grid.num_samples = 4
        metrics = train(cfg)
    return root / "run", metrics


def test_checkpoint_holds_ema_and_raw_weights(run):
    folder, _ = run
    checkpoint = read_checkpoint(folder / "checkpoints" / "last.ckpt")
    average, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert average.keys() == raw.keys()
    differs = [k for k in average if not torch.equal(average[k], raw[k])]
    assert differs, "after 6 steps the average is not the raw weights"
    assert all(".model." in k or k.startswith("model.") for k in differs)
    module = load_module(folder / "checkpoints" / "last.ckpt")
    torch.testing.assert_close(
        dict(module.state_dict())["model.final.weight"], average["model.final.weight"]
    )


def test_sample_grids_every_epoch_and_at_the_end(run):
    folder, _ = run
    names = sorted(p.name for p in (folder / "samples").glob("*.png"))
    assert names == ["epoch_000.png", "epoch_001.png", "final.png"]
    # 4 samples → a 2 × 2 grid of 32 px with 2 px padding.
    assert Image.open(folder / "samples" / "epoch_000.png").size == (2 * 34 + 2, 2 * 34 + 2)


def test_wandb_offline_run_holds_metrics_config_and_images(run):
    folder, metrics = run
    (run_dir,) = (folder / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    history, config = wandb_history_and_config(log)
    assert history["val/loss"][-1] == pytest.approx(metrics["val/loss"])
    assert len(history["train/loss"]) == 6 and len(history["val/loss"]) == 2
    assert "optimized_metric" in config and "model_channels" in config["model"]
    images = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) >= 2, "a sample grid per epoch"


def test_tensorboard_and_csv_get_metrics(run):
    folder, _ = run
    assert list((folder / "tensorboard").glob("events.out.tfevents.*"))
    header = (folder / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "val/loss" in header and "train/loss" in header and "train/samples" in header


def resume_matches_one_go(data_root, tmp_path, first, *overrides: str) -> dict:
    """Resume checkpoint `first` to 2 epochs in `second`; assert the same step, weights and
    EMA as the uninterrupted run in `whole`, and return that run's last checkpoint."""
    train(
        tiny_config(
            data_root,
            tmp_path / "second",
            "trainer.max_epochs=2",
            f"ckpt_path={first}",
            *SHORT,
            *overrides,
        )
    )
    whole = read_checkpoint(tmp_path / "whole" / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(tmp_path / "second" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == whole["global_step"] == 6
    for key in ("state_dict", "current_model_state"):
        for name, value in whole[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=1e-5, atol=1e-6)
    return whole


def test_resume_gives_the_same_weights_as_one_go(data_root, tmp_path):
    """2 epochs in one run vs 1 epoch + resume for 1: same weights, EMA and optimizer step."""
    train(tiny_config(data_root, tmp_path / "whole", "trainer.max_epochs=2", *SHORT, *CONSTANT_LR))
    train(tiny_config(data_root, tmp_path / "first", "trainer.max_epochs=1", *SHORT, *CONSTANT_LR))
    first = tmp_path / "first" / "checkpoints" / "last.ckpt"
    whole = resume_matches_one_go(data_root, tmp_path, first, *CONSTANT_LR)
    first_state = read_checkpoint(first)["current_model_state"]
    assert not torch.equal(
        first_state["model.final.weight"], whole["state_dict"]["model.final.weight"]
    )


class StopAt(L.Callback):
    """Raise Lightning's SIGTERM exception (as a pre-emption does) before batch `batch_idx`
    of epoch `epoch`: LastCheckpoint then saves `last.ckpt` mid-epoch."""

    def __init__(self, epoch: int, batch_idx: int):
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            raise SIGTERMException


def test_resume_mid_epoch_continues_the_same_batches(data_root, tmp_path):
    """Pre-empted after the first batch of epoch 2 (of 3 batches) and resumed: the same
    weights as one go, so the resumed epoch trains on the rest of the same shuffled order
    (with the default warm-up and cosine decay, which continue where they stopped)."""
    train(tiny_config(data_root, tmp_path / "whole", "trainer.max_epochs=2", *SHORT))
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit):
        train(tiny_config(data_root, stopped, "trainer.max_epochs=2", *SHORT), [StopAt(1, 1)])
    first = stopped / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(first)
    assert checkpoint["global_step"] == 4
    assert checkpoint["MNISTDataModule"] == {"epoch": 1, "batches": 1, "shuffle_seed": 42}
    resume_matches_one_go(data_root, tmp_path, first)


def test_ddp_on_two_cpu_processes(data_root, tmp_path):
    overrides = tiny_overrides(
        data_root,
        tmp_path,
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",
        *SHORT,
    )
    result = subprocess.run(
        [PYTHON, "-m", "ddpm_lightning.train", *overrides, f"hydra.run.dir={tmp_path}"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    # 3 batches per process: each optimizer step sees both processes' batches.
    assert checkpoint["global_step"] == 3
    assert "world_size=2" in result.stderr + result.stdout or "2 processes" in (
        result.stderr + result.stdout
    )
    # Whole batches per process (batch_size is per process): rank 0's shard of the 90 training
    # images is 45, cut into batches of 16, 16 and 13.
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    assert [float(row["train/samples"]) for row in rows if row["train/samples"]] == [16, 32, 45]
