"""A Hydra callback (conf/hydra/default.yaml) that names a multirun's folder when it starts and
again when it ends, with its job count and the command that tabulates it."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

SUMMARIZE = "python -m ddpm_lightning.tools.summarize"
# What summarize reads: training's CSV log, evaluate's scores.
METRICS_FILES = (Path("csv") / "metrics.csv", Path("metrics.json"))


def job_folders(sweep_dir: Path) -> list[Path]:
    """The numbered job folders (0/, 1/, ...) of `sweep_dir`: the jobs summarize lists."""
    if not sweep_dir.is_dir():
        return []
    return [path for path in sweep_dir.iterdir() if path.is_dir() and path.name.isdigit()]


def end_line(sweep_dir: Path) -> str:
    """`sweep folder: DIR (N jobs; ...)`, naming summarize when a job logged metrics it reads."""
    jobs = job_folders(sweep_dir)
    count = f"{len(jobs)} job" + ("" if len(jobs) == 1 else "s")
    if not any((job / name).is_file() for job in jobs for name in METRICS_FILES):
        return f"sweep folder: {sweep_dir} ({count})"
    return f"sweep folder: {sweep_dir} ({count}; summarize with: {SUMMARIZE} {sweep_dir})"


def print_end_line(sweep_dir: Path) -> None:
    print(end_line(sweep_dir), flush=True)


class SweepFolder(Callback):
    """Prints `sweep folder: DIR` before a multirun's first job and the end line after its last.
    Hydra skips on_multirun_end when a job failed or Ctrl-C stopped the sweep, the runs whose
    folder is most worth reading, so the end line is also due at exit."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        print(f"sweep folder: {sweep_dir}", flush=True)
        atexit.register(print_end_line, sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(print_end_line)
        print_end_line(Path(str(config.hydra.sweep.dir)))
