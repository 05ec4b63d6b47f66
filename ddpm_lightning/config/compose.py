"""Locate and compose the Hydra configs, from a source checkout or an installed wheel, and run
a command inside them: its log file, its quiet Lightning and its SIGTERM handling."""

from __future__ import annotations

import functools
import logging
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ddpm_lightning.components.registry import conf_target
from ddpm_lightning.config.defaults import store_defaults
from ddpm_lightning.config.location import config_dir, project_root
from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.diffusion.flow import FLOW
from ddpm_lightning.errors import ConfigError, report_errors
from ddpm_lightning.training.runinfo import resumed_run_folder

# /proc/cpuinfo flags of x86 processors with bfloat16 matmul instructions.
NATIVE_BF16_FLAGS = re.compile(r"\b(?:avx512_bf16|amx_bf16)\b")


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16; Linux only),
    where bf16-mixed trains faster than float32 (docs/results.md, fast paths on the CPU)."""
    try:
        return NATIVE_BF16_FLAGS.search(cpuinfo.read_text()) is not None
    except OSError:
        return False


def best_precision(accelerator: str = "auto") -> str:
    """`trainer.precision` by default: bf16-mixed when the run may use a CUDA GPU that
    supports bfloat16 (`accelerator` auto, gpu or cuda), or runs on a CPU with bfloat16
    instructions (auto or cpu); else 32-true."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    on_cpu = accelerator in ("auto", "cpu")
    return "bf16-mixed" if on_cpu and cpu_has_native_bf16() else "32-true"


def path_sampler(objective: str) -> str:
    """The training callbacks' sampler class by default: DDIM for a model of the ᾱ path, flow
    Euler for a model of `objective` flow, at the same network calls per step."""
    return conf_target("sampler", "flow_euler" if objective == FLOW else "ddim")


def resume_folder(new_folder: str, *, _root_: DictConfig) -> str:
    """`hydra.run.dir`: the folder of the run a train command resumes
    (`resumed_run_folder`), so that the run continues there; else `new_folder`."""
    folder = resumed_run_folder(_root_)
    return new_folder if folder is None else str(folder)


for _name, _resolver in (
    ("project_root", project_root),
    ("best_precision", best_precision),
    ("resume_folder", resume_folder),
    ("path_sampler", path_sampler),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)


store_defaults()


def compose_config(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """Compose a config as the command line would, for tests and notebooks.

    Outside a Hydra run there is no run folder: pass `paths.output_dir=DIR` in `overrides`.
    """
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=overrides or [])


# `task_name` is a folder name Hydra makes before any command runs; filesystems hold 255 bytes.
MAX_TASK_NAME = 200


def check_task_name(argv: list[str]) -> None:
    """Refuse, before Hydra makes the run folder, a `task_name=` on the command line longer
    than a folder name can be: one line and exit 1, where Hydra would end in a traceback."""
    for argument in argv:
        key, _, value = argument.lstrip("+").partition("=")
        if key == "task_name" and len(value.encode()) > MAX_TASK_NAME:
            print(
                f"error: task_name={value[:20]}… has {len(value)} characters; it names a folder, "
                f"so keep it to {MAX_TASK_NAME}",
                file=sys.stderr,
            )
            raise SystemExit(1)


def checked_command_line(entry: Callable[[], Any]) -> Callable[[], Any]:
    """`entry` (a Hydra main) after `check_task_name` of the command line."""

    @functools.wraps(entry)
    def main() -> Any:
        check_task_name(sys.argv[1:])
        return entry()

    return main


# Terminal controls: CSI sequences (colours, cursor moves, erasing), OSC strings (links, titles)
# and two-character escapes.
CONTROL = re.compile(r"\x1b\[([0-9;?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-_]")


