import errno
import io
import json
import os
import pickle
import signal
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from ddpm_lightning import evaluate as evaluate_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning import train as train_command
from ddpm_lightning.config import compose_config
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.train import train
from ddpm_lightning.training import checkpoints
from ddpm_lightning.training.checkpoints import AtomicCheckpointIO, read_checkpoint, temp_files
from ddpm_lightning.training.module import NonFiniteLossError
from ddpm_lightning.training.safety import check_resume_checkpoint, find_last_checkpoint
from tests.conftest import (
    PYTHON,
    REPO_ROOT,
    SHORT_RUN,
    cli_env,
    run_main,
    tiny_config,
    tiny_overrides,
)

SHORT = SHORT_RUN


def evil_checkpoint(path: Path, marker: Path) -> Path:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"state_dict": Evil()}))
    return path


TRAIN_ROWS = [
    (["model.block_groups=5"], "model.block_groups"),
    (["model.num_attention_heads=3"], "model.num_attention_heads"),
    (["data.pad=0", "model.channel_multipliers=[1,2,2,2]"], "model.channel_multipliers"),
    (["schedule.num_timesteps=1"], "schedule.num_timesteps"),
    (["data.batch_size=0"], "data.batch_size"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["optimizer.lr=0"], "optimizer.lr"),
    (["data.root={tmp}/nowhere"], "DDPM_DATA_DIR"),
    (["ckpt_path={tmp}/missing.ckpt"], "missing.ckpt"),
    (["ckpt_path={junk}"], "junk.ckpt"),
    (["ckpt_path={trained}", "model.model_channels=16"], "model.model_channels (8 in the"),
    (["ckpt_path=last"], "no checkpoints/last.ckpt"),
]


@pytest.mark.parametrize(("overrides", "names"), TRAIN_ROWS)
def test_train_bad_input_is_one_line(
    data_root, tmp_path, trained, monkeypatch, capsys, overrides, names
):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"\x00" * 100)
    fill = {"tmp": tmp_path, "junk": junk, "trained": trained}
    argv = tiny_overrides(
        data_root,
        tmp_path / "run",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.log_dir={tmp_path / 'empty_logs'}",
        *[o.format(**fill) for o in overrides],
    )
    code, stderr = run_main(train_command.main, argv, monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, stderr[-2000:]
    assert names in errors[0]


def test_corrupt_idx_file_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    path = data_root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:50])
    argv = tiny_overrides(
        data_root, tmp_path, "trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path}"
    )
    code, stderr = run_main(train_command.main, argv, monkeypatch, capsys)
    assert code == 1 and f"error: {path}: truncated or corrupt IDX file" in stderr


