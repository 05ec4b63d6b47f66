"""`python -m ddpm_lightning.tools.distill_rounds distill.teacher=mnist distill.teacher_steps=64
rounds.final_steps=1 rounds.minutes_per_round=10 [train overrides ...]`: progressive
distillation (Salimans & Ho 2022) from a teacher down to `rounds.final_steps` DDIM steps, one
halving round after another.

Each round is a train run of `experiment=distill` (its callbacks, logging, EMA, resume and
time budget) in `rounds.dir/round_064_to_032/`, …, whose teacher is the previous round's
`checkpoints/last.ckpt` and whose sample-grid and FLD samplers take the round's student steps.
`rounds.dir/rounds.json` records each round's teacher, steps, checkpoint and wall time. Rerun
the same command to resume: finished rounds are skipped, an interrupted one resumes from its
`checkpoints/last.ckpt`. The other `key=value` arguments go to every round's train command:
with `distill.guidance`, every round distils guidance, its student taking γ as its teacher does.
An autoguided teacher (`distill.guide`, or the guide the teacher folder ships) guides the first
round only: later rounds learn the previous student, which learnt the guided steps.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, cast

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm_lightning.components.build import as_plain
from ddpm_lightning.config import compose_config, validate_config
from ddpm_lightning.config.compose import command_settings
from ddpm_lightning.errors import ConfigError, report_errors
from ddpm_lightning.settings import Range, declared
from ddpm_lightning.settings.overrides import override_key
from ddpm_lightning.sharing.card import override
from ddpm_lightning.train import chosen_teacher_guide
from ddpm_lightning.training.checkpoints import write_atomically

RECORD = "rounds.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
# The samplers of a round's sample grids and FLD, set to the round's student steps.
SAMPLER_STEPS = ("callbacks.sample_grid.sampler.num_steps", "callbacks.fld.sampler.num_steps")
# Keys each round's train command gets from the rounds, never from the command line.
SET_BY_ROUNDS = ("ckpt_path", "paths.output_dir", *SAMPLER_STEPS)
# The first round's teacher: each round sets its own.
FIRST_TEACHER = ("distill.teacher", "distill.teacher_steps")
# The first round's autoguided teacher: later rounds learn the previous student unguided.
UNGUIDED_LATER = ("distill.guide=false", "distill.guide_scale=null")
# A round's train command: its overrides in, its exit code out.
Runner = Callable[[list[str]], int]


def rounds_settings(
    # The student steps of the last round: distill.teacher_steps halved until it is reached.
    final_steps: Annotated[int, Range(ge=1)] = 1,
    # Wall-clock minutes each round trains (+trainer.max_time, and trainer.max_epochs=-1 unless
    # given); null: the train config's limits (experiment=distill: trainer.max_epochs).
    minutes_per_round: Annotated[float, Range(gt=0)] | None = None,
    # Wall-clock minutes of the last round instead; null: minutes_per_round.
    last_round_minutes: Annotated[float, Range(gt=0)] | None = None,
    # The folder of the rounds and rounds.json; null: <paths.log_dir>/distill_rounds/
    # <teacher>_<teacher_steps>, the same on every rerun.
    dir: str | None = None,
) -> dict[str, Any]:
    """The `rounds.` settings, with defaults filled in."""
    return {
        "final_steps": final_steps,
        "minutes_per_round": minutes_per_round,
        "last_round_minutes": last_round_minutes,
        "dir": dir,
    }


def plan(teacher_steps: int, final_steps: int) -> list[tuple[int, int]]:
    """(teacher steps, student steps) of each round, halving `teacher_steps` to `final_steps`:
    64 → 1 is (64, 32), (32, 16), …, (2, 1)."""
    if final_steps >= teacher_steps:
        raise ConfigError(
            f"rounds.final_steps={final_steps} must be below distill.teacher_steps="
            f"{teacher_steps}: each round halves the steps"
        )
    rounds: list[tuple[int, int]] = []
    steps = teacher_steps
    while steps > final_steps:
        if steps % 2:
            halvings = " → ".join(str(n) for n in (*(n for n, _ in rounds), steps))
            raise ConfigError(
                f"distill.teacher_steps={teacher_steps} does not halve to rounds.final_steps="
                f"{final_steps} ({halvings} is odd); use teacher_steps = final_steps × 2^k, "
                f"e.g. {halving_start(teacher_steps, final_steps)}"
            )
        rounds.append((steps, steps // 2))
        steps //= 2
    if steps != final_steps:
        raise ConfigError(
            f"distill.teacher_steps={teacher_steps} does not halve to rounds.final_steps="
            f"{final_steps} (it reaches {steps}); use teacher_steps = final_steps × 2^k"
        )
    return rounds


def halving_start(teacher_steps: int, final_steps: int) -> int:
    """The largest final_steps × 2^k (k ≥ 1) up to `teacher_steps` (at least final_steps × 2)."""
    steps = final_steps * 2
    while steps * 2 <= teacher_steps:
        steps *= 2
    return steps


def round_folder(teacher_steps: int, student_steps: int) -> str:
    """`round_064_to_032`: the folder of the round from `teacher_steps` to `student_steps`."""
    return f"round_{teacher_steps:03d}_to_{student_steps:03d}"


def split_arguments(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """(the `rounds.` settings, checked, with defaults; the overrides for the train runs)."""
    own, train = [], []
    for argument in argv:
        key = override_key(argument)
        if not key or not ("=" in argument or argument.startswith("~")):
            raise ConfigError(f"{argument!r}: give key=value overrides (e.g. rounds.final_steps=1)")
        if key.startswith("rounds."):
            own.append(argument)
        elif key.startswith("hydra.") or key in SET_BY_ROUNDS:
            raise ConfigError(
                f"{argument}: the rounds set {key} for each round (their folder: rounds.dir)"
            )
        elif key == "experiment" and argument != "experiment=distill":
            raise ConfigError(f"{argument}: each round is experiment=distill")
        elif argument != "experiment=distill":
            train.append(argument)
    given = cast(dict, OmegaConf.to_container(OmegaConf.from_dotlist(own)))
    return checked_rounds(given.get("rounds", {})), train


def checked_rounds(given: dict[str, Any]) -> dict[str, Any]:
    """`given` checked against `rounds_settings`' declarations, defaults filled in."""
    settings = declared(rounds_settings)
    for key, value in given.items():
        if key not in settings:
            raise ConfigError(
                f"rounds.{key} is not a setting of the rounds; rounds takes {', '.join(settings)}"
            )
        if not settings[key].accepts(value):
            raise ConfigError(f"rounds.{key}={value}: must be {settings[key].allowed}")
    return rounds_settings(**given)


