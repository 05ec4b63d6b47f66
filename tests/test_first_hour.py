"""What a new user sees first: each FLD beside its number of samples, sample pictures large
enough to see and a labelled reverse-process GIF, no run folders left by runs that never
trained, every command naming the folder it writes to and keeping what it printed in its log
file, Lightning's notices only on request, and a test pass that says what it does."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image, ImageSequence

from ddpm_lightning import demo as demo_command
from ddpm_lightning import evaluate as evaluate_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning import train as train_command
from ddpm_lightning.config import compose_config
from ddpm_lightning.config.compose import Screen
from ddpm_lightning.evaluate import (
    REFERENCE_SAMPLES,
    evaluate,
    print_table,
    shipped_evaluation,
)
from ddpm_lightning.evaluation.fld import load_record
from ddpm_lightning.evaluation.pictures import LABEL_HEIGHT
from ddpm_lightning.export import export
from ddpm_lightning.sample import sample
from ddpm_lightning.sharing.folder import load_folder
from ddpm_lightning.sharing.pretrained import SHIPPED_DIR, shipped
from tests.conftest import (
    SHORT_RUN,
    run_command,
    tiny_model_folder,
    tiny_overrides,
    writing_config,
)

SAMPLING = ["sampler.num_steps=2", "num_samples=8"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A model folder of a tiny unconditional UNet on MNIST-shaped images."""
    return tiny_model_folder(tmp_path_factory.mktemp("model") / "tiny")


def table_line(printed: str, label: str) -> str:
    """The one line of the printed table that holds `label`."""
    (line,) = [line for line in printed.splitlines() if label in line]
    return line


# --- Every FLD beside its number of samples ------------------------------------------------------


def test_evaluate_prints_the_samples_beside_each_fld_and_a_note_below_10000(
    model, tmp_path, capsys
):
    metrics = evaluate(
        writing_config("evaluate", tmp_path / "eval", f"pretrained={model}", *SAMPLING)
    )
    printed = capsys.readouterr().out
    assert metrics["num_samples"] == 8
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_samples"] == 8
    fld_row = table_line(printed, "FLD (LeNet-5")
    assert f"{metrics['fld']:.4f}" in fld_row and fld_row.rstrip("│ ").endswith(" 8")
    for name, count in REFERENCE_SAMPLES.items():
        row = table_line(printed, f"reference FLD: {name.replace('_', ' ')}")
        assert row.rstrip("│ ").endswith(f"{count:,}")
    assert set(REFERENCE_SAMPLES) == set(load_record("mnist")["reference_fld"])
    note = printed.splitlines()[-2]
    assert note.startswith("note: FLD falls as the number of samples grows")
    assert "8-sample FLD" in note and "10,000-sample figures" in note
    assert "FLD of shipped" not in printed, "a model folder of one's own is no shipped model"


def test_no_note_at_10000_samples(capsys):
    metrics = {
        "dataset": "mnist",
        "lenet": "42b7f565b580 (shipped)",
        "num_samples": 10_000,
        "fld": 2.5,
        "mean_confidence": 0.9,
        "mean_min_distance_to_class_means": 9.0,
        "label_counts": [1000] * 10,
    }
    print_table(metrics, {})
    printed = capsys.readouterr().out
    assert table_line(printed, "FLD (LeNet-5").rstrip("│ ").endswith("10,000")
    assert "note:" not in printed


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "mnist_cond"])
def test_the_shipped_models_fld_is_read_from_its_config_json(name):
    recorded = json.loads((SHIPPED_DIR / name / "config.json").read_text())["evaluation"]
    assert name in shipped()
    record = shipped_evaluation(name)
    assert record is not None
    assert (record["fld"], record["num_samples"]) == (recorded["fld"], recorded["num_samples"])


