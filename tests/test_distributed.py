"""Sampling, FLD and testing split over processes: the shards of a run, and 2 DDP CPU
processes (gloo) drawing and scoring exactly what one process does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion.noise import shard
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.sample import sample
from ddpm_lightning.train import build_module
from ddpm_lightning.training.checkpoints import read_checkpoint
from tests.conftest import PYTHON, cli_env, sample_config, tiny_config, tiny_overrides

# Chunks of 5: one process draws samples 0-4 and 5-9 in the same batches as two processes do.
SAMPLING = ["num_samples=10", "sampler.num_steps=3", "sampler.batch_size=5", "seed=3"]


@pytest.mark.parametrize(("num_samples", "world_size"), [(10, 2), (10, 3), (2, 4), (7, 1)])
def test_shards_laid_end_to_end_are_the_run_in_order(num_samples, world_size):
    blocks = [shard(num_samples, rank, world_size) for rank in range(world_size)]
    assert [i for block in blocks for i in block] == list(range(num_samples))
    assert all(len(block) <= -(-num_samples // world_size) for block in blocks)


def tiny_checkpoint(folder: Path) -> Path:
    """A randomly initialised tiny UNet (T=20) of MNIST, saved as the sample command reads it."""
    torch.manual_seed(0)
    module = build_module(tiny_config(folder / "data", folder / "unused"), (1, 32, 32))
    path = folder / "tiny.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def run_cli(module: str, *args: str, cwd: Path) -> None:
    """`python -m module args` with one thread per process, as the in-process runs use."""
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [PYTHON, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_ddp_processes_sample_and_score_what_one_does(tmp_path, one_thread):
    """trainer=ddp_cpu: each process draws its half; the first gathers them and writes the
    files once; the FLD adds up both processes' LeNet features with torchmetrics."""
    checkpoint = tiny_checkpoint(tmp_path)
    sample(sample_config(checkpoint, tmp_path / "one", *SAMPLING))
    run_cli(
        "ddpm_lightning.sample",
        f"ckpt_path={checkpoint}",
        *SAMPLING,
        "trainer=ddp_cpu",
        f"hydra.run.dir={tmp_path / 'two'}",
        cwd=tmp_path,
    )
    with (
        np.load(tmp_path / "one" / "samples.npz") as one,
        np.load(tmp_path / "two" / "samples.npz") as two,
    ):
        assert one["images"].shape == (10, 1, 32, 32)
        assert np.array_equal(one["images"], two["images"])
    written = {p.name for p in (tmp_path / "two").iterdir() if p.suffix != ".log"}
    assert written == {"grid.png", "grid_large.png", "reverse.gif", "samples.npz", ".hydra"}

    overrides = [f"ckpt_path={checkpoint}", *SAMPLING]
    single = evaluate(
        compose_config("evaluate", [*overrides, f"paths.output_dir={tmp_path / 'eval_one'}"])
    )
    run_cli(
        "ddpm_lightning.evaluate",
        *overrides,
        "trainer=ddp_cpu",
        f"hydra.run.dir={tmp_path / 'eval_two'}",
        cwd=tmp_path,
    )
    double = json.loads((tmp_path / "eval_two" / "metrics.json").read_text())
    assert double["num_samples"] == 10
    assert double["fld"] == pytest.approx(single["fld"], rel=1e-6), "float32 LeNet features"
    assert double["label_counts"] == single["label_counts"]


@pytest.mark.slow
def test_the_fld_callback_under_ddp_scores_what_evaluate_does(data_root, tmp_path, one_thread):
    """A 2-process run's test/fld (each process draws 5 of 10 samples of the final EMA weights)
    equals the evaluate command's FLD of its last.ckpt in one process."""
    run = tmp_path / "run"
    overrides = [o for o in tiny_overrides(data_root, run) if o != "callbacks.fld=null"]
    run_cli(
        "ddpm_lightning.train",
        *overrides,
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "callbacks.fld.every_n_epochs=1",
        "callbacks.fld.num_samples=10",
        "callbacks.fld.test_num_samples=10",
        "callbacks.fld.sampler.num_steps=2",
        "+callbacks.fld.sampler.batch_size=5",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    tested = json.loads((run / "test_metrics.json").read_text())
    single = evaluate(
        compose_config(
            "evaluate",
            [
                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                "num_samples=10",
                "sampler.num_steps=2",
                "sampler.eta=1.0",
                "sampler.batch_size=5",
                f"paths.output_dir={tmp_path / 'eval'}",
            ],
        )
    )
    assert tested["test/fld"] == pytest.approx(single["fld"], rel=1e-6), "logged in float32"


@pytest.mark.slow
def test_a_time_limited_ddp_run_decays_to_the_time_limit(data_root, tmp_path, one_thread):
    """Two processes under `+trainer.max_time` and no epoch limit: every re-plan is broadcast
    from the first process (a process that skipped one would hang the run), and the run stops
    at the limit with its learning rate near 0."""
    run = tmp_path / "run"
    run_cli(
        "ddpm_lightning.train",
        *tiny_overrides(data_root, run),
        "trainer=ddp_cpu",
        "trainer.max_epochs=-1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "+trainer.max_time=00:00:00:15",
        "callbacks.time_budget.every_n_steps=5",
        "lr_schedule.warmup_steps=2",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["callbacks"]["TimeBudget"]["pace"] > 0
    (scheduler,) = checkpoint["lr_schedulers"]
    assert checkpoint["global_step"] > 20
    assert scheduler["_last_lr"][0] < 0.1 * scheduler["base_lrs"][0]