def distill_config(train: list[str]) -> DictConfig:
    """The first round's train config, checked as the train command checks it, so that a bad
    override stops the rounds before any starts."""
    try:
        cfg = compose_config("train", ["experiment=distill", *train, "paths.output_dir=unused"])
    except (HydraException, OmegaConfBaseException) as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:2])) from None
    validate_config(command_settings(cfg), "train")
    if cfg.distill.get("method", "progressive") != "progressive":
        raise ConfigError(
            f"distill.method={cfg.distill.method}: the rounds are progressive distillation"
        )
    return cfg


def chain_guidance(cfg: DictConfig) -> list[float] | None:
    """The chain's `distill.guidance` [γ_min, γ_max] (every round's), None when unguided."""
    guidance = cfg.distill.get("guidance")
    return None if guidance is None else [float(value) for value in guidance]


def chain_guide(cfg: DictConfig) -> str | None:
    """The model that autoguides the first round's teacher (`chosen_teacher_guide`), if any."""
    return chosen_teacher_guide(cast(dict, OmegaConf.to_container(cfg.distill, resolve=True)))


def chain_folder(settings: dict[str, Any], cfg: DictConfig, guide: str | None = None) -> Path:
    """`rounds.dir`, or <paths.log_dir>/distill_rounds/<teacher>_<teacher_steps>, with
    `_guidance_<γ_min>-<γ_max>` for a chain of distilled guidance and `_autoguided` for an
    autoguided teacher (`guide`)."""
    if settings["dir"] is not None:
        return Path(settings["dir"]).resolve()
    teacher = re.sub(r"[^\w.-]+", "_", str(cfg.distill.teacher)).strip("_")[-80:]
    name = f"{teacher}_{cfg.distill.teacher_steps}"
    guidance = chain_guidance(cfg)
    if guidance is not None:
        name += "_guidance_" + "-".join(f"{value:g}" for value in guidance)
    if guide is not None:
        name += "_autoguided"
    return (Path(cfg.paths.log_dir) / "distill_rounds" / name).resolve()