class Screen:
    """The lines a terminal shows of the text written to it: carriage returns, cursor-up moves
    and line erasures (how progress bars redraw themselves) act on the lines, colours and other
    controls are dropped. `feed` returns the lines no redraw can reach any more: those above the
    cursor, or, while the cursor is hidden (a live display), those above the row the last
    redraw moved up to."""

    def __init__(self) -> None:
        self.lines = [""]
        self.row = self.column = self.top = 0
        self.hidden = False

    def feed(self, text: str) -> list[str]:
        position = 0
        for match in CONTROL.finditer(text):
            self.put(text[position : match.start()])
            self.control(match.group(1), match.group(2))
            position = match.end()
        self.put(text[position:])
        return self.settled(self.top if self.hidden else self.row)

    def put(self, text: str) -> None:
        for part in re.split(r"([\r\n])", text):
            if part == "\n":
                self.row, self.column = self.row + 1, 0
                if self.row == len(self.lines):
                    self.lines.append("")
            elif part == "\r":
                self.column = 0
            elif part:
                line = self.lines[self.row].ljust(self.column)
                self.lines[self.row] = line[: self.column] + part + line[self.column + len(part) :]
                self.column += len(part)

    def control(self, parameters: str | None, final: str | None) -> None:
        if parameters is None:
            return
        count = int(parameters) if parameters.isdigit() else None
        line = self.lines[self.row]
        if final == "A":
            self.row = self.top = max(0, self.row - (count or 1))
        elif final == "K":
            erased = {0: line[: self.column], 1: " " * self.column + line[self.column :]}
            self.lines[self.row] = erased.get(count or 0, "")
        elif final == "G":
            self.column = (count or 1) - 1
        elif parameters == "?25" and final in ("l", "h"):
            self.hidden = final == "l"
            self.top = self.row

    def settled(self, limit: int) -> list[str]:
        """Remove and return the first `limit` lines, without trailing blanks."""
        lines = [line.rstrip() for line in self.lines[:limit]]
        del self.lines[:limit]
        self.row, self.top = self.row - limit, max(0, self.top - limit)
        return lines

    def rest(self) -> list[str]:
        """Every line left, as the command ends; the cursor's own line only when it holds text."""
        limit = len(self.lines) if self.lines[-1].strip() else len(self.lines) - 1
        return self.settled(limit)


class JobLog:
    """The log file that what a command prints also goes to, line by line as a terminal shows
    it (`Screen`), one `Screen` per stream; the lock keeps progress-bar threads in turn."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed by `close`)
        self.lock = threading.Lock()
        self.screens: list[Screen] = []

    def feed(self, screen: Screen, text: str) -> None:
        with self.lock:
            self.write(screen.feed(text))

    def write(self, lines: list[str]) -> None:
        if lines:
            self.file.write("".join(f"{line}\n" for line in lines))
            self.file.flush()

    def close(self) -> None:
        with self.lock:
            for screen in self.screens:
                self.write(screen.rest())
            self.file.close()


class Tee:
    """`stream` (stdout or stderr), whose text also goes to `log`; everything else, `isatty`
    and `fileno` included, is the stream's own, so progress bars still see a terminal."""

    def __init__(self, stream: IO[str], log: JobLog) -> None:
        self.stream, self.log, self.screen = stream, log, Screen()
        log.screens.append(self.screen)

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.log.feed(self.screen, text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def log_handlers() -> Iterator[logging.StreamHandler]:
    """The console handlers of every logger but the root (Lightning's, which write to stderr);
    the root's console handler is Hydra's, whose file handler writes the log already."""
    for logger in list(logging.root.manager.loggerDict.values()):
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler:
                yield handler


@contextmanager
def printed_to(path: Path) -> Iterator[None]:
    """While the block runs, what goes to stdout and stderr, and what loggers print there, also
    goes to `path` (appended): the command's log file holds what it printed."""
    log = JobLog(path)
    tees = {id(stream): Tee(stream, log) for stream in (sys.stdout, sys.stderr)}
    originals = {id(sys.__stdout__): tees[id(sys.stdout)], id(sys.__stderr__): tees[id(sys.stderr)]}
    retargeted = {}
    for handler in log_handlers():
        tee = tees.get(id(handler.stream)) or originals.get(id(handler.stream))
        if tee is not None:
            retargeted[handler] = handler.setStream(tee)
    previous = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = tees[id(sys.stdout)], tees[id(sys.stderr)]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = previous
        for handler, stream in retargeted.items():
            handler.setStream(stream)
        log.close()


# Lightning's notices that say nothing about this run: hardware it does not use, a product tip,
# bookkeeping. `verbose=true` shows them (and the train command's model summary table).
QUIET_NOTICES = re.compile(
    r"GPU available: |TPU available: |💡 Tip: |Loading `train_dataloader` to estimate"
)
SLURM_HINT = ".*The `srun` command is available on your system but is not used"
LIGHTNING_NOTICES = "lightning.pytorch.utilities.rank_zero"


class QuietNotices(logging.Filter):
    """Drops the records of `QUIET_NOTICES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not QUIET_NOTICES.match(record.getMessage())


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """While the block runs, Lightning's `QUIET_NOTICES` and its Slurm hint are not shown."""
    notices, quiet = logging.getLogger(LIGHTNING_NOTICES), QuietNotices()
    notices.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SLURM_HINT)
            yield
    finally:
        notices.removeFilter(quiet)