def test_evaluate_of_a_shipped_name_quotes_the_fld_its_folder_records(
    model, tmp_path, monkeypatch, capsys
):
    """A tiny copy stands in for the shipped `mnist`: the table quotes the FLD, sampler and
    number of samples of its config.json, whatever they are."""
    shipped_dir = tmp_path / "models"
    copy = tiny_model_folder(shipped_dir / "mnist")
    config = json.loads((copy / "config.json").read_text())
    config["evaluation"] = {
        "fld": 3.14159,
        "num_samples": 10_000,
        "sampler": {"name": "ddim", "num_steps": 50},
    }
    (copy / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(evaluate_command, "SHIPPED_DIR", shipped_dir)
    monkeypatch.setattr(evaluate_command, "shipped", lambda: ["mnist"])
    monkeypatch.setattr(
        evaluate_command, "load_model", lambda ckpt_path, pretrained: load_folder(copy)
    )
    metrics = evaluate(writing_config("evaluate", tmp_path / "eval", "pretrained=mnist", *SAMPLING))
    assert metrics["pretrained"] == "mnist"
    row = table_line(capsys.readouterr().out, "FLD of shipped mnist (ddim-50)")
    assert "3.1416" in row and row.rstrip("│ ").endswith("10,000")


# --- Pictures one can see ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampled(model, tmp_path_factory) -> dict[str, Path]:
    """The sample command's files for 10 images (3 DDIM steps, 4 in the GIF)."""
    out = tmp_path_factory.mktemp("samples")
    return sample(
        writing_config(
            "sample",
            out,
            f"pretrained={model}",
            "sampler.num_steps=3",
            "num_samples=10",
            "gif_images=4",
        )
    )


def test_grid_large_is_grid_png_with_every_pixel_doubled(sampled):
    grid = np.asarray(Image.open(sampled["grid.png"]))
    large = np.asarray(Image.open(sampled["grid_large.png"]))
    # 4 × 3 tiles of 32 px with make_grid's 2 px padding, each image then 64 px wide.
    assert grid.shape[:2] == (3 * 34 + 2, 4 * 34 + 2)
    assert large.shape[:2] == (2 * (3 * 34 + 2), 2 * (4 * 34 + 2))
    assert np.array_equal(large, grid.repeat(2, axis=0).repeat(2, axis=1))


def test_reverse_gif_frames_name_their_panels_and_timestep(sampled):
    gif = Image.open(sampled["reverse.gif"])
    frames = [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(gif)]
    panel_height = 2 * (2 * 34 + 2)
    assert gif.n_frames == 3 + 1 and frames[0].shape[0] == panel_height + LABEL_HEIGHT
    strips = [frame[:LABEL_HEIGHT] for frame in frames]
    half = frames[0].shape[1] // 2
    for strip in strips:
        assert (strip < 128).any(), "dark text on the light strip"
        assert (strip[:, :half] < 128).any() and (strip[:, half:] < 128).any()
    # The left label carries each frame's t; the right one names x̂₀ in every step's frame.
    assert not np.array_equal(strips[0][:, :half], strips[1][:, :half])
    assert np.array_equal(strips[0][:, half:], strips[1][:, half:])
    assert not np.array_equal(strips[0][:, half:], strips[-1][:, half:])


# --- Run folders of runs that never trained -----------------------------------------------------


@pytest.fixture
def no_download(monkeypatch):
    """Missing MNIST files are not fetched: the download fails at once, as offline."""

    def refuse(self):
        raise RuntimeError("no network in this test")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", refuse)


def run_into(run: Path, data_root: Path, *overrides: str) -> list[str]:
    """Train's arguments for a run whose Hydra run folder and output folder are `run`."""
    return tiny_overrides(data_root, run, f"hydra.run.dir={run}", *overrides)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ([], "data not found"),
        (["optimizer.lr=0"], "optimizer.lr"),
        (["model.block_groups=3"], "model.block_groups"),
    ],
)
def test_a_run_that_fails_before_training_leaves_no_run_folder(
    data_root, tmp_path, monkeypatch, capsys, no_download, overrides, names
):
    """Missing data, a setting the schema refuses and a model that cannot be built."""
    run = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00"
    root = tmp_path / "missing" if not overrides else data_root
    code, _, stderr = run_command(
        train_command.main, run_into(run, root, *overrides), monkeypatch, capsys
    )
    assert code == 1 and names in stderr, stderr[-2000:]
    assert not run.exists()
    assert run.parent.is_dir(), "only the run's own folder goes"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("notes.txt", "mine"),
        ("train.log", "an earlier run's log\n"),
        # Written by every run: it was there before this one, so the folder is not this run's.
        ("run_info.json", "{}"),
    ],
)
def test_a_failed_run_keeps_a_folder_that_held_files_before(
    tmp_path, monkeypatch, capsys, no_download, name, text
):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(text)
    code, _, stderr = run_command(
        train_command.main, run_into(run, tmp_path / "missing"), monkeypatch, capsys
    )
    assert code == 1 and "data not found" in stderr, stderr[-2000:]
    assert (run / name).is_file() and (run / ".hydra" / "config.yaml").is_file()
    if name != "run_info.json":
        assert (run / name).read_text().startswith(text)