def quoted(value: str) -> str:
    """`value` as a Hydra override's value: quoted unless plain."""
    if re.fullmatch(r"[\w./:-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def round_max_time(settings: dict[str, Any], last: bool = False) -> str | None:
    """The `+trainer.max_time` clock of a round (`rounds.minutes_per_round`, or for the `last`
    `rounds.last_round_minutes` when set); None without a time budget."""
    minutes = settings["minutes_per_round"]
    if last and settings["last_round_minutes"] is not None:
        minutes = settings["last_round_minutes"]
    if minutes is None:
        return None
    seconds = max(1, round(minutes * 60))
    days, rest = divmod(seconds, 86_400)
    return f"{days:02d}:{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def budget(max_time: str | None, train: list[str]) -> list[str]:
    """The overrides of a round's time budget `max_time`: `+trainer.max_time` and, unless the
    command line limits epochs itself, `trainer.max_epochs=-1`."""
    if max_time is None:
        return []
    limits_epochs = any(override_key(argument) == "trainer.max_epochs" for argument in train)
    return [f"+trainer.max_time={max_time}", *([] if limits_epochs else ["trainer.max_epochs=-1"])]


def check_budget(path: Path, name: str, entry: dict[str, Any] | None, max_time: str | None) -> None:
    """One line when rounds.json at `path` records the round `name` under another time budget
    than this command gives it: its checkpoint would be skipped or resumed as it is."""
    if entry is None or "max_time" not in entry or entry["max_time"] == max_time:
        return
    raise ConfigError(
        f"{path} records {name} with +trainer.max_time={entry['max_time']}, not {max_time} "
        "(rounds.minutes_per_round, rounds.last_round_minutes); set rounds.dir to another "
        "folder for this chain"
    )


def round_overrides(
    cfg: DictConfig,
    train: list[str],
    limits: list[str],
    teacher: str,
    steps: tuple[int, int],
    folder: Path,
    first: bool = True,
) -> list[str]:
    """The train command's overrides for one round in `folder` (resuming its last.ckpt); a
    round after the `first` learns its teacher unguided (`UNGUIDED_LATER`)."""
    present = [key for key in SAMPLER_STEPS if OmegaConf.select(cfg, key.rsplit(".", 2)[0])]
    checkpoint = folder / LAST_CHECKPOINT
    return [
        "experiment=distill",
        *train,
        f"distill.teacher={quoted(teacher)}",
        f"distill.teacher_steps={steps[0]}",
        *([] if first else UNGUIDED_LATER),
        *(f"{key}={steps[1]}" for key in present),
        *limits,
        f"hydra.run.dir={quoted(str(folder))}",
        *([f"ckpt_path={quoted(str(checkpoint))}"] if checkpoint.is_file() else []),
    ]


def read_record(
    path: Path,
    teacher: str,
    teacher_steps: int,
    guidance: list[float] | None = None,
    guide: str | None = None,
) -> dict[str, Any]:
    """rounds.json of the chain from `teacher` at `teacher_steps`, with `guidance` when the
    chain distils it and `guide` when it autoguides the teacher (empty when new); one line when
    it records another chain or does not read."""
    if not path.is_file():
        chain: dict[str, Any] = {"teacher": teacher, "teacher_steps": teacher_steps, "rounds": []}
        if guidance is not None:
            chain["guidance"] = guidance
        if guide is not None:
            chain["guide"] = guide
        return chain
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} does not read ({exc}); move it away to start over") from None
    if (record.get("teacher"), record.get("teacher_steps")) != (teacher, teacher_steps):
        raise ConfigError(
            f"{path} records rounds from distill.teacher={record.get('teacher')} "
            f"distill.teacher_steps={record.get('teacher_steps')}; set rounds.dir to another "
            "folder for this teacher"
        )
    if record.get("guidance") != guidance:
        raise ConfigError(
            f"{path} records rounds of distill.guidance={record.get('guidance')}, not "
            f"{guidance}; set rounds.dir to another folder for this chain"
        )
    if record.get("guide") != guide:
        raise ConfigError(
            f"{path} records rounds from a teacher autoguided by {record.get('guide')}, not "
            f"{guide}; set rounds.dir to another folder for this chain"
        )
    return record


def write_record(path: Path, record: dict[str, Any]) -> None:
    """rounds.json, whole or not at all."""
    write_atomically((json.dumps(record, indent=2) + "\n").encode(), path)


def entry_of(record: dict[str, Any], folder: str) -> dict[str, Any] | None:
    """The rounds.json entry of the round in `folder`, if any."""
    return next((entry for entry in record["rounds"] if entry["folder"] == folder), None)


def is_finished(chain: Path, entry: dict[str, Any] | None) -> bool:
    """Whether a round's entry says it ran to its end and its checkpoint is still there."""
    return entry is not None and entry["finished"] and (chain / entry["checkpoint"]).is_file()


