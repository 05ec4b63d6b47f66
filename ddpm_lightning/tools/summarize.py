"""`python -m ddpm_lightning.tools.summarize DIR`: a multirun's jobs in one table, best first.

DIR is a Hydra sweep folder (`hydra.sweep.dir`, e.g. logs/train/multiruns/<date>): numbered job
folders 0/, 1/, ... each with `.hydra/` and the CSV logger's `csv/metrics.csv` (training) or
evaluate's `metrics.json` (its FLD and network calls per sample). Jobs are ranked by the sweep's
`optimized_metric` in its sweeper's direction; an evaluate sweep by FLD, lowest first. The
terminal shows the overrides that vary and that metric, fitted to its width; every metric goes
to DIR/summary.csv, and on request to a Markdown (`--markdown FILE`) or another CSV file
(`--csv FILE`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ddpm_lightning.errors import ConfigError, report_errors

DEFAULT_METRIC = "val/loss"
EVALUATE_METRIC = "fld"
METRICS_CSV = Path("csv") / "metrics.csv"
METRICS_JSON = Path("metrics.json")
NOT_METRICS = ("epoch", "step")
DIRECTIONS = ("minimize", "maximize")
# Overrides that change what a training loss measures, so that losses do not compare across them.
LOSS_CHANGING = ("schedule", "diffusion")
Cell = str | float | None
# A width no table reaches: to measure one at its natural width.
NO_LIMIT = 10_000


@dataclass(frozen=True)
class Ranking:
    """The metric jobs are ranked by, and whether its highest value is the best."""

    metric: str = DEFAULT_METRIC
    maximize: bool = False

    def __str__(self) -> str:
        return f"{self.metric} ({'highest' if self.maximize else 'lowest'} first)"


@dataclass
class Job:
    """One job folder: its command-line overrides, the last logged value of each metric and
    the `optimized_metric` of its config (None when it has none)."""

    num: int
    overrides: dict[str, str]
    metrics: dict[str, float]
    optimized_metric: str | None = None
    ranking: Ranking = field(default_factory=Ranking)

    @property
    def score(self) -> float | None:
        """The ranked metric's final value; None for failed or unfinished jobs."""
        return self.metrics.get(self.ranking.metric)

    @property
    def sort_key(self) -> tuple[bool, float, int]:
        """Best score first, failed jobs last, ties by job number."""
        score = self.score or 0.0
        return (self.score is None, -score if self.ranking.maximize else score, self.num)


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


def evaluation_metrics(path: Path) -> dict[str, float]:
    """The numbers at the top of evaluate's metrics.json (fld, network_evaluations, …)."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnreadableJob(f"{path} is no JSON ({exc})") from None
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "seed"
    }


def load_job(folder: Path) -> Job:
    """A job folder's overrides and metrics; a job whose records cannot be read counts as
    failed (no metrics), with a warning naming the file."""
    try:
        overrides = read_yaml(folder / ".hydra" / "overrides.yaml", list) or []
        config = read_yaml(folder / ".hydra" / "config.yaml", dict) or {}
        evaluated = evaluation_metrics(folder / METRICS_JSON)
    except UnreadableJob as exc:
        print(f"warning: job {folder.name} counted as failed: {exc}")
        return Job(num=int(folder.name), overrides={}, metrics={})
    return Job(
        num=int(folder.name),
        overrides=dict(str(item).partition("=")[::2] for item in overrides),
        metrics={**last_metrics(folder / METRICS_CSV), **evaluated},
        optimized_metric=config.get("optimized_metric"),
    )


def sweep_record(sweep_dir: Path) -> dict:
    """The sweep's own config, multirun.yaml ({} when absent or unreadable, with a warning)."""
    try:
        return read_yaml(sweep_dir / "multirun.yaml", dict) or {}
    except UnreadableJob as exc:
        print(f"warning: {exc}; ranking by the jobs' optimized_metric, lowest first")
        return {}