def test_unknown_option_is_hydras_message(monkeypatch, capsys, tmp_path):
    code, stderr = run_main(
        train_command.main, ["model.colour=red", f"hydra.run.dir={tmp_path}"], monkeypatch, capsys
    )
    assert code == 1 and "model.colour" in stderr and "Traceback" not in stderr


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["sampler.num_steps=0"], "sampler.num_steps=0"),
        (["sampler.spacing=cubic"], "sampler.spacing"),
        (["num_samples=0"], "num_samples"),
        (["labels=[1,2]", "sampler.num_steps=2"], "labels=[1, 2] needs a conditional checkpoint"),
        (["labels=all", "sampler.num_steps=2"], "labels=all needs a conditional checkpoint"),
        (
            ["sampler.guidance_scale=3", "sampler.num_steps=2"],
            "sampler.guidance_scale=3.0 needs a conditional",
        ),
    ],
)
def test_sample_bad_input_is_one_line(trained, tmp_path, monkeypatch, capsys, overrides, names):
    argv = [f"ckpt_path={trained}", f"hydra.run.dir={tmp_path / 's'}", *overrides]
    code, stderr = run_main(sample_command.main, argv, monkeypatch, capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1 and names in errors[0], stderr[-2000:]


@pytest.mark.parametrize("command", ["sample", "evaluate", "train"])
def test_crafted_pickle_is_refused_not_run(data_root, tmp_path, monkeypatch, capsys, command):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    main = {
        "sample": sample_command.main,
        "evaluate": evaluate_command.main,
        "train": train_command.main,
    }[command]
    argv = [f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'r'}"]
    if command == "train":
        argv = tiny_overrides(data_root, tmp_path / "r", "trainer.fast_dev_run=true", *argv)
    code, stderr = run_main(main, argv, monkeypatch, capsys)
    assert code == 1 and "is not a loadable checkpoint" in stderr
    assert not marker.exists(), "the pickle's code must never run"


def test_exploding_learning_rate_stops_and_keeps_good_checkpoints(data_root, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "optimizer.lr=1e30",
        "trainer.max_epochs=20",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss .* at step \d+"):
        train(cfg)
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), path


def test_a_crash_mid_epoch_saves_the_steps_taken_and_resume_continues(
    data_root, tmp_path, monkeypatch
):
    """An error at step 4 of an epoch with no validation yet: last.ckpt holds those 4 steps."""
    from ddpm_lightning.training.module import DiffusionModule

    step = DiffusionModule.training_step

    def failing_step(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("a failing step")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(DiffusionModule, "training_step", failing_step)
    first = tmp_path / "first"
    with pytest.raises(RuntimeError, match="a failing step"):
        train(tiny_config(data_root, first, "trainer.max_epochs=1", "test=false"))
    last = first / "checkpoints" / "last.ckpt"
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["global_step"] == 4

    monkeypatch.setattr(DiffusionModule, "training_step", step)
    resumed = tiny_config(
        data_root, tmp_path / "resumed", f"ckpt_path={last}", "trainer.max_steps=6", "test=false"
    )
    train(resumed)
    saved = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == 6


def test_a_crash_before_the_first_step_saves_nothing(data_root, tmp_path, monkeypatch):
    from ddpm_lightning.training.module import DiffusionModule

    def failing_step(self, batch, batch_idx):
        raise RuntimeError("a failing step")

    monkeypatch.setattr(DiffusionModule, "training_step", failing_step)
    with pytest.raises(RuntimeError, match="a failing step"):
        train(tiny_config(data_root, tmp_path, "trainer.max_epochs=1", "test=false"))
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


class HalfWrites:
    """A file whose first `write` stores half of its data, then fails as a dying disk would."""

    def __init__(self, path, mode):
        self.file = io.FileIO(path, mode)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self.file.__exit__(*exc_info)

    def write(self, data):
        self.file.write(data[: len(data) // 2])
        raise OSError(errno.EIO, "Input/output error")


def copy_of(trained: Path, folder: Path) -> tuple[Path, dict]:
    """A copy of the 3-step checkpoint in `folder`, and its content with global_step 999 and
    1 MiB of padding: the newer state a save would write."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "last.ckpt"
    target.write_bytes(trained.read_bytes())
    newer = torch.load(target, weights_only=True)
    newer["global_step"] = 999
    newer["padding"] = torch.zeros(2**18)
    return target, newer


def test_interrupted_save_leaves_last_checkpoint_intact(trained, tmp_path, monkeypatch):
    """A write failing half-way: the old file is untouched, no temporary file anywhere."""
    target, newer = copy_of(trained, tmp_path / "checkpoints")
    before = target.read_bytes()
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    monkeypatch.setattr(checkpoints, "open", HalfWrites, raising=False)
    with pytest.raises(OSError, match="Input/output error"):
        AtomicCheckpointIO().save_checkpoint(newer, target)
    assert target.read_bytes() == before
    assert torch.load(target, weights_only=True)["global_step"] == 3
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    assert list(system_tmp.iterdir()) == []


def test_training_saves_through_the_atomic_checkpoint_io(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path)
    trainer = instantiate(cfg.trainer)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_full_disk_keeps_the_old_checkpoint_and_names_the_folder(trained, small_disk):
    target, newer = copy_of(trained, small_disk)  # 0.75 MiB of 1 MiB, the new one is 1.75 MiB
    with pytest.raises(DataError) as error:
        AtomicCheckpointIO().save_checkpoint(newer, target)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"no space left in {small_disk} to write last.ckpt (1.8 MiB)")
    assert "paths.log_dir" in message
    assert torch.load(target, weights_only=True)["global_step"] == 3
    assert [p.name for p in small_disk.iterdir()] == ["last.ckpt"]


KILLED_SAVE = """
import sys, time
import torch
import ddpm_lightning.training.checkpoints as checkpoints
from tests.test_reliability import HalfWrites

class HalfThenHang(HalfWrites):
    def write(self, data):
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        print("half written", flush=True)
        time.sleep(120)

checkpoints.open = HalfThenHang
newer = torch.load(sys.argv[1], weights_only=True)
newer["padding"] = torch.zeros(2**20)
checkpoints.AtomicCheckpointIO().save_checkpoint(newer, sys.argv[1])
"""


def test_killed_save_leaves_the_old_checkpoint_and_a_temp_file_beside_it(trained, tmp_path):
    """SIGKILL mid-write: the old file is intact, the only leftover is a temporary file in the
    same folder (none in $TMPDIR), and the next save removes it."""
    target, newer = copy_of(trained, tmp_path / "checkpoints")
    before = target.read_bytes()
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    process = subprocess.Popen(
        [PYTHON, "-c", KILLED_SAVE, str(target)],
        cwd=REPO_ROOT,
        env={**cli_env(), "TMPDIR": str(system_tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line == "half written\n", process.stderr.read()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert target.read_bytes() == before
    (leftover,) = temp_files(target)
    with pytest.raises(RuntimeError, match="zip archive"):
        torch.load(leftover, weights_only=True)  # half a file
    assert list(system_tmp.iterdir()) == []
    AtomicCheckpointIO().save_checkpoint(newer, target)
    assert temp_files(target) == []
    assert torch.load(target, weights_only=True)["global_step"] == 999


@pytest.mark.parametrize(
    ("signum", "exit_code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 1)]
)
def test_interrupt_saves_a_checkpoint_and_resume_continues(data_root, tmp_path, signum, exit_code):
    """SIGTERM (a cluster's pre-emption) or Ctrl-C mid-training: last.ckpt, then resume."""
    logs = tmp_path / "logs"
    common = tiny_overrides(
        data_root,
        tmp_path / "unused",
        "trainer.max_epochs=1000",
        "+trainer.limit_val_batches=1",
        f"paths.log_dir={logs}",
    )
    common = [o for o in common if not o.startswith("paths.output_dir")]
    process = subprocess.Popen(
        [PYTHON, "-m", "ddpm_lightning.train", *common],
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell starting this suite in the background ignores SIGINT, and Python then keeps
        # it ignored: give the child the default action, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while not list(logs.glob("train/runs/*/checkpoints/epoch_*.ckpt")):
        assert process.poll() is None and time.time() < deadline, process.stderr.read()[-2000:]
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == exit_code, stderr[-2000:]
    assert "interrupted at step" in stderr
    (last,) = logs.glob("train/runs/*/checkpoints/last.ckpt")
    stopped_at = torch.load(last, weights_only=True)["global_step"]
    assert stopped_at >= 6, "at least one whole epoch of 6 steps"

    resumed = tmp_path / "resumed"
    cfg = compose_config(
        "train",
        [
            *common,
            "ckpt_path=last",
            f"paths.output_dir={resumed}",
            f"trainer.max_steps={stopped_at + 3}",
        ],
    )
    train(cfg)
    final = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == stopped_at + 3


def fake_run(logs: Path, name: str, checkpoint: Path, age: int, config: str | None = None) -> Path:
    """logs/train/runs/<name>/checkpoints/last.ckpt, a copy of `checkpoint` written `age`
    seconds ago, with `config` as the run's .hydra/config.yaml."""
    run = logs / "train" / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    target = run / "checkpoints" / "last.ckpt"
    target.write_bytes(checkpoint.read_bytes())
    if config is not None:
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(config)
    os.utime(target, (time.time() - age, time.time() - age))
    return target


def incompatible_runs(logs: Path, trained: Path, tmp_path: Path) -> None:
    """Three runs newer than any good one: a smoke test, another task_name, a wider UNet."""
    fake_run(logs, "smoke", trained, 300, "task_name: train\ntrainer:\n  fast_dev_run: true\n")
    fake_run(logs, "other_task", trained, 200, "task_name: sinai\n")
    wider = torch.load(trained, weights_only=True)
    wider["hyper_parameters"]["model"]["model_channels"] = 16
    torch.save(wider, tmp_path / "wider.ckpt")
    fake_run(logs, "wider", tmp_path / "wider.ckpt", 100, "task_name: train\n")


def test_ckpt_path_last_picks_the_newest_compatible_run(trained, tmp_path, capsys):
    logs = tmp_path / "logs"
    good = fake_run(logs, "good", trained, 400, "task_name: train\n")
    incompatible_runs(logs, trained, tmp_path)
    hparams = read_checkpoint(trained)["hyper_parameters"]
    assert find_last_checkpoint(logs / "train", "train", hparams) == good
    assert capsys.readouterr().out == (
        f"ckpt_path=last: using {good} (skipped 3 newer: wider: different "
        "model.model_channels; other_task: task_name=sinai; smoke: a fast_dev_run smoke test)\n"
    )
    any_model = find_last_checkpoint(logs / "train", "train")
    assert any_model == logs / "train" / "runs" / "wider" / "checkpoints" / "last.ckpt"


def test_ckpt_path_last_with_only_incompatible_runs_is_one_line(trained, tmp_path):
    logs = tmp_path / "logs"
    incompatible_runs(logs, trained, tmp_path)
    hparams = read_checkpoint(trained)["hyper_parameters"]
    with pytest.raises(ConfigError) as error:
        find_last_checkpoint(logs / "train", "train", hparams)
    assert str(error.value) == (
        f"ckpt_path=last: none of the 3 checkpoints/last.ckpt under {logs / 'train'} fits "
        "(wider: different model.model_channels; other_task: task_name=sinai; "
        "smoke: a fast_dev_run smoke test); pass ckpt_path=PATH to a .ckpt file"
    )


def test_train_ckpt_path_last_resumes_the_compatible_run(data_root, trained, tmp_path, capsys):
    logs = tmp_path / "logs"
    good = fake_run(logs, "good", trained, 400)
    incompatible_runs(logs, trained, tmp_path)
    out = tmp_path / "resumed"
    overrides = [*SHORT, "trainer.max_epochs=2", "ckpt_path=last", f"paths.log_dir={logs}"]
    train(tiny_config(data_root, out, *overrides))
    assert f"ckpt_path=last: using {good} (skipped 3 newer:" in capsys.readouterr().out
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_sample_and_evaluate_understand_ckpt_path_last(trained, tmp_path, capsys, command):
    """The newest last.ckpt under logs/train that no smoke test wrote."""
    logs = tmp_path / "logs"
    good = fake_run(logs, "good", trained, 400, "task_name: train\n")
    fake_run(logs, "smoke", trained, 300, "task_name: train\ntrainer:\n  fast_dev_run: true\n")
    cfg = compose_config(
        command,
        [
            "ckpt_path=last",
            f"paths.log_dir={logs}",
            f"paths.output_dir={tmp_path / 'out'}",
            f"out_dir={tmp_path / 'out'}",
            "num_samples=4",
            "sampler.num_steps=2",
        ],
    )
    {"sample": sample_command.sample, "evaluate": evaluate_command.evaluate}[command](cfg)
    assert capsys.readouterr().out.splitlines()[1] == (
        f"ckpt_path=last: using {good} (skipped 1 newer: smoke: a fast_dev_run smoke test)"
    )


def test_same_seed_same_losses_and_weights(data_root, tmp_path):
    def run(name):
        out = tmp_path / name
        train(
            tiny_config(
                data_root,
                out,
                "trainer.max_epochs=9",
                "trainer.log_every_n_steps=1",
                "+trainer.limit_val_batches=1",
                "seed=3",
            )
        )
        lines = (out / "csv" / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        column = header.index("train/loss")
        losses = [row.split(",")[column] for row in lines[1:] if row.split(",")[column]]
        return losses, torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)

    losses_a, ckpt_a = run("a")
    losses_b, ckpt_b = run("b")
    assert len(losses_a) >= 50 and losses_a[:50] == losses_b[:50]
    for key, value in ckpt_a["state_dict"].items():
        assert torch.equal(value, ckpt_b["state_dict"][key]), key


def test_run_folder_records_config_command_versions_and_commit(trained):
    run = trained.parent.parent
    info = json.loads((run / "run_info.json").read_text())
    assert info["versions"]["torch"] == version("torch")
    assert {"lightning", "hydra-core", "ddpm_lightning"} <= set(info["versions"])
    assert info["command"]
    git_dir = Path(__file__).resolve().parents[1] / ".git"
    if git_dir.exists():
        assert len(info["git"]["commit"]) == 40


@pytest.mark.slow
def test_soak_resident_memory_is_flat(data_root, tmp_path):
    """20 short epochs with the FLD and sample-grid callbacks (and EMA) on: RSS after epoch 20
    within 10% of epoch 2."""
    import lightning as L

    rss: list[int] = []

    class RecordRSS(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            rss.append(pages * os.sysconf("SC_PAGE_SIZE"))

    cfg = tiny_config(data_root, tmp_path, "trainer.max_epochs=20", "+trainer.limit_val_batches=1")
    defaults = compose_config("train", [f"paths.output_dir={tmp_path}"]).callbacks
    cfg.callbacks.fld, cfg.callbacks.sample_grid = defaults.fld, defaults.sample_grid
    cfg.callbacks.fld.num_samples = 64
    cfg.callbacks.fld.every_n_epochs = 1
    cfg.callbacks.fld.sampler.num_steps = 5
    cfg.callbacks.sample_grid.num_samples = 16
    cfg.callbacks.sample_grid.sampler.num_steps = 5
    train(cfg, extra_callbacks=[RecordRSS()])
    assert len(rss) == 20
    assert len(list((tmp_path / "samples").glob("epoch_*.png"))) == 20
    assert rss[19] <= rss[1] * 1.10, [r // 2**20 for r in rss]
    assert np.isfinite(rss[19])


def test_resume_check_allows_training_only_settings(tmp_path):
    """The label-dropout rate may change on resume, or be absent from an older checkpoint;
    the model, schedule and objective may not."""
    hparams = {
        "model": {"model_channels": 8},
        "schedule": {"num_timesteps": 20},
        "diffusion": {"objective": "eps", "p_uncond": 0.1},
        "data_shape": [1, 32, 32],
    }
    older = {**hparams, "diffusion": {"objective": "eps"}}
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": older, "state_dict": {}}, path)
    check_resume_checkpoint(path, hparams)
    check_resume_checkpoint(path, {**hparams, "diffusion": {"objective": "eps", "p_uncond": 0.3}})
    with pytest.raises(ConfigError, match=r"diffusion.objective \('eps' in the checkpoint"):
        check_resume_checkpoint(path, {**hparams, "diffusion": {"objective": "v"}})
