"""The config schema: every key shipped in conf/ has an entry, the shipped configs pass it, and
a wrongly typed or out-of-range value in any command is one line naming the key."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml

from ddpm_lightning.components import build
from ddpm_lightning.components.defaults import class_settings, components
from ddpm_lightning.config import compose_config, config_dir
from ddpm_lightning.config.defaults import KINDS
from ddpm_lightning.config.schema import (
    SCHEMAS,
    command_schema,
    is_switched_off,
    spec_for,
    validate_config,
)
from ddpm_lightning.diffusion import NoiseSchedule
from ddpm_lightning.diffusion.denoiser import Denoiser, denoiser_options
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.settings import Range, Setting, setting_of, unified
from tests.conftest import PYTHON, cli_env

CONF = config_dir()
COMMANDS = sorted(SCHEMAS)


def command_groups() -> dict[str, list[str]]:
    """The config groups each command composes, from the defaults list of conf/<command>.yaml."""
    groups: dict[str, list[str]] = {}
    for command in COMMANDS:
        defaults = yaml.safe_load((CONF / f"{command}.yaml").read_text())["defaults"]
        groups[command] = [next(iter(entry)) for entry in defaults if isinstance(entry, dict)]
    return groups


def leaf_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a YAML mapping's leaves (lists are leaves), `defaults` and sections
    switched off with null (`callbacks.fld: null`) left out."""
    keys = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key == "defaults" or is_switched_off(path, value):
            continue
        if isinstance(value, dict):
            keys += leaf_keys(value, f"{path}.")
        else:
            keys.append(path)
    return keys


def yaml_cases() -> list[tuple[str, str, str]]:
    """(yaml file, command, dotted key as mounted in the command's config) for every leaf of
    every yaml in conf/; conf/hydra and `hydra.` keys are Hydra's own, checked by Hydra."""
    cases = []
    groups = command_groups()
    for path in sorted(CONF.rglob("*.yaml")):
        relative = path.relative_to(CONF)
        if relative.parts[0] == "hydra":
            continue
        text = path.read_text()
        content = yaml.safe_load(text) or {}
        if len(relative.parts) == 1:
            targets = [(relative.stem, "")]
        elif "# @package _global_" in text:
            targets = [("train", "")]
        else:
            group = relative.parts[0]
            targets = [(c, f"{group}.") for c in COMMANDS if group in groups[c]]
        assert targets, f"{relative} belongs to no command"
        cases += [
            (str(relative), command, key)
            for command, prefix in targets
            for key in leaf_keys(content, prefix)
            if not key.startswith("hydra.")
        ]
    return cases


def test_every_key_in_conf_has_a_schema_entry():
    cases = yaml_cases()
    assert len(cases) > 250
    missing = [case for case in cases if spec_for(case[1], case[2]) is None]
    assert missing == []


def option_overrides() -> list[tuple[str, list[str]]]:
    """(command, [group=option]) for every option of every group each command composes."""
    cases: list[tuple[str, list[str]]] = [(command, []) for command in COMMANDS]
    for command, groups in command_groups().items():
        for group in groups:
            if group in ("hydra", "paths"):
                continue
            cases += [(command, [f"{group}={p.stem}"]) for p in sorted((CONF / group).glob("*"))]
    for group in ("experiment", "debug", "hparams_search"):
        cases += [("train", [f"{group}={p.stem}"]) for p in sorted((CONF / group).glob("*"))]
    return cases


@pytest.mark.parametrize(("command", "overrides"), option_overrides())
def test_shipped_configs_pass_the_schema(command, overrides, tmp_path):
    validate_config(compose_config(command, [f"paths.output_dir={tmp_path}", *overrides]), command)


