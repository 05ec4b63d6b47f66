"""`python -m ddpm_lightning.tools.curves`: a metric (default `val/fld`) against training time for
several runs on one plot, to compare recipes by how fast they reach good samples; or, with
`--x COLUMN`, against another column of the same CSVs (e.g. `network_evaluations` of a
`summarize` table, to compare samplers and distilled students by network calls).

Each run is `--run LABEL PATH SECONDS_PER_STEP`: PATH is a run folder (its `csv/metrics.csv`)
or a metrics CSV with `step` and metric columns; training time is step × SECONDS_PER_STEP, the
per-step time that `python -m ddpm_lightning.tools.bench --batch-size B` measures for that run's
model and batch size, so runs that shared a busy CPU still compare on the idle machine's clock.
With `--x COLUMN` a run is `--run LABEL PATH`.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ddpm_lightning.errors import ConfigError, report_errors

METRICS_CSV = Path("csv") / "metrics.csv"
DEFAULT_OUT = "fld_vs_time.png"
LEGEND_INSIDE = 5


@dataclass
class Curve:
    """One run's metric values at training times in hours (or at the values of `--x`)."""

    label: str
    hours: list[float]
    values: list[float]


def metrics_file(path: Path) -> Path:
    """The metrics CSV of a run folder, or `path` itself when it is a CSV file."""
    candidate = path / METRICS_CSV if path.is_dir() else path
    if not candidate.is_file():
        raise ConfigError(f"{path}: no metrics CSV (expected a run folder with {METRICS_CSV})")
    return candidate


def read_curve(label: str, path: Path, seconds_per_step: float, metric: str) -> Curve:
    """The rows of `path` where `metric` was logged, as (hours of training, value)."""
    if not seconds_per_step > 0:
        raise ConfigError(
            f"--run {label}: seconds per step must be positive, got {seconds_per_step}"
        )
    steps = read_column_curve(label, path, "step", metric)
    return Curve(label, [step * seconds_per_step / 3600 for step in steps.hours], steps.values)


def read_column_curve(label: str, path: Path, column: str, metric: str) -> Curve:
    """The rows of `path` with both `column` and `metric`, as (column, value), sorted by the
    column."""
    with metrics_file(path).open(newline="") as file:
        rows = list(csv.DictReader(file))
    if rows and column not in rows[0]:
        raise ConfigError(f"--run {label}: {path} has no column {column}")
    points = sorted(
        (float(row[column]), float(row[metric]))
        for row in rows
        if row.get(column) and row.get(metric)
    )
    if not points:
        raise ConfigError(f"--run {label}: {path} has no {metric} values with a {column}")
    return Curve(label, [x for x, _ in points], [value for _, value in points])


def plot(
    curves: Sequence[Curve],
    metric: str,
    out: Path,
    title: str,
    log_y: bool,
    x_label: str = "training time on the idle 2-core CPU (hours)",
    log_x: bool = False,
    floor: tuple[float, str] | None = None,
) -> Path:
    """Draw every curve against training time (hours), or the `x_label` column, into `out`
    (PNG); `floor` (value, label), e.g. real data's FLD, as a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    entries = len(curves) + (floor is not None)
    # Up to LEGEND_INSIDE entries share the axes; more go below them, so no curve is hidden.
    below = entries > LEGEND_INSIDE
    figure, axes = plt.subplots(figsize=(7, 4.5 + (0.22 * entries if below else 0)), dpi=120)
    # Matplotlib's cycle repeats after 10 colours; past that, tab20 keeps every curve its own.
    tab20 = plt.get_cmap("tab20")
    for i, curve in enumerate(curves):
        colour = tab20(i % tab20.N) if len(curves) > 10 else None
        axes.plot(
            curve.hours, curve.values, marker="o", markersize=3, label=curve.label, color=colour
        )
    if floor is not None:
        axes.axhline(floor[0], color="black", linestyle="--", linewidth=1, label=floor[1])
    axes.set_xlabel(x_label)
    axes.set_ylabel(metric)
    if log_y:
        axes.set_yscale("log")
    if log_x:
        axes.set_xscale("log")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if below:
        axes.legend(loc="upper left", bbox_to_anchor=(0, -0.14), fontsize="small", frameon=False)
    else:
        axes.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lightning.tools.curves", description=__doc__
    )
    parser.add_argument(
        "--run",
        nargs="+",
        action="append",
        required=True,
        metavar="LABEL PATH [SECONDS_PER_STEP]",
        help="a label, a run folder or metrics CSV, and its per-step time (not with --x); repeat",
    )
    parser.add_argument("--metric", default="val/fld")
    parser.add_argument("--x", help="a CSV column for the horizontal axis instead of time")
    parser.add_argument("--log-x", action="store_true", help="logarithmic horizontal axis")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="a .png or a folder")
    parser.add_argument("--title", help="default: METRIC against training time (or --x)")
    parser.add_argument("--log-y", action="store_true", help="logarithmic metric axis")
    parser.add_argument(
        "--floor",
        nargs=2,
        metavar=("VALUE", "LABEL"),
        help="a dashed horizontal line, e.g. --floor 0.77 'real data (10,000)'",
    )
    return parser.parse_args(argv)


def seconds(label: str, text: str) -> float:
    """The SECONDS_PER_STEP argument as a number, or a one-line error."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--run {label}: seconds per step {text!r} is not a number") from None


def floor_value(text: str) -> float:
    """The --floor VALUE as a number, or a one-line error."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"--floor {text!r}: give a number, e.g. --floor 0.77 'real data'"
        ) from None


def picture_path(out: Path) -> Path:
    """`--out` as the PNG to write: a folder gets `DEFAULT_OUT` inside it; any other path must
    end in .png, the format written."""
    if out.is_dir():
        return out / DEFAULT_OUT
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out} must be a .png file or a folder (a PNG is written)")
    return out


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = picture_path(args.out)
    title = args.title or f"{args.metric} against {args.x or 'training time'}"
    expected = 2 if args.x else 3
    for run in args.run:
        if len(run) != expected:
            form = "LABEL PATH" if args.x else "LABEL PATH SECONDS_PER_STEP"
            with_x = " with --x" if args.x else ""
            raise ConfigError(f"--run {' '.join(run)}: give {form}{with_x}")
    floor = None if args.floor is None else (floor_value(args.floor[0]), args.floor[1])
    if args.x:
        curves = [
            read_column_curve(label, Path(path), args.x, args.metric) for label, path in args.run
        ]
        picture = plot(curves, args.metric, out, title, args.log_y, args.x, args.log_x, floor=floor)
    else:
        curves = [
            read_curve(label, Path(path), seconds(label, text), args.metric)
            for label, path, text in args.run
        ]
        picture = plot(curves, args.metric, out, title, args.log_y, log_x=args.log_x, floor=floor)
    print(f"wrote {picture}")


if __name__ == "__main__":
    main()
