"""Hydra multiruns of `ddpm_lightning.train`: grid sweeps, a failing job, Optuna."""

import csv
import inspect
import json
import subprocess
from itertools import product
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from ddpm_lightning.config import compose_config, config_dir
from ddpm_lightning.config.sweep_folder import end_line
from ddpm_lightning.diffusion.samplers import DDIMSampler
from tests.conftest import PYTHON, cli_env, tiny_overrides

TWO_STEPS = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "callbacks.sample_grid=null",
    "callbacks.model_summary=null",
]


def sweep_overrides(data_root: Path, sweep_dir: Path, *overrides: str) -> list[str]:
    """The tiny run's overrides with `overrides` replacing same-key ones; each job keeps its own
    output folder under `sweep_dir`."""
    keys = {"paths.output_dir", *(o.partition("=")[0] for o in overrides)}
    tiny = tiny_overrides(data_root, sweep_dir, *TWO_STEPS)
    kept = [o for o in tiny if o.partition("=")[0] not in keys]
    return [*kept, *overrides, f"hydra.sweep.dir={sweep_dir}"]


def run_module(module: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", module, *args],
        cwd=cwd,
        env={**cli_env(), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_summary(sweep_dir: Path) -> list[dict[str, str]]:
    result = run_module("ddpm_lightning.tools.summarize", str(sweep_dir), cwd=sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote {sweep_dir / 'summary.csv'}" in result.stdout
    with (sweep_dir / "summary.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def launched_jobs(output: str) -> int:
    return sum(1 for line in output.splitlines() if "[HYDRA] \t#" in line)


def summarize_line(sweep_dir: Path, jobs: int) -> str:
    command = f"python -m ddpm_lightning.tools.summarize {sweep_dir}"
    return f"sweep folder: {sweep_dir} ({jobs} jobs; summarize with: {command})"


def test_a_sweep_names_its_folder_first_and_last(tmp_path):
    """Hydra's own timestamped folder, before the first job and, with the job count and the
    command that tabulates it, after the last."""
    logs = tmp_path / "logs"
    result = run_module(
        "ddpm_lightning.train",
        "-m",
        "experiment=spiral",
        "schedule=linear,cosine",
        "data.num_points=2000",
        "trainer.accelerator=cpu",
        "callbacks.rich_progress_bar=null",
        "callbacks.fld=null",
        f"paths.log_dir={logs}",
        *TWO_STEPS,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (logs / "spiral" / "multiruns").iterdir()
    lines = result.stdout.splitlines()
    assert lines[0] == f"sweep folder: {sweep}"
    assert lines[1].endswith("[HYDRA] Launching 2 jobs locally")
    assert lines[-1] == summarize_line(sweep, 2)
    rows = read_summary(sweep)
    assert sorted(row["schedule"] for row in rows) == ["cosine", "linear"]


def test_a_sweep_without_metrics_is_not_sent_to_summarize(tmp_path):
    """sample sweeps log nothing summarize reads; evaluate sweeps' metrics.json it reads."""
    for num in range(3):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
    (tmp_path / "multirun.yaml").touch()
    assert end_line(tmp_path) == f"sweep folder: {tmp_path} (3 jobs)"
    (tmp_path / "1" / "metrics.json").write_text("{}")
    assert end_line(tmp_path) == summarize_line(tmp_path, 3)


@pytest.mark.parametrize("command", ["train", "sample", "evaluate"])
def test_every_commands_sweeps_name_their_folder(command):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(command, return_hydra_config=True)
    callback = "ddpm_lightning.config.sweep_folder.SweepFolder"
    assert cfg.hydra.callbacks.sweep_folder._target_ == callback


def test_grid_sweep_then_summarize(data_root, tmp_path):
    sweep = tmp_path / "multirun"
    result = run_module(
        "ddpm_lightning.train",
        "-m",
        *sweep_overrides(data_root, sweep, "schedule=linear,cosine", "model.model_channels=8,16"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for num in range(4):
        job = sweep / str(num)
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / "csv" / "metrics.csv").is_file() and (job / "run_info.json").is_file()
    assert not (sweep / "4").exists()

    rows = read_summary(sweep)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}
    assert list(rows[0])[:5] == ["job", "status", "schedule", "model.model_channels", "val/loss"]
    assert "train/loss" in rows[0]
    losses = [float(row["val/loss"]) for row in rows]
    assert losses == sorted(losses)
    grid = {(row["schedule"], row["model.model_channels"]) for row in rows}
    assert grid == set(product(["linear", "cosine"], ["8", "16"]))


def test_the_ablation_experiment_is_the_protocol_of_the_results_page():
    """The default recipe for 8,400 steps of batch 64, scored by 2,000 DDIM-20 η=1 samples."""
    cfg = compose_config("train", ["experiment=ablation"])
    default = compose_config("train", [])
    assert (cfg.trainer.max_steps, cfg.data.batch_size, cfg.test) == (8400, 64, True)
    assert (
        cfg.optimized_metric == "test/fld" and cfg.callbacks.model_checkpoint.monitor == "val/loss"
    )
    fld = cfg.callbacks.fld
    eta = fld.sampler.get("eta", inspect.signature(DDIMSampler).parameters["eta"].default)
    assert fld.sampler._target_.endswith("DDIMSampler")
    assert (fld.test_num_samples, fld.seed, fld.sampler.num_steps, eta) == (
        2000,
        0,
        20,
        1.0,
    )
    assert (cfg.diffusion, cfg.model, cfg.optimizer) == (
        default.diffusion,
        default.model,
        default.optimizer,
    )


def test_the_ablation_experiment_ranks_jobs_by_their_test_fld(data_root, tmp_path):
    """experiment=ablation: each job ends with test/fld of its EMA weights and the summary puts
    the lowest first; the experiment's 8,400-step budget yields to a command-line max_steps."""
    sweep = tmp_path / "multirun"
    overrides = sweep_overrides(
        data_root,
        sweep,
        "experiment=ablation",
        "diffusion.weighting=none,min_snr",
        "trainer.max_steps=2",
        "callbacks.fld.test_num_samples=8",
        "callbacks.fld.sampler.num_steps=2",
    )
    overrides.remove("callbacks.fld=null")
    result = run_module("ddpm_lightning.train", "-m", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_summary(sweep)
    assert {row["diffusion.weighting"] for row in rows} == {"none", "min_snr"}
    assert list(rows[0])[3] == "test/fld"
    scores = [float(row["test/fld"]) for row in rows]
    assert scores == sorted(scores) and scores[0] > 0
    for num in range(2):
        tested = json.loads((sweep / str(num) / "test_metrics.json").read_text())
        assert set(tested) == {"test/loss", "test/fld"}
        steps = [
            int(row["step"])
            for row in csv.DictReader((sweep / str(num) / "csv" / "metrics.csv").open())
        ]
        assert max(steps) <= 2


def test_a_config_error_fails_its_job_and_the_others_run(data_root, tmp_path):
    """The failing job gets one `error: job N:` line; Hydra runs the rest, then exits 1."""
    sweep = tmp_path / "multirun"
    result = run_module(
        "ddpm_lightning.train",
        "-m",
        *sweep_overrides(data_root, sweep, "model.block_groups=5,4"),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: job 0: ")
    assert "model.block_groups" in errors[0]
    assert launched_jobs(result.stdout) == 2
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    assert result.stdout.splitlines()[-1] == summarize_line(sweep, 2)
    rows = read_summary(sweep)
    assert [(row["job"], row["status"]) for row in rows] == [("1", "ok"), ("0", "failed")]


def test_full_error_lets_the_sweep_go_on(data_root, tmp_path):
    """With HYDRA_FULL_ERROR=1 the error reaches Hydra, which runs the other jobs, then fails."""
    sweep = tmp_path / "multirun"
    result = run_module(
        "ddpm_lightning.train",
        "-m",
        *sweep_overrides(data_root, sweep, "model.block_groups=5,4"),
        cwd=tmp_path,
        HYDRA_FULL_ERROR="1",
    )
    assert result.returncode == 1
    assert launched_jobs(result.stdout) == 2
    assert "ConfigError" in result.stderr and "model.block_groups" in result.stderr
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file()
    rows = read_summary(sweep)
    assert [(row["job"], row["status"]) for row in rows] == [("1", "ok"), ("0", "failed")]


def test_optuna_search_writes_optimization_results(data_root, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper")
    sweep = tmp_path / "optuna"
    tiny = sweep_overrides(
        data_root,
        sweep,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "optimized_metric=val/loss",
    )
    # A fixed model.model_channels would take it out of the search space.
    tiny = [o for o in tiny if not o.startswith("model.model_channels=")]
    result = run_module("ddpm_lightning.train", *tiny, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {
        "optimizer.lr",
        "model.model_channels",
        "schedule",
        "diffusion.objective",
    }
    assert 1e-4 <= results["best_params"]["optimizer.lr"] <= 2e-3
    rows = read_summary(sweep)
    assert len(rows) == 2 and {row["status"] for row in rows} == {"ok"}
    assert float(rows[0]["val/loss"]) == pytest.approx(results["best_value"])
