"""The schema of every command's config: the type and range of each key, checked right after
composition, so a wrong value stops before any work with one line naming the key, the value and
what is allowed (Hydra itself only knows the keys, not their types).

A component's keys (`data.`, `model.`, `schedule.`, `optimizer.`, `sampler.`) are what its
class's signature declares (`ddpm_lightning.settings`), read when a config is
checked; the tables here hold the rest. Keys under `OPEN_PREFIXES` that have no entry are
passed through unchecked: they are arguments of third-party classes (Lightning's Trainer,
loggers and callbacks, torch's optimizers, diffusers' schedulers) that validate them themselves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm_lightning.components.defaults import kind_settings
from ddpm_lightning.data.registry import DATASETS
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.self_check import self_check_settings
from ddpm_lightning.distill.settings import METHODS
from ddpm_lightning.editing import METHOD_SETTINGS
from ddpm_lightning.editing.measure import measurement
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.likelihood import bits_per_dim
from ddpm_lightning.evaluation.memorisation import memorisation
from ddpm_lightning.evaluation.settings import metric_settings
from ddpm_lightning.settings import (
    OneOf,
    Range,
    Seed,
    Setting,
    declared,
    is_number,
    setting_of,
)
from ddpm_lightning.training.ema import EMA
from ddpm_lightning.training.module import label_dropout
from ddpm_lightning.training.posthoc_ema import PostHocEMA

OPEN_PREFIXES = ("trainer.", "optimizer.", "logger.", "callbacks.", "sampler.kwargs.")
# A section set to null is switched off (`callbacks.fld=null`, `~logger`, `augment=null`).
NULLABLE_SECTIONS = ("callbacks", "logger", "augment")
PRECISIONS = (
    *("16-mixed", "bf16-mixed", "32-true", "16-true", "bf16-true", "64-true"),
    *("16", "32", "64", "bf16", "transformer-engine", "transformer-engine-float16"),
)


@dataclass(frozen=True)
class Spec:
    """What one key allows: in words for the error message (or a function that says them, for
    a registry that may grow after import), and `accepts`, the test."""

    described: str | Callable[[], str]
    accepts: Callable[[Any], bool]

    @property
    def allowed(self) -> str:
        return self.described if isinstance(self.described, str) else self.described()

    def __or__(self, other: Spec) -> Spec:
        """A key that takes either kind of value, e.g. `true`/`false` or a count."""
        return Spec(
            lambda: f"{self.allowed} or {other.allowed}",
            lambda v: self.accepts(v) or other.accepts(v),
        )


def declared_spec(setting: Setting) -> Spec:
    """The Spec of what a component's signature declares for one argument."""
    return Spec(lambda: setting.allowed, setting.accepts)


def typed(annotation: Any) -> Spec:
    """The Spec of a type annotation, as a component's signature would declare it:
    `Annotated[int, Range(ge=1)] | None`, an Enum."""
    return declared_spec(setting_of(annotation))


def integer(ge: int | None = None, le: int | None = None) -> Spec:
    """An int (no bool, no float such as 1e9) within [ge, le]."""
    return typed(Annotated[int, Range(ge=ge, le=le)])


def number(**bounds: float) -> Spec:
    """A finite int or float within `bounds` (those of `Range`)."""
    return typed(Annotated[float, Range(**bounds)])


def choice(*options: str) -> Spec:
    """One of the strings `options`."""
    return typed(Annotated[str, OneOf(options)])


def optional(spec: Spec) -> Spec:
    """`spec`, or null."""
    return Spec(lambda: f"{spec.allowed} or null", lambda v: v is None or spec.accepts(v))


def list_of(item: Spec, items: str, nonempty: bool = True) -> Spec:
    """A list whose items all pass `item` (`items`: them in words, plural)."""
    words = f"a {'non-empty ' if nonempty else ''}list of {items}"
    return Spec(
        words,
        lambda v: isinstance(v, list) and (bool(v) or not nonempty) and all(map(item.accepts, v)),
    )


