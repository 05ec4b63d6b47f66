"""A real one-node Slurm cluster (scripts/local_slurm.sh): a sweep through the submitit launcher,
one Slurm job per sweep job, and a DDP run of 2 srun tasks. Slow; skipped without Slurm."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ddpm_lightning.data.images import MNISTDataModule
from tests.conftest import PYTHON, REPO_ROOT, TINY_MODEL, cli_env, write_fake_dataset
from tests.seen_batches import fingerprint

MISSING = [
    tool for tool in ("sinfo", "srun", "slurmctld", "slurmd", "munged") if not shutil.which(tool)
]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING), reason=f"no {', '.join(MISSING)}: apt-get install -y slurm-wlm munge"
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local Slurm daemons run as root"),
]
SCRIPT = REPO_ROOT / "scripts" / "local_slurm.sh"
SHORT_RUN = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "callbacks.fld=null",
    "callbacks.sample_grid=null",
    "callbacks.rich_progress_bar=null",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """A local cluster of its own (folder and ports), up for this module's tests; the
    environment that reaches it and the package (and tests/, for the test callback)."""
    folder = tmp_path_factory.mktemp("slurm")
    env = {
        **cli_env(),
        "DDPM_SLURM_DIR": str(folder),
        "DDPM_SLURM_CTLD_PORT": str(free_port()),
        "DDPM_SLURM_SLURMD_PORT": str(free_port()),
        "SLURM_CONF": str(folder / "slurm.conf"),
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True
    )
    assert started.returncode == 0, started.stderr
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True)


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """Real MNIST from DDPM_DATA_DIR when it is there, else the unit tests' synthetic digits."""
    real = os.environ.get("DDPM_DATA_DIR")
    if real and (Path(real) / "MNIST" / "raw").is_dir():
        return Path(real)
    root = tmp_path_factory.mktemp("data")
    write_fake_dataset(root, "MNIST")
    return root


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
    return result


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason='no hydra-submitit-launcher: pip install -e ".[slurm]"',
)
def test_a_sweep_runs_as_slurm_jobs_and_summarizes(slurm_env, mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    run(
        [
            PYTHON,
            "-m",
            "ddpm_lightning.train",
            "-m",
            "hydra/launcher=submitit_slurm",
            "hydra.launcher.partition=local",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.timeout_min=20",
            f"hydra.sweep.dir={sweep}",
            "data=mnist",
            f"data.root={mnist_root}",
            "schedule=linear,cosine",
            *SHORT_RUN,
        ],
        slurm_env,
        tmp_path,
    )
    logs = sorted((sweep / ".submitit").glob("*_*/*_log.out"))
    assert len(logs) == 2, "one Slurm job per sweep job"
    assert all("Starting with JobEnvironment" in log.read_text() for log in logs)
    for job, schedule in (("0", "linear"), ("1", "cosine")):
        folder = sweep / job
        assert f"schedule={schedule}" in (folder / ".hydra" / "overrides.yaml").read_text()
        assert (folder / "train.log").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
        assert "test/loss" in json.loads((folder / "test_metrics.json").read_text())
    run([PYTHON, "-m", "ddpm_lightning.tools.summarize", str(sweep)], slurm_env, tmp_path)
    with open(sweep / "summary.csv") as table:
        rows = list(csv.DictReader(table))
    assert {row["schedule"] for row in rows} == {"linear", "cosine"}
    assert {row["status"] for row in rows} == {"ok"}
    assert all(float(row["test/loss"]) > 0 for row in rows)


def test_ddp_over_two_srun_tasks_trains_on_disjoint_shards(slurm_env, tmp_path):
    """2 tasks on the one node; Lightning's SLURMEnvironment takes the ranks from srun and
    the trainer's devices and nodes from Slurm's variables. Each rank trains 2 batches of 16."""
    data_root = tmp_path / "data"
    write_fake_dataset(data_root, "MNIST")
    run_dir, seen = tmp_path / "run", tmp_path / "seen"
    run(
        [
            "srun",
            "--nodes=1",
            "--ntasks-per-node=2",
            "--cpus-per-task=1",
            PYTHON,
            "-m",
            "ddpm_lightning.train",
            "trainer=ddp_cpu",
            "trainer.devices='${oc.decode:${oc.env:SLURM_NTASKS_PER_NODE}}'",
            "+trainer.num_nodes='${oc.decode:${oc.env:SLURM_JOB_NUM_NODES}}'",
            f"data.root={data_root}",
            "data.batch_size=16",
            *TINY_MODEL,
            *SHORT_RUN,
            "+callbacks.seen._target_=seen_batches.SeenBatches",
            f"+callbacks.seen.dirpath={seen}",
            f"hydra.run.dir={run_dir}",
        ],
        slurm_env,
        tmp_path,
    )
    records = [json.loads((seen / f"seen_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [record["world_size"] for record in records] == [2, 2]
    first, second = ({*record["images"]} for record in records)
    assert len(first) == len(second) == 32 and not first & second
    datamodule = MNISTDataModule(root=str(data_root), batch_size=16)
    datamodule.setup()
    training = {fingerprint(image) for image in datamodule.splits["train"].inputs}
    assert first | second <= training
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
