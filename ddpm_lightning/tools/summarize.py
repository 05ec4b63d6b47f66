"""`python -m ddpm_lightning.tools.summarize DIR`: a multirun's jobs in one table, best first.

DIR is a Hydra sweep folder (`hydra.sweep.dir`, e.g. logs/train/multiruns/<date>): numbered job
folders 0/, 1/, ... each with `.hydra/` and the CSV logger's `csv/metrics.csv`. The table is
also written to DIR/summary.csv.
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from ddpm_lightning.errors import ConfigError, report_errors

DEFAULT_METRIC = "val/loss"
METRICS_CSV = Path("csv") / "metrics.csv"
NOT_METRICS = ("epoch", "step")
Cell = str | float | None


@dataclass
class Job:
    """One job folder: its command-line overrides and the last logged value of each metric."""

    num: int
    overrides: dict[str, str]
    metrics: dict[str, float]
    optimized_metric: str

    @property
    def score(self) -> float | None:
        """The optimized metric's final value; None for failed or unfinished jobs."""
        return self.metrics.get(self.optimized_metric)


class UnreadableJob(Exception):
    """A job folder whose Hydra records are not the YAML Hydra writes."""


def read_yaml(path: Path, kind: type):
    """The YAML file `path` (None when absent), which must hold a `kind` (list or dict)."""
    if not path.is_file():
        return None
    try:
        value = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UnreadableJob(f"{path} is not YAML") from exc
    if value is not None and not isinstance(value, kind):
        raise UnreadableJob(f"{path} holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def last_metrics(path: Path) -> dict[str, float]:
    """The last value of each column: Lightning's CSV rows fill only what that step logged."""
    if not path.is_file():
        return {}
    metrics: dict[str, float] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if key in NOT_METRICS or not value:
                    continue
                try:
                    metrics[key] = float(value)
                except ValueError:
                    continue
    return metrics


def load_job(folder: Path) -> Job:
    """A job folder's overrides and metrics; a job whose records cannot be read counts as
    failed (no metrics), with a warning naming the file."""
    try:
        overrides = read_yaml(folder / ".hydra" / "overrides.yaml", list) or []
        config = read_yaml(folder / ".hydra" / "config.yaml", dict) or {}
    except UnreadableJob as exc:
        print(f"warning: job {folder.name} counted as failed: {exc}")
        return Job(num=int(folder.name), overrides={}, metrics={}, optimized_metric=DEFAULT_METRIC)
    return Job(
        num=int(folder.name),
        overrides=dict(str(item).partition("=")[::2] for item in overrides),
        metrics=last_metrics(folder / METRICS_CSV),
        optimized_metric=config.get("optimized_metric") or DEFAULT_METRIC,
    )


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every numbered job folder of `sweep_dir`, best optimized metric first, failed jobs last."""
    if not sweep_dir.is_dir():
        raise ConfigError(
            f"{sweep_dir} is not a folder: pass a multirun folder (hydra.sweep.dir), "
            "e.g. logs/train/multiruns/<date>"
        )
    folders = [path for path in sweep_dir.iterdir() if path.is_dir() and path.name.isdigit()]
    if not folders:
        raise ConfigError(
            f"{sweep_dir} has no job folders (0/, 1/, ...): pass the multirun folder made by "
            "`python -m ddpm_lightning.train -m ...`, not a single run's folder"
        )
    jobs = [load_job(folder) for folder in folders]
    return sorted(jobs, key=lambda job: (job.score is None, job.score or 0.0, job.num))


def split_overrides(jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
    """Override keys that differ between jobs (the table's columns) and those shared by all."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    varying = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]
    shared = {key: jobs[0].overrides[key] for key in keys if key not in varying}
    return varying, shared


def summary_rows(jobs: list[Job]) -> tuple[list[str], list[list[Cell]]]:
    """Header and rows: job, status, the varying overrides, then metrics (optimized first)."""
    varying, _ = split_overrides(jobs)
    optimized = jobs[0].optimized_metric
    names = sorted({name for job in jobs for name in job.metrics} - {optimized})
    metrics = [optimized, *names]
    header = ["job", "status", *varying, *metrics]
    rows = [
        [
            str(job.num),
            "ok" if job.score is not None else "failed",
            *(job.overrides.get(key, "") for key in varying),
            *(job.metrics.get(name) for name in metrics),
        ]
        for job in jobs
    ]
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[list[Cell]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(["" if cell is None else cell for cell in row] for row in rows)
    return path


def table_cell(cell: Cell) -> str:
    """Floats, including swept values such as optimizer.lr=0.000228922, to 4 digits."""
    if isinstance(cell, str) and any(c in cell for c in ".eE"):
        text = cell
        try:
            cell = float(text)
        except ValueError:
            return text
    if isinstance(cell, float):
        return f"{cell:.4g}"
    return cell or ""


def rich_table(jobs: list[Job], header: list[str], rows: list[list[Cell]]) -> Table:
    """The rows with short numbers, failed jobs in red; overrides shared by all in the caption."""
    _, shared = split_overrides(jobs)
    table = Table(
        title=f"{len(jobs)} jobs, sorted by {jobs[0].optimized_metric} (lowest first)",
        caption=" ".join(f"{key}={value}" for key, value in shared.items()) or None,
    )
    for name in header:
        table.add_column(name, justify="left" if name in ("job", "status") else "right")
    for row in rows:
        style = "red" if row[1] == "failed" else None
        table.add_row(*(table_cell(cell) for cell in row), style=style)
    return table


def summarize(sweep_dir: Path, console: Console | None = None) -> Path:
    """Print the sweep's table and write it to `sweep_dir/summary.csv`; return that path."""
    jobs = load_jobs(sweep_dir)
    header, rows = summary_rows(jobs)
    console = console or Console()
    console.print(rich_table(jobs, header, rows))
    path = write_csv(sweep_dir / "summary.csv", header, rows)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return path


@report_errors
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lightning.tools.summarize",
        description="Table of a Hydra multirun's jobs and final metrics, best first.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="the multirun (hydra.sweep.dir)")
    return summarize(parser.parse_args(argv).dir)


if __name__ == "__main__":
    main()