def duration(seconds: float) -> str:
    """`42 s`, `10 min 3 s`, `2 h 5 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def train_command(overrides: list[str]) -> int:
    """`python -m ddpm_lightning.train OVERRIDES` in a process of its own, its exit code. A
    Ctrl-C reaches it too (it saves its last.ckpt), so this waits for it; SIGTERM is passed
    on."""
    process = subprocess.Popen([sys.executable, "-m", "ddpm_lightning.train", *overrides])
    previous = signal.signal(signal.SIGTERM, lambda *_: process.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_round(
    chain: Path,
    record: dict[str, Any],
    steps: tuple[int, int],
    teacher: str,
    run: Callable[[], int],
    max_time: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """`run()` (the round's train command), recorded in rounds.json as it starts and ends with
    its time budget `max_time`, its wall time summed over the round's attempts; (its exit
    code, its entry)."""
    folder = round_folder(*steps)
    entry = entry_of(record, folder)
    if entry is None:
        entry = {"folder": folder, "wall_seconds": 0.0}
        record["rounds"].append(entry)
    entry.update(
        teacher=teacher,
        teacher_steps=steps[0],
        student_steps=steps[1],
        checkpoint=str(Path(folder) / LAST_CHECKPOINT),
        max_time=max_time,
        finished=False,
    )
    write_record(chain / RECORD, record)
    start, code = time.monotonic(), 1
    try:
        code = run()
    finally:
        entry["wall_seconds"] = round(entry["wall_seconds"] + time.monotonic() - start, 1)
        entry["finished"] = code == 0 and (chain / entry["checkpoint"]).is_file()
        write_record(chain / RECORD, record)
    return code, entry


def distill_rounds(argv: Sequence[str], runner: Runner = train_command) -> Path:
    """Run the rounds the arguments ask for, skipping finished ones, a line as each starts and
    ends; the last round's checkpoint. A round that does not finish stops the rounds with its
    exit code."""
    settings, train = split_arguments(argv)
    if any(override_key(argument) == "trainer.max_time" for argument in train):
        raise ConfigError(
            "give rounds.minutes_per_round (and rounds.last_round_minutes), not +trainer.max_time"
        )
    cfg = distill_config(train)
    teacher, teacher_steps = str(cfg.distill.teacher), int(cfg.distill.teacher_steps)
    rounds = plan(teacher_steps, settings["final_steps"])
    train = [argument for argument in train if override_key(argument) not in FIRST_TEACHER]
    guide = chain_guide(cfg)
    chain = chain_folder(settings, cfg, guide)
    chain.mkdir(parents=True, exist_ok=True)
    record = read_record(chain / RECORD, teacher, teacher_steps, chain_guidance(cfg), guide)
    say(f"rounds folder: {chain} ({len(rounds)} rounds, {teacher_steps} → {rounds[-1][1]} steps)")
    for number, steps in enumerate(rounds, 1):
        folder = chain / round_folder(*steps)
        name = f"round {number}/{len(rounds)} ({steps[0]} → {steps[1]} steps)"
        entry = entry_of(record, folder.name)
        max_time = round_max_time(settings, last=number == len(rounds))
        check_budget(chain / RECORD, name, entry, max_time)
        if entry is not None and is_finished(chain, entry):
            say(f"{name}: done before, in {duration(entry['wall_seconds'])}")
        else:
            resuming = (folder / LAST_CHECKPOINT).is_file()
            guided = f", autoguided by {guide}" if guide is not None and number == 1 else ""
            say(
                f"{name}: {'resumes' if resuming else 'starts'} in {folder} "
                f"(teacher {teacher}{guided})"
            )
            limits = budget(max_time, train)
            overrides = round_overrides(cfg, train, limits, teacher, steps, folder, number == 1)
            run = functools.partial(runner, overrides)
            code, entry = run_round(chain, record, steps, teacher, run, max_time)
            wall = duration(entry["wall_seconds"])
            if not entry["finished"]:
                say(
                    f"error: {name} stopped (exit code {code}) after {wall}; rerun the same "
                    "command to resume it",
                    sys.stderr,
                )
                raise SystemExit(code or 1)
            say(f"{name}: done in {wall}")
        teacher = str(folder / LAST_CHECKPOINT)
    guidance = chain_guidance(cfg)
    # A student of distilled guidance takes any γ it was trained on; the strongest is shown,
    # guided where its rounds were.
    guided = (
        ""
        if guidance is None
        else f" sampler.guidance_scale={guidance[1]:g}"
        + override("guidance_interval", as_plain(cfg.distill.get("guidance_interval")))
    )
    say(
        f"rounds done: python -m ddpm_lightning.sample ckpt_path={quoted(teacher)} sampler=ddim "
        f"sampler.num_steps={rounds[-1][1]} sampler.eta=0 sampler.spacing=trailing{guided}"
    )
    return Path(teacher)


def say(line: str, stream: Any = None) -> None:
    """Print a progress line at once (before a round's own output)."""
    print(line, file=stream or sys.stdout, flush=True)


@report_errors
def main(argv: Sequence[str] | None = None) -> Path | None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(arguments):
        print(__doc__)
        return None
    return distill_rounds(arguments)


if __name__ == "__main__":
    main()
