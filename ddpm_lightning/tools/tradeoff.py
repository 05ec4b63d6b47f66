"""`python -m ddpm_lightning.tools.tradeoff CSV --x COL --y COL --label COL --out PNG`: two
columns of a measurement CSV against each other, each point labelled by a third, e.g. SDEdit's
faithfulness (the LeNet's agreement with the input's class) against its realism (FLD) by
strength, from the CSV `edit=measure` writes."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

from ddpm_lightning.errors import ConfigError, report_errors


def read_points(path: Path, x: str, y: str, label: str) -> list[tuple[float, float, str]]:
    """(x, y, label) of every row of the CSV at `path`; one line naming a missing column."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such CSV file")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ConfigError(f"{path}: the CSV has no rows")
    missing = [column for column in (x, y, label) if column not in rows[0]]
    if missing:
        raise ConfigError(f"{path}: no column {', '.join(missing)}; it has {', '.join(rows[0])}")
    return [(float(row[x]), float(row[y]), row[label]) for row in rows]


def plot(points: Sequence[tuple[float, float, str]], x: str, y: str, label: str, out: Path) -> Path:
    """The points joined in row order, each annotated `label=value`, into `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4.2), dpi=120)
    axes.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    for px, py, name in points:
        axes.annotate(f"{label}={name}", (px, py), textcoords="offset points", xytext=(6, 4))
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out


@report_errors
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lightning.tools.tradeoff", description=__doc__
    )
    parser.add_argument("csv", type=Path)
    parser.add_argument("--x", default="share_correct", help="the column along x")
    parser.add_argument("--y", default="fld", help="the column along y")
    parser.add_argument("--label", default="strength", help="the column each point is named by")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    points = read_points(args.csv, args.x, args.y, args.label)
    print(f"wrote {plot(points, args.x, args.y, args.label, args.out)}")


if __name__ == "__main__":
    main()