def test_a_good_run_keeps_its_folder_and_names_it_first_and_last(
    data_root, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    code, lines, stderr = run_command(
        train_command.main, run_into(run, data_root, *SHORT_RUN), monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert lines[0] == f"run folder: {run}"
    assert lines[-1] == f"run folder: {run} (checkpoint: checkpoints/last.ckpt)"


# --- Every command names the folder it writes to ------------------------------------------------


def test_sample_and_evaluate_print_their_out_dir_first(model, tmp_path, capsys):
    for command, run in (("sample", sample), ("evaluate", evaluate)):
        out = tmp_path / command
        run(writing_config(command, out, f"pretrained={model}", *SAMPLING))
        assert capsys.readouterr().out.splitlines()[0] == f"out_dir: {out}"


def test_export_prints_its_out_dir_first(model, tmp_path, capsys):
    out = tmp_path / "exported"
    export(
        compose_config(
            "export",
            [f"pretrained={model}", f"out_dir={out}", f"paths.output_dir={out}", "samples=false"],
        )
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"out_dir: {out}" and (out / "config.json").is_file()


def test_demo_prints_its_out_dir_first(tmp_path, monkeypatch, capsys):
    """The site's build stands in: only what the command prints is checked."""
    monkeypatch.setattr(demo_command, "require_onnx_extra", lambda feature: None)
    monkeypatch.setattr(demo_command, "fetch_runtime", lambda: {})
    monkeypatch.setattr(
        demo_command,
        "build_site",
        lambda site, models, sampler, runtime, overrides: [{"id": "mnist"}],
    )
    out = tmp_path / "site"
    demo_command.demo(
        compose_config(
            "demo",
            [f"paths.output_dir={tmp_path}", f"out_dir={out}", "serve=false", "models=[mnist]"],
        )
    )
    assert capsys.readouterr().out.splitlines() == [
        f"out_dir: {out}",
        f"built the demo of mnist into {out}",
    ]


# --- Every command's log file holds what it printed -----------------------------------------


def test_a_run_logs_what_it_printed_and_announces_its_test_pass(
    data_root, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    code, lines, stderr = run_command(
        train_command.main, run_into(run, data_root, *SHORT_RUN), monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    (test_loss,) = json.loads((run / "test_metrics.json").read_text()).values()
    announced = "testing the final EMA weights on 2 batches of the test split…"
    results = ["test results (test_metrics.json):", f"  test/loss  {test_loss:.6g}"]
    assert lines[lines.index(announced) + 1 :][:2] == results
    log = (run / "train.log").read_text().splitlines()
    assert [line for line in log if line in lines] == lines, "every printed line, in order"
    assert log[0] == f"run folder: {run}" and announced in log and results[1] in log


def test_the_sample_command_logs_what_it_printed(model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sampled"
    code, lines, stderr = run_command(
        sample_command.main,
        [f"pretrained={model}", f"hydra.run.dir={out}", *SAMPLING, "gif_images=2"],
        monkeypatch,
        capsys,
    )
    assert code == 0, stderr[-2000:]
    log = (out / "sample.log").read_text().splitlines()
    assert lines[0] == f"out_dir: {out}" and [line for line in log if line in lines] == lines


def test_the_log_holds_a_progress_bar_as_the_terminal_shows_it_at_last():
    """A live display (cursor hidden) redraws its two lines in place; a line printed meanwhile
    lands above it; colours are dropped and lines are kept once nothing can redraw them."""
    screen = Screen()
    redraw = "\r\x1b[2K\x1b[1A\x1b[2K"
    assert screen.feed("\x1b[?25l\x1b[35mbar 1/3\x1b[0m\nloss 0.9") == []
    assert screen.feed(f"{redraw}note\nbar 2/3\nloss 0.8") == []
    assert screen.feed(f"{redraw}bar 3/3  \nloss 0.7") == ["note"]
    assert screen.feed("\n\x1b[?25hdone\n") == ["bar 3/3", "loss 0.7", "done"]
    assert screen.feed("50%\r100%") == [] and screen.rest() == ["100%"]


# --- Lightning's notices only with verbose=true ---------------------------------------------

NOTICES = ("GPU available:", "TPU available:", "💡 Tip:", "The `srun` command is available")


class Notices(logging.Handler):
    """The messages Lightning logs: they reach its own handler, whatever stream it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("verbose", [False, True])
def test_lightning_notices_and_the_model_table_only_with_verbose(
    data_root, tmp_path, monkeypatch, capsys, recwarn, verbose
):
    """As on a machine with Slurm installed, where Lightning suggests `srun`."""
    monkeypatch.setattr(shutil, "which", lambda name, *args, **kwargs: f"/usr/bin/{name}")
    notices = Notices()
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(notices)
    try:
        code, lines, stderr = run_command(
            train_command.main,
            run_into(
                tmp_path / "run", data_root, *SHORT_RUN, *(["verbose=true"] if verbose else [])
            ),
            monkeypatch,
            capsys,
        )
    finally:
        lightning_log.removeHandler(notices)
    assert code == 0, stderr[-2000:]
    printed = "\n".join([*lines, stderr, *notices.messages, *map(str, recwarn.list)])
    assert [notice for notice in NOTICES if notice in printed] == (list(NOTICES) if verbose else [])
    assert ("Total params" in printed) == verbose, "the model summary table"
