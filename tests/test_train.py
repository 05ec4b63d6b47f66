import csv
import json
import math
import subprocess
import venv
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.train import train
from ddpm_lightning.training.callbacks import RunProgressBar
from ddpm_lightning.training.module import DiffusionModule
from tests.conftest import PYTHON, REPO_ROOT, cli_env, tiny_config, tiny_overrides

SHORT_EPOCH = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
]


@pytest.mark.parametrize("smoke_test", ["trainer.fast_dev_run=true", "debug=fdr"])
def test_fast_dev_run_on_synthetic_data(data_root, tmp_path, smoke_test):
    """A smoke test runs one step and writes no checkpoint, so `ckpt_path=last` cannot pick it."""
    metrics = train(tiny_config(data_root, tmp_path, smoke_test))
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/loss"])
    assert list(tmp_path.rglob("*.ckpt")) == []


def test_null_progress_bar_and_summary_callbacks_show_none(data_root, tmp_path, capfd):
    """Without these callbacks Lightning would add its own TQDM bar and summary table."""
    overrides = ["trainer.fast_dev_run=true", "callbacks.model_summary=null"]
    train(tiny_config(data_root, tmp_path, *overrides))
    printed = "".join(capfd.readouterr())
    assert "Epoch 0" not in printed and "Trainable params" not in printed


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist"])
def test_short_run_writes_checkpoints_and_losses(data_root, tmp_path, data):
    metrics = train(tiny_config(data_root, tmp_path, f"data={data}", *SHORT_EPOCH))
    assert metrics["val/loss"] > 0
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file() and (tmp_path / "checkpoints" / "epoch_000.ckpt").is_file()
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/loss", "step", "epoch"} <= set(header)

    checkpoint = torch.load(last, weights_only=True, map_location="cpu")
    assert checkpoint["hyper_parameters"]["model"]["model_channels"] == 8
    assert checkpoint["global_step"] == 3
    module = DiffusionModule.load_from_checkpoint(last, map_location="cpu")
    assert module.diffusion.num_timesteps == 20
    torch.testing.assert_close(module.state_dict(), checkpoint["state_dict"])