BAD_VALUES = [
    ("train", "data.batch_size=abc", "data.batch_size=abc: must be an integer ≥ 1"),
    ("train", "data.batch_size=0", "data.batch_size=0: must be an integer ≥ 1"),
    ("train", "optimizer.lr=fast", "optimizer.lr=fast: must be a finite number > 0"),
    ("train", "optimizer.lr=-1e-3", "optimizer.lr=-0.001: must be a finite number > 0"),
    ("train", "trainer.max_epochs=-3", "trainer.max_epochs=-3: must be an integer ≥ -1 or null"),
    (
        "train",
        "trainer.max_epochs={a:1}",
        "trainer.max_epochs={'a': 1}: must be an integer ≥ -1 or null",
    ),
    ("classifier", "paths.data_dir={a:1}", "paths.data_dir={'a': 1}: must be a path"),
    ("train", "seed=x", "seed=x: must be an integer in [0, 4294967295] or null"),
    ("train", "callbacks.ema.decay=2", "callbacks.ema.decay=2: must be a finite number in (0, 1)"),
    (
        "train",
        "diffusion.objective=score",
        "diffusion.objective=score: must be one of eps, x0, v, flow",
    ),
    (
        "train",
        "diffusion.weighting=snr",
        "diffusion.weighting=snr: must be one of none, min_snr, edm",
    ),
    ("train", "diffusion.p_uncond=1", "diffusion.p_uncond=1: must be a finite number in [0, 1)"),
    ("train", "schedule.num_timesteps=2.5", "schedule.num_timesteps=2.5: must be an integer ≥ 2"),
    (
        "train",
        "schedule=linear",
        "schedule.beta_start=0",
        "schedule.beta_start=0: must be a finite number in (0, 1)",
    ),
    ("train", "data.name=cifar", "data.name=cifar: must be one of mnist, fashion_mnist, shapes"),
    (
        "train",
        "optimizer=adamw",
        "optimizer.weight_decay=-1",
        "optimizer.weight_decay=-1: must be a finite number ≥ 0",
    ),
    (
        "train",
        "model.block_layer=dense",
        "model.block_layer=dense: must be one of resblock, convembed",
    ),
    ("train", "data.val_fraction=nan", "data.val_fraction=nan: must be a finite number in (0, 1)"),
    (
        "train",
        "trainer.accelerator=gpuu",
        "trainer.accelerator=gpuu: must be one of auto, cpu, gpu, cuda, mps, tpu",
    ),
    (
        "train",
        "trainer.fast_dev_run=yes",
        "trainer.fast_dev_run=yes: must be true or false or an integer ≥ 1",
    ),
    (
        "train",
        "callbacks.fld.sampler.num_steps=0",
        "callbacks.fld.sampler.num_steps=0: must be an integer ≥ 1",
    ),
    (
        "train",
        "task_name=a/b",
        "task_name=a/b: must be a name of letters, digits, _ . or - (it names a folder)",
    ),
    (
        "sample",
        "num_samples=1e9",
        "num_samples=1000000000.0: must be an integer ≥ 1 "
        "(write 1000000000, without a decimal point or exponent)",
    ),
    ("sample", "sampler.eta=nan", "sampler.eta=nan: must be a finite number ≥ 0"),
    ("sample", "sampler.eta=-0.5", "sampler.eta=-0.5: must be a finite number ≥ 0"),
    (
        "sample",
        "sampler.guidance_scale=inf",
        "sampler.guidance_scale=inf: must be a finite number ≥ 0 or null",
    ),
    (
        "sample",
        "sampler.spacing=log",
        "sampler.spacing=log: must be one of uniform, quadratic, trailing, logsnr, karras",
    ),
    (
        "sample",
        "sampler=ddpm",
        "sampler.variance=big",
        "sampler.variance=big: must be one of fixed_small, fixed_large",
    ),
    (
        "sample",
        "labels=[1,-2]",
        "labels=[1, -2]: must be all or a non-empty list of class indices ≥ 0 or null",
    ),
    ("sample", "force=maybe", "force=maybe: must be true or false"),
    ("evaluate", "num_samples=1", "num_samples=1: must be an integer ≥ 2"),
    (
        "evaluate",
        "dataset=cifar",
        "dataset=cifar: must be one of mnist, fashion_mnist, shapes or null",
    ),
    (
        "evaluate",
        "sampler=heun",
        "sampler.churn_max=-1",
        "sampler.churn_max=-1: must be a number ≥ 0",
    ),
    ("export", "samples=3", "samples=3: must be true or false"),
    ("export", "push_to_hub=myrepo", "push_to_hub=myrepo: must be a Hub repo id user/repo or null"),
    ("export", "format=png", "format=png: must be one of folder, diffusers, onnx"),
    ("demo", "port=0", "port=0: must be an integer in [1, 65535]"),
    ("demo", "serve=yes", "serve=yes: must be true or false"),
    ("classifier", "lr=0", "lr=0: must be a finite number > 0"),
    ("classifier", "+augment.max_shift=1.5", "augment.max_shift=1.5: must be an integer ≥ 0"),
    (
        "classifier",
        "trainer.max_epochs=ten",
        "trainer.max_epochs=ten: must be an integer ≥ -1 or null",
    ),
]


