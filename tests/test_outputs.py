"""Outputs written whole or not at all: the sample, evaluate, export and demo commands replace
the set of files in `out_dir` at once. A failure, SIGTERM or a kill at any write or rename
leaves the old set or the new one, never a mix; a second command into a held `out_dir`, a full
disk and bad inputs leave the old set byte-identical; the shipped models are replaced only
with `replace_shipped=true`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from ddpm_lightning import demo as demo_command
from ddpm_lightning import evaluate as evaluate_command
from ddpm_lightning import export as export_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning.config import compose_config
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.export import export
from ddpm_lightning.sample import sample
from ddpm_lightning.sharing import onnx, site
from ddpm_lightning.sharing.pretrained import SHIPPED_DIR, load_pretrained
from ddpm_lightning.training.outputs import recover, replacing
from ddpm_lightning.training.runlock import run_lock
from tests.conftest import (
    PYTHON,
    REPO_ROOT,
    cli_env,
    run_main,
    tiny_model_folder,
    writing_config,
)

CONDITIONAL_FILES = [
    "class_grid.png",
    "grid.png",
    "grid_large.png",
    "reverse.gif",
    "same_noise.png",
    "samples.npz",
]


class Killed(BaseException):
    """Stands for SIGKILL: no `except Exception` sees it, so no clean-up runs."""


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its path inside it, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def beside(folder: Path) -> list[str]:
    """What a command left beside `folder`: its lock, swaps in progress."""
    return sorted(path.name for path in folder.parent.glob(f".{folder.name}.*"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Model folders of an unconditional and a class-conditional tiny UNet."""
    root = tmp_path_factory.mktemp("models")
    return {
        "unconditional": tiny_model_folder(root / "unconditional"),
        "conditional": tiny_model_folder(root / "conditional", num_classes=10, seed=1),
    }


def sample_into(out_dir: Path, model: Path, *overrides: str) -> dict[str, Path]:
    """The sample command's files of 10 images of `model` (2 DDIM steps) in `out_dir`."""
    return sample(
        writing_config(
            "sample",
            out_dir,
            f"pretrained={model}",
            "sampler.num_steps=2",
            "num_samples=10",
            "gif_images=2",
            "same_noise_columns=1",
            *overrides,
        )
    )


def export_into(out_dir: Path, *overrides: str) -> dict[str, Path]:
    return export(
        compose_config(
            "export",
            [f"out_dir={out_dir}", f"paths.output_dir={out_dir}", "sampler.num_steps=2"]
            + ["num_samples=4", *overrides],
        )
    )