def test_resume_continues_the_global_step(data_root, tmp_path):
    first = tmp_path / "first"
    train(tiny_config(data_root, first, *SHORT_EPOCH))
    second = tmp_path / "second"
    resume = [f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=2"]
    train(tiny_config(data_root, second, *SHORT_EPOCH, *resume))
    checkpoint = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    # Saved at the end of training: both epochs done, so a further resume starts epoch 2.
    assert checkpoint["global_step"] == 6 and checkpoint["epoch"] == 2


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optimizer.lr=0", "optimizer.lr"),
        ("model.block_groups=3", "model.block_groups"),
        ("model.num_attention_heads=3", "model.num_attention_heads"),
        ("schedule.num_timesteps=1", "schedule.num_timesteps"),
        ("diffusion.objective=score", "diffusion.objective"),
        ("data.pad=0", "model.channel_multipliers"),
        ("ckpt_path=/nonexistent/last.ckpt", "ckpt_path"),
    ],
)
def test_bad_config_names_the_key(data_root, tmp_path, override, key):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "trainer.fast_dev_run=true",
        override,
        "model.channel_multipliers=[1,2,2,2]" if "pad" in override else "seed=1",
    )
    with pytest.raises(Exception) as info:
        train(cfg)
    error = info.value
    while not isinstance(error, ConfigError) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, ConfigError) and key in str(error)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "ddpm_lightning.train", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_trains_from_another_directory(data_root, tmp_path):
    result = run_cli(
        *tiny_overrides(data_root, tmp_path / "run", "trainer.fast_dev_run=true"),
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("model.block_groups=5", ["block_groups (5)", "model.block_groups"]),
        ("data.root={missing}", ["{missing}", "DDPM_DATA_DIR", "train-images-idx3-ubyte"]),
    ],
)
def test_cli_errors_are_one_line(data_root, tmp_path, override, names):
    missing = str(tmp_path / "missing")
    result = run_cli(
        *tiny_overrides(data_root, tmp_path / "run", "trainer.fast_dev_run=true"),
        override.format(missing=missing),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for name in names:
        assert name.format(missing=missing) in errors[0]


def test_cli_unknown_key_gets_hydras_message(data_root, tmp_path):
    result = run_cli("model.no_such_key=1", f"data.root={data_root}", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "+model.no_such_key=1" in result.stderr


def test_make_train_passes_args_through():
    result = subprocess.run(
        ["make", "-n", "train", "ARGS=schedule=linear trainer.max_epochs=1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert "-m ddpm_lightning.train schedule=linear trainer.max_epochs=1" in result.stdout


def test_installed_wheel_finds_its_configs(tmp_path):
    """Build the wheel, install it into a fresh venv outside the repo, compose the config."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO_ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("ddpm_lightning-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # torch and friends come from the test's own environment, appended after the wheel.
    dev_site = subprocess.run(
        [PYTHON, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "dev_dependencies.pth").write_text(dev_site + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import ddpm_lightning; print(ddpm_lightning.__file__)"],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(env_dir)), where

    def run_installed(program: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(env_dir / "bin" / program), *args],
            cwd=elsewhere,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    result = run_installed("ddpm-train", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model_channels: 16" in result.stdout and "name: cosine" in result.stdout
    assert not (elsewhere / "conf").exists()
    shipped = run_installed(
        "python",
        "-c",
        "from ddpm_lightning.evaluation import FLD; print(FLD('fashion_mnist').dataset)",
    )
    assert shipped.stdout.strip() == "fashion_mnist", shipped.stderr[-2000:]
    pretrained = run_installed(
        "ddpm-sample",
        "pretrained=mnist",
        "num_samples=2",
        "gif_images=2",
        "sampler.num_steps=2",
        f"out_dir={tmp_path / 'samples'}",
    )
    assert pretrained.returncode == 0, pretrained.stderr[-2000:]
    assert (tmp_path / "samples" / "grid.png").is_file()


def test_a_six_step_run_records_train_loss(data_root, tmp_path):
    """90 training images in batches of 16 are 6 steps, fewer than log_every_n_steps (50): the
    interval drops to the steps of an epoch, so the run's train/loss reaches the CSV log."""
    train(tiny_config(data_root, tmp_path, "trainer.max_epochs=1", "callbacks.ema=null"))
    with open(tmp_path / "csv" / "metrics.csv") as log:
        rows = [row for row in csv.DictReader(log) if row.get("train/loss")]
    assert [row["step"] for row in rows] == ["5"]
    assert math.isfinite(float(rows[0]["train/loss"]))
    assert not (tmp_path / ".lock").exists()


def test_a_run_is_tested_on_its_final_ema_weights(data_root, tmp_path):
    """`test: true` (the default) runs trainer.test after fit: test/loss over the 30 synthetic
    test images, from the EMA weights the checkpoint stores, logged and in test_metrics.json."""
    cfg = tiny_config(data_root, tmp_path, *SHORT_EPOCH)
    metrics = train(cfg)
    written = json.loads((tmp_path / "test_metrics.json").read_text())
    assert set(written) == {"test/loss"} and written["test/loss"] == metrics["test/loss"]
    assert metrics["val/loss"] > 0, "the fit's metrics are kept"
    datamodule = instantiate(tiny_config(data_root, tmp_path / "again").data)
    ema = DiffusionModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    trainer = L.Trainer(
        accelerator="cpu",
        precision=cfg.trainer.precision,
        logger=False,
        enable_progress_bar=False,
    )
    (again,) = trainer.test(ema, datamodule=datamodule, verbose=False)
    assert again["test/loss"] == pytest.approx(written["test/loss"], rel=1e-6)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "test/loss" in header
    bookkeeping = [key for key in header if key.startswith(("test/", "validate/"))]
    assert bookkeeping == ["test/loss"], "no throughput figures of validation or the test"


def test_test_false_skips_the_test_split(data_root, tmp_path):
    metrics = train(tiny_config(data_root, tmp_path, *SHORT_EPOCH, "test=false"))
    assert "test/loss" not in metrics and not (tmp_path / "test_metrics.json").exists()


@pytest.mark.parametrize(
    ("limits", "steps"),
    [(["trainer.max_epochs=2"], 6), (["trainer.max_epochs=2", "trainer.max_steps=4"], 4)],
)
def test_the_progress_bar_counts_the_steps_of_the_whole_run(data_root, tmp_path, limits, steps):
    """Two epochs of 3 steps: one bar of 6 steps, not one of 3 per epoch; max_steps caps it."""
    bar = RunProgressBar()
    short = ["+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "test=false"]
    train(tiny_config(data_root, tmp_path, *short, *limits), [bar])
    assert bar.progress is not None
    (task,) = [task for task in bar.progress.tasks if task.id == bar.train_progress_bar_id]
    assert (task.total, task.completed) == (steps, steps)


class ClockedTimer(Timer):
    """Lightning's Timer for `+trainer.max_time`, with the seconds elapsed set by the test."""

    def __init__(self, seconds: float) -> None:
        super().__init__(duration={"seconds": seconds})
        self.elapsed = 0.0

    def time_elapsed(self, stage: str = "train") -> float:
        return self.elapsed


@pytest.mark.parametrize(("epoch_plan", "steps"), [(math.inf, 50), (30, 30)])
def test_with_max_time_the_progress_bar_ends_at_the_time_limit(epoch_plan, steps):
    """100 s, 2 s per step from step 0: 10 steps after 20 s, and 40 more fit in the 80 s left
    (no more than the epochs' steps). Before any step the total is the epochs' plan."""
    timer = ClockedTimer(100)
    trainer = SimpleNamespace(
        callbacks=[timer], global_step=0, estimated_stepping_batches=epoch_plan
    )
    bar = RunProgressBar()
    assert bar.run_steps(trainer) == epoch_plan
    timer.elapsed, trainer.global_step = 20.0, 10
    assert bar.run_steps(trainer) == steps