@pytest.mark.parametrize("row", BAD_VALUES, ids=lambda row: " ".join(row[1:-1]))
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(row, tmp_path):
    command, *overrides, message = row
    cfg = compose_config(command, [f"paths.output_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, command)
    assert str(info.value) == message


def test_an_unknown_key_outside_the_open_sections_is_refused(tmp_path):
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", "+data.colour=red"])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, "train")
    assert str(info.value) == (
        "data.colour=red: data.colour is not a setting of the train command; data takes "
        "augment, batch_size, channels, fit, image_column, image_size, label_column, labels, "
        "name, noise, num_images, num_points, num_test_images, num_test_points, num_workers, "
        "on_bad_file, pad, path, root, split, split_seed, test_split, val_fraction"
    )


# The command whose config holds each kind of component (train, where not named).
HOLDER = {"sampler": "sample"}


def outside(setting: Setting) -> Any:
    """A value just outside what `setting` declares: an unknown choice, a list holding one
    value past a bound, or a number past a bound; None when it declares neither."""
    if setting.choices is not None:
        return "no_such_choice"
    if setting.item is not None:
        item = outside(setting.item)
        return None if item is None else [item]
    bounds = setting.range
    for bound, step in ((bounds.ge, -1), (bounds.le, 1)):
        if bound is not None and math.isfinite(bound):
            return bound + step
    return next((bound for bound in (bounds.gt, bounds.lt) if bound is not None), None)


def declared_bounds() -> list[tuple[str, str, str, Any]]:
    """(kind, component, key, a value outside it) for every bound or choice a class declares."""
    return [
        (kind, name, key, value)
        for kind in KINDS
        for name in components(kind)
        for key, setting in class_settings(kind, name).items()
        if (value := outside(setting)) is not None
    ]


def construct(kind: str, name: str, key: str, value: Any) -> None:
    """Build `kind`/`name` with `key=value` and its other settings at their defaults (for an
    optimizer, the partial that `build` checks; for a sampler, with the denoiser it draws
    through)."""
    if kind == "optimizer":
        build(kind, {"name": name, key: value})
    elif kind == "schedule":
        NoiseSchedule(**{"name": name, "num_timesteps": 10, key: value})
    elif kind == "sampler":
        schedule = NoiseSchedule("cosine", 10)
        factory, options, denoising = denoiser_options(components(kind)[name], {key: value})
        Denoiser(lambda x, t, y: x, schedule, "eps", **denoising)
        factory(schedule, **options)
    else:
        components(kind)[name](**{key: value})


@pytest.mark.parametrize(("kind", "name", "key", "value"), declared_bounds(), ids=str)
def test_the_schema_and_the_constructors_refuse_the_same_values(kind, name, key, value):
    """A range or a set of choices is declared once, in the signature: the schema refuses a
    value outside it, and so does the constructor, in one line naming the key."""
    spec = command_schema(HOLDER.get(kind, "train"))[f"{kind}.{key}"]
    assert not spec.accepts(value)
    with pytest.raises(ConfigError, match=rf"^{kind}\.{key}="):
        construct(kind, name, key, value)


def test_the_bounds_are_found_for_every_kind():
    kinds = {(kind, key) for kind, _, key, _ in declared_bounds()}
    assert {("data", "batch_size"), ("model", "channel_multipliers"), ("schedule", "tau")} <= kinds
    assert {("sampler", "spacing"), ("sampler", "churn_max"), ("optimizer", "lr")} <= kinds


def test_a_key_two_components_declare_differently_is_refused():
    ranged, wider = setting_of(Annotated[int, Range(ge=1)]), setting_of(Annotated[int, Range(ge=0)])
    assert unified("model.width", setting_of(int), ranged) == ranged
    assert unified("model.width", ranged, setting_of(int)) == ranged
    with pytest.raises(ConfigError, match=r"^model\.width is declared as an integer ≥ 1 and as"):
        unified("model.width", ranged, wider)


def test_open_sections_pass_unknown_keys_through(tmp_path):
    cfg = compose_config(
        "train",
        [
            f"paths.output_dir={tmp_path}",
            "+trainer.limit_train_batches=3",
            "+optimizer.betas=[0.9,0.99]",
            "+callbacks.extra={_target_:lightning.pytorch.callbacks.Timer}",
            "callbacks.fld=null",
            "~logger",
        ],
    )
    validate_config(cfg, "train")


def run_command(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", f"ddpm_lightning.{command}", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("command", "override", "message"),
    [
        ("train", "data.batch_size=abc", "error: data.batch_size=abc: must be an integer ≥ 1"),
        ("sample", "sampler.eta=nan", "error: sampler.eta=nan: must be a finite number ≥ 0"),
    ],
)
def test_cli_bad_value_is_one_line_before_any_work(command, override, message, tmp_path):
    result = run_command(command, override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "run" / "run_info.json").exists()


def test_a_quoted_path_with_non_ascii_letters_and_a_space_survives_composition(tmp_path):
    """The shell form 'data.root="/tmp/dätä dir"' reaches Hydra as data.root="/tmp/dätä dir"."""
    cfg = compose_config("train", [f"paths.output_dir={tmp_path}", 'data.root="/tmp/dätä dir"'])
    assert cfg.data.root == "/tmp/dätä dir"
    validate_config(cfg, "train")