def sweep_ranking(sweep_dir: Path, jobs: list[Job]) -> Ranking:
    """multirun.yaml's `optimized_metric` and `hydra.sweeper.direction` (Optuna's); else the
    first job's `optimized_metric`, else val/loss (fld for an evaluate sweep); lowest first
    unless the sweeper maximizes."""
    record = sweep_record(sweep_dir)
    from_jobs = next((job.optimized_metric for job in jobs if job.optimized_metric), None)
    evaluated = any(EVALUATE_METRIC in job.metrics for job in jobs)
    fallback = EVALUATE_METRIC if evaluated else DEFAULT_METRIC
    metric = record.get("optimized_metric") or from_jobs or fallback
    sweeper = (record.get("hydra") or {}).get("sweeper") or {}
    direction = str(sweeper.get("direction") or "minimize").lower()
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"{sweep_dir / 'multirun.yaml'}: hydra.sweeper.direction={direction} is neither "
            "minimize nor maximize; summarize ranks by one metric, so set one direction"
        )
    return Ranking(metric, maximize=direction == "maximize")


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every numbered job folder of `sweep_dir`, best ranked metric first, failed jobs last."""
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
    jobs = sorted((load_job(folder) for folder in folders), key=lambda job: job.num)
    ranking = sweep_ranking(sweep_dir, jobs)
    return sorted((replace(job, ranking=ranking) for job in jobs), key=lambda job: job.sort_key)


def split_overrides(jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
    """Override keys that differ between jobs (the table's columns) and those shared by all."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    varying = [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]
    shared = {key: jobs[0].overrides[key] for key in keys if key not in varying}
    return varying, shared


def summary_rows(jobs: list[Job]) -> tuple[list[str], list[list[Cell]]]:
    """Header and rows: job, status, the varying overrides, then metrics (ranked first)."""
    varying, _ = split_overrides(jobs)
    ranked = jobs[0].ranking.metric
    names = sorted({name for job in jobs for name in job.metrics} - {ranked})
    metrics = [ranked, *names]
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


def brief_rows(jobs: list[Job]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the short table: job, the varying overrides and the ranked metric
    (`failed` where a job has none), numbers to 4 digits."""
    varying, _ = split_overrides(jobs)
    header = ["job", *varying, jobs[0].ranking.metric]
    rows = [
        [
            str(job.num),
            *(table_cell(job.overrides.get(key, "")) for key in varying),
            "failed" if job.score is None else table_cell(job.score),
        ]
        for job in jobs
    ]
    return header, rows


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


def title(jobs: list[Job]) -> str:
    noun = "job" if len(jobs) == 1 else "jobs"
    return f"{len(jobs)} {noun} ranked by {jobs[0].ranking}"


def shared_text(jobs: list[Job]) -> str:
    """The overrides every job shares, as they were typed."""
    _, shared = split_overrides(jobs)
    return " ".join(f"{key}={value}" for key, value in shared.items())


def loss_caveat(jobs: list[Job]) -> str | None:
    """A note when a loss ranks jobs that differ in what that loss measures (schedule,
    objective, weighting, ...): those losses are on different scales."""
    metric = jobs[0].ranking.metric
    varying, _ = split_overrides(jobs)
    changing = [key for key in varying if key.lstrip("+~").split(".")[0] in LOSS_CHANGING]
    if not metric.endswith("loss") or not changing:
        return None
    return (
        f"note: the jobs differ in {' and '.join(changing)}, which changes what {metric} "
        "measures, so it ranks them unfairly; rank such sweeps by samples, e.g. "
        "optimized_metric=val/fld"
    )


def split_header(key: str) -> str:
    """`model.model_channels` as `model.` over `model_channels`: narrower, still whole."""
    return key.replace(".", ".\n")


def rich_table(header: list[str], rows: list[list[str]], split: bool) -> Table:
    """The short table, failed jobs in red; long values fold onto another line instead of
    being cut, and `split` breaks the header keys at their dots."""
    table = Table()
    names = [split_header(name) for name in header] if split else header
    for name in names[:-1]:
        table.add_column(name, overflow="fold")
    table.add_column(names[-1], justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row, style="red" if row[-1] == "failed" else None)
    return table


def fitted_table(jobs: list[Job], console: Console) -> Table:
    """The short table; its header keys broken at the dots when whole ones are too wide."""
    header, rows = brief_rows(jobs)
    table = rich_table(header, rows, split=False)
    unlimited = console.options.update_width(NO_LIMIT)
    if Measurement.get(console, unlimited, table).maximum <= console.width:
        return table
    return rich_table(header, rows, split=True)


def print_table(jobs: list[Job], console: Console) -> None:
    """The ranking, the short table, the overrides every job shares and any caveat."""
    console.print(title(jobs), highlight=False)
    console.print(fitted_table(jobs, console))
    shared = shared_text(jobs)
    if shared:
        console.print(Text(f"every job: {shared}", overflow="fold"), highlight=False)
    caveat = loss_caveat(jobs)
    if caveat:
        console.print(caveat, style="yellow", highlight=False)


def markdown_text(jobs: list[Job]) -> str:
    """The short table as Markdown, under a line naming the ranking and the shared overrides."""
    header, rows = brief_rows(jobs)
    shared = shared_text(jobs)
    lead = f"{title(jobs)}" + (f"; every job: `{shared}`" if shared else "")
    lines = [lead, "", markdown_row(header), "|" + "---|" * (len(header) - 1) + "---:|"]
    return "\n".join([*lines, *(markdown_row(row) for row in rows)]) + "\n"


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def csv_text(header: list[str], rows: list[list[Cell]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(["" if cell is None else cell for cell in row] for row in rows)
    return buffer.getvalue()


def write_text(path: Path, text: str, fix: str) -> Path:
    """`text` written to `path`; an unwritable path is a one-line error ending in `fix`."""
    try:
        with path.open("w", newline="") as file:
            file.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}): {fix}") from None
    return path


def terminal_width() -> int:
    """The terminal's columns (or $COLUMNS); 80 when the output is no terminal."""
    return shutil.get_terminal_size((80, 24)).columns


def summarize(
    sweep_dir: Path,
    console: Console | None = None,
    markdown: Path | None = None,
    csv_path: Path | None = None,
) -> Path:
    """Print the sweep's short table, write the full one to `sweep_dir/summary.csv` (and
    `csv_path`) and the short one to `markdown` when given; return summary.csv's path."""
    jobs = load_jobs(sweep_dir)
    console = console or Console(width=terminal_width())
    print_table(jobs, console)
    full = csv_text(*summary_rows(jobs))
    written = [write_text(sweep_dir / "summary.csv", full, "make DIR writable")]
    if csv_path:
        written.append(write_text(csv_path, full, "pass --csv a writable path"))
    if markdown:
        written.append(write_text(markdown, markdown_text(jobs), "pass --markdown a writable path"))
    for path in written:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
    return written[0]


@report_errors
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_lightning.tools.summarize",
        description="Table of a Hydra multirun's jobs and final metrics, best first.",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="the multirun (hydra.sweep.dir)")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE", help="also write the table as Markdown to FILE"
    )
    parser.add_argument(
        "--csv",
        type=Path,
        metavar="FILE",
        help="also write every metric as CSV to FILE (as DIR/summary.csv)",
    )
    args = parser.parse_args(argv)
    return summarize(args.dir, markdown=args.markdown, csv_path=args.csv)


if __name__ == "__main__":
    main()