def is_verbose(cfg: DictConfig) -> bool:
    """`verbose` (false when a command's config has no such key); one line when not a bool."""
    verbose = cfg.get("verbose", False)
    if not isinstance(verbose, bool):
        raise ConfigError(f"verbose={verbose} must be true or false")
    return verbose


def job_log() -> Path | None:
    """`<run folder>/<command>.log`, the log Hydra makes for this job; None outside Hydra."""
    if not HydraConfig.initialized():
        return None
    hydra_config = HydraConfig.get()
    return Path(hydra_config.runtime.output_dir) / f"{hydra_config.job.name}.log"


@contextmanager
def command_output(cfg: DictConfig) -> Iterator[None]:
    """Around a command's work: what it prints also goes to its log file (`printed_to`), and
    Lightning stays quiet unless `verbose` is true (`quiet_lightning`)."""
    with ExitStack() as stack:
        log = job_log()
        if log is not None:
            stack.enter_context(printed_to(log))
        if cfg.get("verbose") is not True:
            stack.enter_context(quiet_lightning())
        yield


def logged(run: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """`run` inside `command_output`."""

    @functools.wraps(run)
    def command(cfg: DictConfig) -> Any:
        with command_output(cfg):
            return run(cfg)

    return command


# Keys the command entry handles itself, for every command: no command's schema lists them.
ENTRY_KEYS = ("verbose",)


def command_settings(cfg: DictConfig) -> DictConfig:
    """`cfg` without the `ENTRY_KEYS`, checked here: what the command's schema checks."""
    is_verbose(cfg)
    return OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key not in ENTRY_KEYS])


def stop(signum: int, frame: FrameType | None) -> None:
    """SIGTERM's handler while a command runs: one line and exit 143 (128 + SIGTERM) at once.
    Outputs are written to temporary files and renamed into place, so none is left half
    written; without this, Lightning notes the signal and the work runs on to its end."""
    print("error: stopped by SIGTERM; no output was left half written", file=sys.stderr)
    raise SystemExit(128 + signal.SIGTERM)


def hydra_command(config_name: str, run: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """The command-line entry point that composes conf/`config_name`.yaml with the user's
    overrides, checks it against its schema and calls `run(cfg)`, a user error ending in one
    line and exit 1, SIGTERM in one line and exit 143; what it prints also goes to its log
    file (`command_output`)."""

    @functools.wraps(run)
    def checked(cfg: DictConfig) -> Any:
        validate_config(command_settings(cfg), config_name)
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            return run(cfg)
        finally:
            signal.signal(signal.SIGTERM, previous)

    command = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    return checked_command_line(command(logged(report_errors(checked))))
