"""Checks before long work: unwritable output folders, sampling requests too large for the
bound or the memory, and the lock that keeps two training runs out of one run folder."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from ddpm_lightning import evaluate as evaluate_command
from ddpm_lightning import export as export_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning import train as train_command
from ddpm_lightning.diffusion.samplers import DDIMSampler
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.train import build_module, train
from ddpm_lightning.training import preflight
from ddpm_lightning.training.preflight import MAX_SAMPLES, check_sampling_request
from ddpm_lightning.training.runlock import LOCK_NAME, release_lock, run_lock, take_lock
from tests.conftest import run_main, tiny_config, tiny_overrides


def blocked_folder(tmp_path: Path) -> Path:
    """A folder that cannot be created: a plain file stands where its parent should be."""
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "out"


@pytest.mark.parametrize(
    ("main", "args"),
    [
        (sample_command.main, ["ckpt_path=never_read.ckpt"]),
        (evaluate_command.main, ["samples=never_read.npz"]),
        (export_command.main, ["ckpt_path=never_read.ckpt"]),
    ],
)
def test_an_unwritable_out_dir_is_one_line_before_any_work(
    main, args, tmp_path, monkeypatch, capsys
):
    out_dir = blocked_folder(tmp_path)
    argv = [*args, f"out_dir={out_dir}", f"hydra.run.dir={tmp_path / 'run'}"]
    code, stderr = run_main(main, argv, monkeypatch, capsys)
    assert code == 1
    assert stderr.strip().splitlines() == [
        f"error: out_dir={out_dir} cannot be written (Not a directory); pick another folder"
    ]


def test_an_unwritable_run_folder_stops_training_before_it_starts(data_root, tmp_path):
    output_dir = blocked_folder(tmp_path)
    with pytest.raises(ConfigError) as info:
        train(tiny_config(data_root, output_dir))
    assert str(info.value) == (
        f"paths.output_dir={output_dir} cannot be written (Not a directory); pick another folder"
    )


@pytest.fixture
def tiny_module(tmp_path):
    """An untrained tiny UNet with T=20 and a 2-step DDIM sampler for it."""
    module = build_module(tiny_config(tmp_path, tmp_path), (1, 32, 32))
    return module, module.make_sampler(partial(DDIMSampler, num_steps=2))


def test_more_samples_than_the_bound_need_force(tiny_module):
    module, sampler = tiny_module
    with pytest.raises(ConfigError) as info:
        check_sampling_request(module, sampler, MAX_SAMPLES + 1, force=False)
    assert str(info.value) == (
        "num_samples=1000001 is above 1,000,000; pass force=true to sample that many anyway"
    )


def test_samples_that_do_not_fit_in_memory_are_refused(tiny_module, monkeypatch):
    module, sampler = tiny_module
    monkeypatch.setattr(preflight, "free_memory", lambda device: 2**20)
    with pytest.raises(ConfigError) as info:
        check_sampling_request(module, sampler, 1000, force=False)
    assert str(info.value) == (
        "num_samples=1000 needs 3.9 MiB for the samples but 1.0 MiB are free on cpu; "
        "sample fewer, or pass force=true"
    )


def test_force_samples_anyway_and_prints_the_estimate(tiny_module, monkeypatch, capsys):
    module, sampler = tiny_module
    monkeypatch.setattr(preflight, "free_memory", lambda device: 0)
    check_sampling_request(module, sampler, MAX_SAMPLES + 1, force=True)
    printed = capsys.readouterr().out
    assert printed.startswith("sampling 1,000,001 × 2 network calls in chunks of 256: about ")
    assert printed.rstrip().endswith("on cpu, 3.8 GiB of samples")


def test_the_estimate_times_guided_steps_apart(tiny_module, tmp_path, monkeypatch, capsys):
    """Autoguided DDIM-2 guided on its first step only: the estimate is chunks × calls × the
    mean of one guided (here 3 s) and one plain (1 s) step."""
    module, _ = tiny_module
    module.guide = build_module(tiny_config(tmp_path, tmp_path), (1, 32, 32))
    sigmas = module.diffusion.schedule.sigmas()
    first, second = DDIMSampler(module.diffusion.schedule, num_steps=2).steps()
    interval = [float(sigmas[second]), float(sigmas[first])]
    sampler = module.make_sampler(
        partial(DDIMSampler, num_steps=2), guidance_scale=2.0, guidance_interval=interval
    )
    assert preflight.guided_steps(sampler) == [first]
    timed = []

    def seconds(module, sampler, batch, t):
        timed.append((batch, t))
        return 3.0 if t == first else 1.0

    monkeypatch.setattr(preflight, "seconds_per_prediction", seconds)
    check_sampling_request(module, sampler, 1000, force=False)
    assert sorted(timed) == sorted([(256, first), (256, second)])
    assert capsys.readouterr().out.startswith(
        "sampling 1,000 × 2 network calls (1 of 2 steps guided) in chunks of 256: about 16 s "
    )


def write_owner(folder: Path, pid: int, host: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host}))
    return path


def ended_pid() -> int:
    """The PID of a process that has already exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_lock_held_by_a_live_process_refuses_the_run(tmp_path):
    path = write_owner(tmp_path, os.getpid(), socket.gethostname())
    with pytest.raises(ConfigError) as info:
        take_lock(tmp_path)
    assert str(info.value) == (
        f"{tmp_path} is in use by the training run of PID {os.getpid()}; wait for it to end "
        f"or set hydra.run.dir to another folder (delete {path} if that run is gone)"
    )


def test_a_lock_held_on_another_machine_refuses_the_run(tmp_path):
    write_owner(tmp_path, 1, "elsewhere")
    with pytest.raises(ConfigError, match=r"in use by the training run of PID 1 on elsewhere;"):
        take_lock(tmp_path)


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    pid = ended_pid()
    path = write_owner(tmp_path, pid, socket.gethostname())
    assert take_lock(tmp_path) == path
    assert capsys.readouterr().out == (
        f"warning: {path} was held by PID {pid}, which has ended; taking it over\n"
    )
    assert json.loads(path.read_text())["pid"] == os.getpid()
    release_lock(path)
    assert not path.exists()


def test_the_lock_is_held_during_the_run_and_released_after(tmp_path):
    path = tmp_path / LOCK_NAME
    with run_lock(tmp_path):
        assert json.loads(path.read_text()) == {
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
    assert not path.exists()


def test_a_second_training_run_into_a_held_folder_is_one_line(
    data_root, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    path = write_owner(run_dir, os.getpid(), socket.gethostname())
    argv = tiny_overrides(
        data_root, run_dir, "trainer.fast_dev_run=true", f"hydra.run.dir={run_dir}"
    )
    code, stderr = run_main(train_command.main, argv, monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 1 and errors == [
        f"error: {run_dir} is in use by the training run of PID {os.getpid()}; wait for it to "
        f"end or set hydra.run.dir to another folder (delete {path} if that run is gone)"
    ]
    assert not (run_dir / "run_info.json").exists()
