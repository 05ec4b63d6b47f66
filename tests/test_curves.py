"""The FLD-against-training-time plot: times from steps × seconds per step, one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, cli_env
from PIL import Image

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.tools.curves import Curve, floor_value, main, plot, read_curve

ROWS = "epoch,step,train/loss,val/fld\n0,99,0.5,\n0,99,,120.0\n1,199,0.4,\n1,199,,60.5\n"


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    (tmp_path / "run" / "csv").mkdir(parents=True)
    (tmp_path / "run" / "csv" / "metrics.csv").write_text(ROWS)
    return tmp_path / "run"


def test_training_time_is_steps_times_seconds_per_step(run_folder):
    curve = read_curve("new", run_folder, 36.0, "val/fld")
    assert curve.hours == [pytest.approx(0.99), pytest.approx(1.99)]
    assert curve.values == [120.0, 60.5]


def test_plot_of_two_runs(run_folder, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("step,val/fld\n500,90\n1000,40\n")
    out = tmp_path / "plot.png"
    main(["--run", "a", str(run_folder), "0.2", "--run", "b", str(other), "0.1", "--out", str(out)])
    with Image.open(out) as image:
        assert image.size == (840, 540)
        assert len(set(image.convert("L").getdata())) > 10, "not a blank picture"


def test_a_run_without_the_metric_is_refused(run_folder):
    with pytest.raises(ConfigError, match="has no val/loss values"):
        read_curve("new", run_folder, 1.0, "val/loss")
    with pytest.raises(ConfigError, match="seconds per step must be positive"):
        read_curve("new", run_folder, 0.0, "val/fld")


def test_cli_errors_are_one_line(tmp_path):
    result = subprocess.run(
        [PYTHON, "-m", "ddpm_lightning.tools.curves", "--run", "x", str(tmp_path), "fast"],
        capture_output=True,
        text=True,
        env=cli_env(),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --run x: seconds per step 'fast' is not a number"


def test_a_floor_is_drawn_as_a_dashed_line(run_folder, tmp_path):
    def dark_pixels(out: Path) -> int:
        with Image.open(out) as image:
            return sum(1 for value in image.convert("L").getdata() if value < 40)

    bare, floored = tmp_path / "bare.png", tmp_path / "floor.png"
    main(["--run", "a", str(run_folder), "0.2", "--out", str(bare)])
    main(
        ["--run", "a", str(run_folder), "0.2", "--floor", "70", "real data", "--out", str(floored)]
    )
    assert dark_pixels(floored) > dark_pixels(bare) + 200, "a line across the plot"
    with pytest.raises(ConfigError, match="--floor 'low': give a number"):
        floor_value("low")


def test_a_long_legend_goes_below_the_axes(run_folder, tmp_path):
    runs = [arg for i in range(6) for arg in ("--run", f"run {i}", str(run_folder), "0.2")]
    out = tmp_path / "plot.png"
    main([*runs, "--out", str(out)])
    with Image.open(out) as image:
        # 4.5 in + 0.22 in per entry below the axes, at 120 dpi: 540 + 6 × 26.4 pixels.
        assert image.size == (840, 698)


@pytest.mark.parametrize("runs", [3, 12])
def test_every_run_keeps_its_own_colour(tmp_path, monkeypatch, runs):
    """Matplotlib's cycle repeats after 10 colours; 12 runs still get 12."""
    from matplotlib import pyplot as plt
    from matplotlib.colors import to_hex

    closed: list = []
    monkeypatch.setattr(plt, "close", closed.append)
    curves = [Curve(f"run {i}", [0.1, 0.2], [float(i + 1)] * 2) for i in range(runs)]
    plot(curves, "val/fld", tmp_path / "plot.png", "title", log_y=False)
    colours = {to_hex(line.get_color()) for line in closed[0].axes[0].get_lines()}
    assert len(colours) == runs