def matching(description: str, pattern: str) -> Spec:
    """Strings that match `pattern` in full."""
    return Spec(description, lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None)


BOOLEAN = typed(bool)
STRING = Spec("a string", lambda v: isinstance(v, str))
TEXT = typed(str)
PATH = Spec("a path", lambda v: isinstance(v, str) and bool(v.strip()))
NAME = matching("a name of letters, digits, _ . or - (it names a folder)", r"[\w.-]+")
TARGET = matching("a dotted Python name", r"[\w.]+")
HUB_REPO = matching("a Hub repo id user/repo", r"[\w.-]+/[\w.-]+")
# guide=: a model, or false for none at all (not even the one a model folder ships).
GUIDE = optional(TEXT) | Spec("false", lambda v: v is False)
GPU_INDICES = matching("GPU indices like 0,1", r"\d+(,\d+)*,?")
ALL_DEVICES = Spec("-1", lambda v: is_number(v, int) and v == -1)
SEED = typed(Seed)
CONVERT = choice("none", "partial", "object", "all")
POSITIVE = number(gt=0)
NON_NEGATIVE = number(ge=0)

TRAINER = {
    "default_root_dir": PATH,
    "accelerator": choice("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "devices": integer(1)
    | ALL_DEVICES
    | choice("auto")
    | list_of(integer(0), "GPU indices")
    | GPU_INDICES,
    "num_nodes": integer(1),
    "strategy": TEXT,
    "precision": Spec(
        f"one of {', '.join(PRECISIONS)}",
        lambda v: (
            (isinstance(v, str) and v in PRECISIONS) or (is_number(v, int) and v in (16, 32, 64))
        ),
    ),
    "max_epochs": optional(integer(-1)),
    "max_steps": integer(-1),
    "log_every_n_steps": integer(1),
    "fast_dev_run": BOOLEAN | integer(1),
    "overfit_batches": integer(0) | number(ge=0, le=1),
    "enable_progress_bar": BOOLEAN,
    "enable_model_summary": BOOLEAN,
    "plugins": Spec("a list of plugins", lambda v: isinstance(v, list)),
}
CALLBACKS = {
    "model_checkpoint.dirpath": PATH,
    "model_checkpoint.filename": TEXT,
    "model_checkpoint.monitor": optional(TEXT),
    "model_checkpoint.mode": choice("min", "max"),
    "model_checkpoint.save_top_k": integer(-1),
    "model_checkpoint.save_last": BOOLEAN,
    "model_checkpoint.auto_insert_metric_name": BOOLEAN,
    "lr_monitor.logging_interval": optional(choice("step", "epoch")),
    "fld.every_n_epochs": integer(1),
    "fld.num_samples": integer(2),
    "fld.seed": SEED,
    "fld.classifier": optional(PATH),
    "fld.test_num_samples": Spec(
        "0 (off) or an integer ≥ 2", lambda v: is_number(v, int) and (v == 0 or v >= 2)
    ),
    "last_checkpoint.dirpath": optional(PATH),
    "sample_grid.dirpath": PATH,
    "sample_grid.every_n_epochs": integer(1),
    "sample_grid.num_samples": integer(1),
    "sample_grid.seed": SEED,
    **{f"ema.{key}": declared_spec(setting) for key, setting in declared(EMA.__init__).items()},
    **{
        f"posthoc_ema.{key}": declared_spec(setting)
        for key, setting in declared(PostHocEMA.__init__).items()
    },
    "model_summary.max_depth": integer(-1),
    "time_budget.every_n_steps": integer(1),
    "throughput.batch_size_fn.path": TARGET,
}
LOGGER = {
    **{
        f"{name}.{key}": spec
        for name in ("csv", "tensorboard")
        for key, spec in {"save_dir": PATH, "name": STRING, "version": STRING | integer(0)}.items()
    },
    "wandb.project": TEXT,
    "wandb.name": TEXT,
    "wandb.group": optional(TEXT),
    "wandb.tags": list_of(TEXT, "non-empty strings", nonempty=False),
    "wandb.save_dir": PATH,
    "wandb.log_model": BOOLEAN | choice("all"),
}
PATHS = {"root_dir": PATH, "data_dir": PATH, "log_dir": PATH, "output_dir": PATH}
MODEL_SOURCE = {
    "ckpt_path": optional(PATH),
    "train_task_name": NAME,
    "pretrained": optional(TEXT),
}
# DiffusionModule's fast paths (FAST_PATH_KEYS), switches beside the network's settings.
FAST_PATHS = {"model.channels_last": BOOLEAN, "model.compile": BOOLEAN}


def mount(prefix: str, table: dict[str, Spec]) -> dict[str, Spec]:
    """`table`'s keys under `prefix.`."""
    return {f"{prefix}.{key}": spec for key, spec in table.items()}


def declared_table(function: Callable[..., Any], *names: str) -> dict[str, Spec]:
    """The specs of `names`, as `function`'s signature declares them."""
    settings = declared(function)
    return {name: declared_spec(settings[name]) for name in names}


# train.yaml's `diffusion:` (the schedule aside, what GaussianDiffusion's signature declares)
# and p_uncond, the conditional models' label dropout.
DIFFUSION = {
    key: declared_spec(setting)
    for source in (GaussianDiffusion.__init__, label_dropout)
    for key, setting in declared(source).items()
    if key != "schedule"
}


# conf/distill/: the method and what the methods' signatures declare
# (ddpm_lightning/distill/settings.py); keys the methods share are declared alike.
DISTILL = {
    "method": choice(*METHODS),
    **{
        key: declared_spec(setting)
        for method in METHODS.values()
        for key, setting in declared(method).items()
    },
}
# conf/evaluate.yaml's `metrics:`: what its signature declares (evaluation/settings.py).
METRICS = {key: declared_spec(setting) for key, setting in declared(metric_settings).items()}
# conf/sample.yaml's and conf/evaluate.yaml's `self_check:` (diffusion/self_check.py).
SELF_CHECK = {key: declared_spec(setting) for key, setting in declared(self_check_settings).items()}
# conf/edit/: the method and the settings its signature declares (ddpm_lightning/editing/);
# inpaint and measurement declare resample_jumps and jump_length alike.
EDIT = {
    "method": choice(*METHOD_SETTINGS, "measure"),
    **{
        key: declared_spec(declared(function)[key])
        for function, keys in METHOD_SETTINGS.values()
        for key in keys
    },
    **{key: declared_spec(setting) for key, setting in declared(measurement).items()},
}
SCHEMAS: dict[str, dict[str, Spec]] = {
    "train": {
        "task_name": NAME,
        "seed": optional(SEED),
        "ckpt_path": optional(PATH),
        "optimized_metric": optional(TEXT),
        "verbose": BOOLEAN,
        "test": BOOLEAN,
        **mount("diffusion", DIFFUSION),
        "diffusion.p_uncond": number(ge=0, lt=1),
        "lr_schedule.warmup_steps": integer(0),
        "lr_schedule.cosine_decay": BOOLEAN,
        **FAST_PATHS,
        **mount("trainer", TRAINER),
        **mount("callbacks", CALLBACKS),
        **mount("logger", LOGGER),
        **mount("paths", PATHS),
        **mount("distill", DISTILL),
    },
    "sample": {
        "task_name": NAME,
        "verbose": BOOLEAN,
        **MODEL_SOURCE,
        "guide": GUIDE,
        "num_samples": integer(1),
        "force": BOOLEAN,
        "labels": optional(choice("all") | list_of(integer(0), "class indices ≥ 0")),
        "same_noise_columns": integer(0),
        "seed": SEED,
        "out_dir": PATH,
        "gif_images": integer(1),
        "gif_frames": integer(1),
        **mount("self_check", SELF_CHECK),
        **mount("trainer", TRAINER),
        **mount("paths", PATHS),
    },
    "evaluate": {
        "task_name": NAME,
        "verbose": BOOLEAN,
        **MODEL_SOURCE,
        "guide": GUIDE,
        "samples": optional(PATH),
        "dataset": typed(Annotated[str, OneOf(DATASETS)] | None),
        "allow_dataset_mismatch": BOOLEAN,
        "classifier": optional(PATH),
        "num_samples": integer(2),
        "force": BOOLEAN,
        "seed": SEED,
        "out_dir": PATH,
        "metric": choice("fld", "memorisation", "bpd"),
        "num_images": integer(2),
        **mount("bpd", declared_table(bits_per_dim, "num_timesteps_sampled", "batch_size")),
        **mount("memorisation", declared_table(memorisation, "quantile", "max_shift")),
        **mount("metrics", METRICS),
        **mount("self_check", SELF_CHECK),
        **mount("trainer", TRAINER),
        **mount("paths", PATHS),
    },
    "export": {
        "task_name": NAME,
        "verbose": BOOLEAN,
        "ckpt_path": optional(PATH),
        "pretrained": optional(TEXT),
        "guide": GUIDE,
        "format": choice("folder", "diffusers", "onnx"),
        "out_dir": PATH,
        "replace_shipped": BOOLEAN,
        "metrics": optional(PATH),
        "record": optional(PATH),
        "calls": optional(PATH),
        "name": optional(TEXT),
        "samples": BOOLEAN,
        "num_samples": integer(1),
        "push_to_hub": optional(HUB_REPO),
        **mount("paths", PATHS),
    },
    "demo": {
        "task_name": NAME,
        "verbose": BOOLEAN,
        "models": optional(list_of(TEXT, "model names, folders or Hub repo ids")),
        "out_dir": PATH,
        "serve": BOOLEAN,
        "port": integer(1, 65535),
        **mount("paths", PATHS),
    },
    "edit": {
        "task_name": NAME,
        "verbose": BOOLEAN,
        **MODEL_SOURCE,
        "image": TEXT,
        "mask": TEXT,
        "a": TEXT,
        "b": TEXT,
        "labels": optional(list_of(integer(0), "class indices ≥ 0")),
        "seed": SEED,
        "out_dir": PATH,
        "gif_images": integer(1),
        "gif_frames": integer(1),
        **mount("edit", EDIT),
        **mount("paths", PATHS),
    },
    "classifier": {
        "task_name": NAME,
        "verbose": BOOLEAN,
        "seed": SEED,
        "lr": POSITIVE,
        "augment.max_shift": integer(0),
        "augment.max_rotation": NON_NEGATIVE,
        "augment.hflip": BOOLEAN,
        "export_dir": optional(PATH),
        "replace_shipped": BOOLEAN,
        "inception": BOOLEAN,
        **mount("trainer", TRAINER),
        **mount("paths", PATHS),
    },
}
# Where each command's config holds components: section → kind.
COMPONENTS: dict[str, dict[str, str]] = {
    "train": {
        "data": "data",
        "model": "model",
        "schedule": "schedule",
        "optimizer": "optimizer",
        "callbacks.fld.sampler": "sampler",
        "callbacks.sample_grid.sampler": "sampler",
    },
    "sample": {"sampler": "sampler"},
    "evaluate": {"sampler": "sampler"},
    "export": {"sampler": "sampler"},
    "demo": {"sampler": "sampler"},
    "edit": {"sampler": "sampler"},
    "classifier": {"data": "data"},
}


def command_schema(command: str) -> dict[str, Spec]:
    """Every key `command` takes: its table's, and its components' as their classes declare
    them now (a component registered after import counts)."""
    components = {
        f"{section}.{key}": declared_spec(setting)
        for section, kind in COMPONENTS[command].items()
        for key, setting in kind_settings(kind).items()
    }
    return {**SCHEMAS[command], **components}


def leaves(
    node: DictConfig,
    prefix: str = "",
    interpolated: bool = False,
    known: Collection[str] = (),
) -> Iterator[tuple[str, Any, bool]]:
    """(dotted key, resolved plain value, whether it is or lies inside an interpolation) of
    every leaf, and of every mapping at a `known` key (which takes a value, not a section); a
    key whose interpolation cannot be resolved here (e.g. `${hydra:...}` outside a Hydra run)
    is skipped."""
    for key in map(str, node):
        path = f"{prefix}{key}"
        try:
            value = node[key]
            if isinstance(value, ListConfig) or (isinstance(value, DictConfig) and path in known):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:
            continue
        inside = interpolated or OmegaConf.is_interpolation(node, key)
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{path}.", inside, known)
        else:
            yield path, value, inside


def spec_for(command: str, key: str, schema: dict[str, Spec] | None = None) -> Spec | None:
    """The schema entry of `key` (in `schema`, by default `command_schema(command)`), the
    shared one of `_target_`, `_partial_` and `_convert_`, or None."""
    name = key.rsplit(".", 1)[-1]
    if name == "_target_":
        return TARGET
    if name == "_partial_":
        return BOOLEAN
    if name == "_convert_":
        return CONVERT
    return (command_schema(command) if schema is None else schema).get(key)


def is_open(key: str) -> bool:
    """Whether `key` lies in a section whose unknown keys a third-party class checks."""
    return key.startswith(OPEN_PREFIXES)


def is_switched_off(key: str, value: Any) -> bool:
    """Whether `key`, which has no schema entry of its own, is a section or an entry of one
    (e.g. `callbacks.ema`) set to null, i.e. switched off; a setting inside an entry (e.g.
    `callbacks.ema.decay`) is checked by its own entry."""
    return value is None and any(
        key == section or key.startswith(f"{section}.") for section in NULLABLE_SECTIONS
    )


def shown(value: Any) -> str:
    """A value as the command line writes it (`true`, `null`, `[1, 2]`, `abc`)."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def rejection(key: str, value: Any, spec: Spec) -> str:
    """One line naming the key, the value and what is allowed."""
    hint = ""
    if isinstance(value, float) and value.is_integer() and spec.accepts(int(value)):
        hint = f" (write {int(value)}, without a decimal point or exponent)"
    return f"{key}={shown(value)}: must be {spec.allowed}{hint}"


def unknown_key(command: str, key: str, value: Any, schema: dict[str, Spec]) -> str:
    """One line saying that `key` is no setting of `command`, with the keys of its section."""
    section = key.rsplit(".", 1)[0] if "." in key else ""
    known = sorted(
        k.rsplit(".", 1)[1] for k in schema if "." in k and k.rsplit(".", 1)[0] == section
    )
    takes = f"; {section} takes {', '.join(known)}" if section and known else ""
    return f"{key}={shown(value)}: {key} is not a setting of the {command} command{takes}"


def validate_config(cfg: DictConfig, command: str) -> None:
    """Raise `ConfigError` for the first key of `cfg` whose value its schema refuses, or that
    is not a setting of `command` at all (outside the open sections)."""
    schema = command_schema(command)
    # Keys set directly first, so `model.num_timesteps: ${schedule.num_timesteps}` does not
    # take the blame for a bad schedule.num_timesteps.
    for key, value, _ in sorted(leaves(cfg, known=schema), key=lambda leaf: leaf[2]):
        spec = spec_for(command, key, schema)
        if spec is None and not (is_open(key) or is_switched_off(key, value)):
            raise ConfigError(unknown_key(command, key, value, schema))
        if spec is not None and not spec.accepts(value):
            raise ConfigError(rejection(key, value, spec))
