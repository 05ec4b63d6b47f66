"""Synthetic IDX datasets and tiny configs so tests run in seconds without real data."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch

from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion.noise import SampleNoise

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "model.model_channels=8",
    "model.channel_multipliers=[1,2]",
    "model.block_groups=4",
    "model.num_attention_heads=2",
    "schedule.num_timesteps=20",
]


def tiny_model_folder(
    folder: Path,
    objective: str = "eps",
    num_classes: int | None = None,
    dataset: str = "mnist",
    seed: int = 0,
    shape: tuple[int, int, int] = (1, 32, 32),
    guidance_embedding: bool = False,
) -> Path:
    """A model folder (config.json, model.safetensors) of a randomly initialised tiny UNet
    (d=8, two levels, cosine schedule with T=20) on images of `shape` (C, H, W); with
    `guidance_embedding` a student of distilled guidance, γ's embedding random too."""
    from ddpm_lightning.sharing.folder import write_folder
    from ddpm_lightning.training.module import DiffusionModule

    torch.manual_seed(seed)
    model = {
        "_target_": "ddpm_lightning.models.UNet",
        "in_channels": shape[0],
        "model_channels": 8,
        "channel_multipliers": [1, 2],
        "block_groups": 4,
        "num_attention_heads": 2,
        "num_timesteps": 20,
        "num_classes": num_classes,
        **({"guidance_embedding": True} if guidance_embedding else {}),
    }
    schedule = {
        "_target_": "ddpm_lightning.diffusion.schedules.NoiseSchedule",
        "name": "cosine",
        "num_timesteps": 20,
    }
    module = DiffusionModule(
        model, schedule, {"objective": objective}, data_shape=shape, dataset=dataset
    )
    if guidance_embedding:
        torch.nn.init.normal_(module.model.guidance_embedding.output.weight)
    write_folder(folder, dict(module.hparams), module.state_dict(), {})
    return folder


@contextmanager
def fed_step_noise(draws: torch.Tensor) -> Iterator[None]:
    """Samplers use draws[i]: (B, …) as the noise of their i-th step instead of the samples' own
    (to compare with another implementation fed the same numbers)."""
    with patch.object(SampleNoise, "at_step", lambda self, i: draws[i]):
        yield


def overfit_one_batch(model: torch.nn.Module, diffusion, steps: int = 150) -> tuple[float, float]:
    """The fixed-noise training loss of `diffusion` on one batch of 16 bar images (1, 16, 16)
    before and after `steps` Adam steps (lr 3e-3) of `model` on that batch."""
    x0 = torch.full((16, 1, 16, 16), -1.0)
    x0[:, :, 4:12, 6:10] = 1.0
    t = torch.arange(16) % diffusion.num_timesteps
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))

    def fixed_loss() -> float:
        with torch.no_grad():
            return diffusion.training_loss(model, x0, t=t, noise=noise).item()

    before = fixed_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        diffusion.training_loss(model, x0, t=t, noise=noise).backward()
        optimizer.step()
    return before, fixed_loss()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (magic 2049 for 1-D labels, 2051 for 3-D images)."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_dataset(root: Path, folder: str, num_train: int = 100, num_test: int = 30) -> Path:
    """Random digits with pixels in 1..255 (so black padding is distinguishable) and labels."""
    rng = np.random.default_rng(len(folder))
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(1, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


@pytest.fixture
def one_thread():
    """Two threads on a busy 2-core machine wait on each other (10-100x slower); one does not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_fake_dataset(root, "MNIST")
    write_fake_dataset(root, "FashionMNIST")
    return root


def tiny_overrides(
    data_root: Path, output_dir: Path, *overrides: str, model: Sequence[str] = TINY_MODEL
) -> list[str]:
    """Overrides for a seconds-long CPU run of a tiny model (default: UNet) on the synthetic
    data."""
    return [
        f"data.root={data_root}",
        f"paths.output_dir={output_dir}",
        f"paths.log_dir={output_dir}/logs",
        "data.batch_size=16",
        "trainer.accelerator=cpu",
        "callbacks.rich_progress_bar=null",
        "callbacks.fld=null",
        "callbacks.sample_grid=null",
        *model,
        *overrides,
    ]


def tiny_config(
    data_root: Path, output_dir: Path, *overrides: str, model: Sequence[str] = TINY_MODEL
):
    return compose_config("train", tiny_overrides(data_root, output_dir, *overrides, model=model))


def writing_config(command: str, out_dir: Path, *overrides: str):
    """The config of `command` (sample or evaluate) writing its files and logs into `out_dir`."""
    return compose_config(
        command, [f"out_dir={out_dir}", f"paths.output_dir={out_dir}", *overrides]
    )


def sample_config(checkpoint: Path, out_dir: Path, *overrides: str):
    """The sample command's config for `checkpoint`, writing into `out_dir`."""
    return writing_config("sample", out_dir, f"ckpt_path={checkpoint}", *overrides)


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: no full Hydra errors, offline wandb."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env["WANDB_MODE"] = "offline"
    return env


PYTHON = sys.executable


def run_command(main, argv: list[str], monkeypatch, capsys) -> tuple[int, list[str], str]:
    """Run a Hydra entry point in-process as the command line would; (exit code, stdout's
    lines, stderr)."""
    monkeypatch.setattr(sys, "argv", ["prog", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    printed = capsys.readouterr()
    return code, printed.out.splitlines(), printed.err


def run_main(main, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`run_command`'s exit code and stderr."""
    code, _, stderr = run_command(main, argv, monkeypatch, capsys)
    return code, stderr


# Three optimizer steps and one validation batch: a whole run of a tiny model in seconds.
SHORT_RUN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """last.ckpt of a 3-step tiny run, shared by the tests of a module (read-only)."""
    from ddpm_lightning.train import train

    root = tmp_path_factory.mktemp("trained")
    write_fake_dataset(root / "data", "MNIST")
    train(tiny_config(root / "data", root / "first", *SHORT_RUN))
    return root / "first" / "checkpoints" / "last.ckpt"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted for the test (needs root or CAP_SYS_ADMIN, else skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        pytest.skip("no mount command to make a small tmpfs")
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