def refused_export(argv: list[str], tmp_path: Path, monkeypatch, capsys) -> list[str]:
    """The export command's stderr lines for `argv`, which it must refuse (exit 1)."""
    code, stderr = run_main(
        export_command.main, [*argv, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys
    )
    assert code == 1, stderr
    return stderr.strip().splitlines()


@pytest.mark.parametrize("name", CONDITIONAL_FILES)
def test_a_failure_mid_write_leaves_the_earlier_samples(models, tmp_path, monkeypatch, name):
    """The sample command stopped half-way through any one of its files: the earlier run's
    five files stay byte for byte, and nothing is left beside out_dir."""
    out = tmp_path / "out"
    sample_into(out, models["conditional"])
    before = snapshot(out)
    draw_outputs = sample_command.draw_outputs

    def failing_at_name(cfg):
        outputs = draw_outputs(cfg)
        write = outputs[name]

        def half_then_stop(path: Path) -> None:
            write(path)
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            raise Killed

        outputs[name] = half_then_stop
        return outputs

    monkeypatch.setattr(sample_command, "draw_outputs", failing_at_name)
    with pytest.raises(Killed):
        sample_into(out, models["conditional"], "seed=1")
    assert sorted(before) == CONDITIONAL_FILES
    assert snapshot(out) == before
    assert beside(out) == []


KILLED_SAMPLE = """
import sys, time
from pathlib import Path
from ddpm_lightning.evaluation.pictures import ReverseProcessRecorder
from tests.test_outputs import sample_into

def half_then_hang(self, path, final):
    path.write_bytes(b"GIF89a")
    print("writing reverse.gif", flush=True)
    time.sleep(120)

ReverseProcessRecorder.save_gif = half_then_hang
sample_into(Path(sys.argv[1]), Path(sys.argv[2]), "seed=1")
"""


def test_sigterm_while_writing_the_gif_leaves_the_earlier_samples(
    models, tmp_path, monkeypatch, capsys
):
    """SIGTERM while a sample command writes reverse.gif into an out_dir with an earlier run
    (here without a handler: the process ends at once): the earlier files stay byte for byte;
    while it runs, a second command into that out_dir is refused with one line naming its
    PID; the next run takes over its lock, removes what it left and writes a complete set."""
    out = tmp_path / "out"
    sample_into(out, models["unconditional"])
    before = snapshot(out)
    process = subprocess.Popen(
        [PYTHON, "-c", KILLED_SAMPLE, str(out), str(models["unconditional"])],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while (line := process.stdout.readline()) not in ("writing reverse.gif\n", ""):
            pass
        assert line, process.stderr.read()
        lock = out.parent / ".out.lock"
        code, stderr = run_main(
            sample_command.main,
            [
                f"pretrained={models['unconditional']}",
                f"out_dir={out}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],
            monkeypatch,
            capsys,
        )
        assert code == 1 and stderr.strip().splitlines() == [
            f"error: out_dir={out} is in use by the sample command of PID {process.pid}; wait "
            f"for it to end or pass another out_dir (delete {lock} if that command is gone)"
        ]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        process.kill()
    assert snapshot(out) == before
    assert {name.split("-")[0] for name in beside(out)} <= {".out.lock", ".out.new"}
    files = sample_into(out, models["unconditional"], "seed=2")
    assert sorted(snapshot(out)) == sorted(files)
    assert sorted(files) == ["grid.png", "grid_large.png", "reverse.gif", "samples.npz"]
    assert snapshot(out)["samples.npz"] != before["samples.npz"]
    assert beside(out) == []


OLD = {"a.txt": b"old a", "b.txt": b"old b"}
NEW = {"a.txt": b"new a", "c.txt": b"new c"}
NAMES = ("a.txt", "b.txt", "c.txt")


def the_set(folder: Path) -> dict[str, bytes] | None:
    """The entries of NAMES in `folder` with their bytes; None when the folder is missing."""
    if not folder.exists():
        return None
    return {name: (folder / name).read_bytes() for name in NAMES if (folder / name).exists()}


def write_set(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("failure", [Killed, OSError], ids=["killed", "error"])
@pytest.mark.parametrize("at", range(1, 6), ids=lambda at: f"rename {at}")
@pytest.mark.parametrize("shared", [False, True], ids=["own folder", "shared folder"])
def test_a_stop_at_any_rename_leaves_the_old_set_or_the_new(
    tmp_path, monkeypatch, shared, at, failure
):
    """An error at each rename of the swap: the folder holds the old set or the new one at
    once, nothing beside it. A kill (SIGKILL; SIGTERM waits for the swap): an own folder holds
    the old set, the new one or, between its two renames, is missing; a shared folder, whose
    entries move one by one, may hold part of each; the next command into it recovers exactly
    one of them. Other files of a shared folder stay."""
    folder = tmp_path / "out"
    write_set(folder, OLD)
    if shared:
        (folder / "notes.txt").write_bytes(b"mine")
    rename, calls = os.rename, []

    def stopping_rename(source, target):
        calls.append(target)
        if len(calls) == at:
            raise failure("stopped here")
        rename(source, target)

    monkeypatch.setattr(os, "rename", stopping_rename)
    try:
        with replacing(folder, NAMES) as new:
            write_set(new, NEW)
    except (Killed, OSError):
        pass
    monkeypatch.undo()
    if failure is Killed:
        assert shared or the_set(folder) in (OLD, NEW, None)
        recover(folder)
    assert the_set(folder) in (OLD, NEW)
    assert beside(folder) == []
    assert not shared or (folder / "notes.txt").read_bytes() == b"mine"


def test_sigterm_during_a_swap_acts_once_the_new_set_is_in(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    write_set(folder, OLD)
    seen: list[dict[str, bytes] | None] = []
    rename, sent = os.rename, []

    def rename_after_sigterm(source, target):
        if not sent:
            sent.append(os.kill(os.getpid(), signal.SIGTERM))
        rename(source, target)

    monkeypatch.setattr(os, "rename", rename_after_sigterm)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(the_set(folder)))
    try:
        with replacing(folder, NAMES) as new:
            write_set(new, NEW)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent and seen == [NEW]


@pytest.mark.parametrize(
    ("main", "args"),
    [
        (sample_command.main, ["pretrained=never_read"]),
        (evaluate_command.main, ["samples=never_read.npz"]),
        (export_command.main, ["ckpt_path=never_read.ckpt"]),
        (export_command.main, ["ckpt_path=never_read.ckpt", "format=onnx"]),
        (demo_command.main, ["models=[never_read]", "serve=false"]),
    ],
    ids=["sample", "evaluate", "export", "export onnx", "demo"],
)
def test_a_second_command_into_a_held_out_dir_is_one_line(
    main, args, tmp_path, monkeypatch, capsys
):
    if main is demo_command.main or "format=onnx" in args:
        pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid.png").write_bytes(b"earlier")
    with run_lock(out, "sample") as lock:
        assert json.loads(lock.read_text())["command"] == "sample"
        argv = [*args, f"out_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"]
        code, stderr = run_main(main, argv, monkeypatch, capsys)
    assert code == 1 and stderr.strip().splitlines() == [
        f"error: out_dir={out} is in use by the sample command of PID {os.getpid()}; wait for "
        f"it to end or pass another out_dir (delete {lock} if that command is gone)"
    ]
    assert snapshot(out) == {"grid.png": b"earlier"}
    assert beside(out) == []


def test_a_full_disk_keeps_the_old_model_folder_and_is_one_line(
    models, small_disk, tmp_path, monkeypatch, capsys
):
    out = small_disk / "model"
    export_into(out, f"pretrained={models['unconditional']}")
    before = snapshot(out)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - 64 * 2**10))
    argv = [f"pretrained={models['conditional']}", f"out_dir={out}", "sampler.num_steps=2"]
    assert refused_export(argv, tmp_path, monkeypatch, capsys) == [
        f"error: no space left to write the new files of {out}; free space on its disk or "
        "pass another out_dir (the files it holds are unchanged)"
    ]
    assert snapshot(out) == before
    assert load_pretrained(out).num_classes is None
    assert beside(out) == []


def test_a_mount_point_out_dir_is_one_line(small_disk, tmp_path, monkeypatch, capsys):
    argv = ["ckpt_path=never_read.ckpt", f"out_dir={small_disk}", f"hydra.run.dir={tmp_path}/r"]
    code, stderr = run_main(export_command.main, argv, monkeypatch, capsys)
    assert code == 1 and stderr.strip().splitlines() == [
        f"error: out_dir={small_disk} is a mount point, and outputs are written beside their "
        "folder and renamed into it, which cannot cross disks; write into a folder inside it, "
        f"e.g. {small_disk / 'outputs'}"
    ]


@pytest.fixture
def bad_inputs(models, tmp_path) -> dict[str, Path]:
    """A checkpoint whose weights miss a tensor, a file that is no checkpoint, a metrics.json
    with a FLD that is no number and a record whose overrides are no list."""
    module = load_pretrained(models["unconditional"])
    state_dict = module.state_dict()
    state_dict.pop(sorted(state_dict)[0])
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": state_dict}
    torch.save(checkpoint, tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"no checkpoint")
    (tmp_path / "metrics.json").write_text(json.dumps({"fld": "abc", "seed": 0}))
    (tmp_path / "record.json").write_text(json.dumps({"train_overrides": "data=mnist"}))
    return {
        "missing": tmp_path / "missing.ckpt",
        "junk": tmp_path / "junk.ckpt",
        "metrics": tmp_path / "metrics.json",
        "record": tmp_path / "record.json",
    }


BAD_EXPORTS = [
    (["ckpt_path={missing}"], "ckpt_path={missing}: ", "1 missing ("),
    (["ckpt_path={junk}"], "ckpt_path={junk} is not a loadable checkpoint", ""),
    (
        ["pretrained={model}", "metrics={metrics}"],
        'metrics={metrics}: fld is "abc", not a finite number; fix it or leave it out',
        "",
    ),
    (
        ["pretrained={model}", "record={record}"],
        'record={record}: train_overrides is "data=mnist", not a list of overrides',
        "",
    ),
    (["pretrained={model}", "metrics={model}/none.json"], "metrics={model}/none.json is not", ""),
]


@pytest.mark.parametrize(("args", "start", "inside"), BAD_EXPORTS)
def test_a_bad_export_leaves_the_good_folder_byte_identical(
    models, bad_inputs, tmp_path, monkeypatch, capsys, args, start, inside
):
    """A checkpoint whose weights do not fit its settings or that is no checkpoint, a bad
    metrics= or record=: one line naming it, before anything is written."""
    out = tmp_path / "good"
    export_into(out, f"pretrained={models['conditional']}")
    before = snapshot(out)
    names = {**bad_inputs, "model": models["unconditional"]}
    argv = [arg.format(**names) for arg in args]
    (line,) = refused_export([*argv, f"out_dir={out}"], tmp_path, monkeypatch, capsys)
    assert line.startswith(f"error: {start.format(**names)}") and inside in line
    assert snapshot(out) == before
    assert beside(out) == []


def test_a_shared_out_dir_keeps_its_other_files_and_drops_the_old_sets_rest(models, tmp_path):
    """Into a folder that holds other files (a run folder's .hydra/, a note), a second run
    replaces the whole set: the conditional run's class_grid.png and same_noise.png go."""
    out = tmp_path / "out"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (out / "notes.txt").write_text("mine")
    sample_into(out, models["conditional"])
    files = sample_into(out, models["unconditional"])
    assert sorted(snapshot(out)) == sorted(
        [".hydra/config.yaml", "notes.txt", *(name for name in files)]
    )
    assert (out / "notes.txt").read_text() == "mine"
    assert beside(out) == []


def test_a_failure_mid_write_leaves_the_earlier_metrics(models, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    samples = sample_into(tmp_path / "samples", models["unconditional"])["samples.npz"]
    evaluate(writing_config("evaluate", out, f"samples={samples}"))
    before = snapshot(out)

    def half_then_stop(metrics, path):
        path.write_bytes(b"\x89PNG")
        raise Killed

    monkeypatch.setattr(evaluate_command, "save_histograms", half_then_stop)
    with pytest.raises(Killed):
        evaluate(writing_config("evaluate", out, f"samples={samples}"))
    assert sorted(before) == sorted(
        set(evaluate_command.EVALUATE_FILES) - {"memorisation.png", "off_class.png"}
    )
    assert snapshot(out) == before
    assert beside(out) == []


def test_a_failure_mid_write_leaves_the_earlier_onnx_pair(models, tmp_path, monkeypatch):
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    out = tmp_path / "onnx"

    def stand_in(module, path):
        path.write_bytes(b"onnx of the first model")

    monkeypatch.setattr(onnx, "write_network", stand_in)
    export_into(out, f"pretrained={models['unconditional']}", "format=onnx")
    before = snapshot(out)

    def half_then_stop(module, path):
        path.write_bytes(b"onnx of")
        raise Killed

    monkeypatch.setattr(onnx, "write_network", half_then_stop)
    with pytest.raises(Killed):
        export_into(out, f"pretrained={models['conditional']}", "format=onnx")
    assert sorted(before) == ["model.json", "model.onnx"]
    assert snapshot(out) == before
    assert beside(out) == []


def test_a_failure_mid_build_leaves_the_earlier_site(models, tmp_path, monkeypatch):
    runtime = tmp_path / "ort.wasm"
    runtime.write_bytes(b"stand-in runtime")
    sampler = {"name": "ddim", "num_steps": 2}

    def stand_in(out_dir, module, sampler, option):
        out_dir.mkdir(parents=True)
        (out_dir / "model.onnx").write_bytes(b"onnx")

    monkeypatch.setattr(site, "write_onnx", stand_in)
    folder = tmp_path / "site"
    site.build_site(folder, [str(models["unconditional"])], sampler, {"ort.wasm": runtime})
    before = snapshot(folder)

    def half_then_stop(out_dir, module, sampler, option):
        out_dir.mkdir(parents=True)
        (out_dir / "model.onnx").write_bytes(b"on")
        raise Killed

    monkeypatch.setattr(site, "write_onnx", half_then_stop)
    with pytest.raises(Killed):
        site.build_site(folder, [str(models["conditional"])], sampler, {"ort.wasm": runtime})
    assert "models/unconditional/model.onnx" in before and "ort/ort.wasm" in before
    assert snapshot(folder) == before
    assert beside(folder) == []


def test_the_shipped_models_are_replaced_only_with_replace_shipped(
    models, tmp_path, monkeypatch, capsys
):
    """Into the package's own mnist folder: one line, before any byte is written there; into
    a shipped folder with replace_shipped=true: the new model."""
    target = SHIPPED_DIR / "mnist"
    before, entries = snapshot(SHIPPED_DIR), sorted(os.listdir(SHIPPED_DIR.parent))
    argv = [f"pretrained={models['conditional']}", f"out_dir={target}"]
    assert refused_export(argv, tmp_path, monkeypatch, capsys) == [
        f"error: out_dir={target} is in {SHIPPED_DIR}, the shipped models that pretrained=NAME "
        "loads; pass replace_shipped=true to replace one, or pick another out_dir"
    ]
    assert snapshot(SHIPPED_DIR) == before
    assert sorted(os.listdir(SHIPPED_DIR.parent)) == entries
    shipped = tmp_path / "shipped"
    shutil.copytree(models["unconditional"], shipped / "mnist")
    monkeypatch.setattr(export_command, "SHIPPED_DIR", shipped)
    with pytest.raises(ConfigError, match="pass replace_shipped=true to replace one"):
        export_into(shipped / "mnist", f"pretrained={models['conditional']}")
    assert load_pretrained(shipped / "mnist").num_classes is None
    export_into(shipped / "mnist", f"pretrained={models['conditional']}", "replace_shipped=true")
    assert load_pretrained(shipped / "mnist").num_classes == 10


def test_an_export_from_a_checkpoint_replaces_the_folder(models, tmp_path):
    """The checkpoint path checks the weights before writing, and still exports a good one."""
    module = load_pretrained(models["conditional"])
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save(checkpoint, tmp_path / "good.ckpt")
    out = tmp_path / "model"
    export_into(out, f"pretrained={models['unconditional']}")
    export_into(out, f"ckpt_path={tmp_path / 'good.ckpt'}", "samples=false")
    assert sorted(snapshot(out)) == ["README.md", "config.json", "model.safetensors"]
    exported, expected = load_pretrained(out).state_dict(), module.state_dict()
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[key], expected[key]) for key in expected)
