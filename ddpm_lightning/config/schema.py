"""The schema of every command's config: the type and range of each key, checked right after
composition, so a wrong value stops before any work with one line naming the key, the value and
what is allowed (Hydra itself only knows the keys, not their types).

Keys under `OPEN_PREFIXES` that have no entry here are passed through unchecked: they are
arguments of third-party classes (Lightning's Trainer, loggers and callbacks, torch's
optimizers, diffusers' schedulers) that validate them themselves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddpm_lightning.data.registry import DATASETS
from ddpm_lightning.diffusion.gaussian import LossType, NoiseLevels, Objective, Weighting
from ddpm_lightning.diffusion.samplers import SPACINGS
from ddpm_lightning.diffusion.schedules import BETA_SCHEDULES
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models.blocks import BLOCK_LAYERS
from ddpm_lightning.training.ema import MAX_SIGMA_REL

MAX_SEED = 2**32 - 1
OPEN_PREFIXES = ("trainer.", "optimizer.", "logger.", "callbacks.", "sampler.kwargs.")
# A section set to null is switched off (`callbacks.fld=null`, `~logger`, `augment=null`).
NULLABLE_SECTIONS = ("callbacks", "logger", "augment")
PRECISIONS = (
    "16-mixed",
    "bf16-mixed",
    "32-true",
    "16-true",
    "bf16-true",
    "64-true",
    "16",
    "32",
    "64",
    "bf16",
    "transformer-engine",
    "transformer-engine-float16",
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


def is_integer(value: Any) -> bool:
    """An int that is no bool (YAML's `true` would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or float that is no bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None) -> Spec:
    """An int (no bool, no float such as 1e9) within [low, high]."""
    if low is not None and high is not None:
        words = f"an integer in [{low}, {high}]"
    elif low is not None:
        words = f"an integer ≥ {low}"
    else:
        words = "an integer"
    return Spec(
        words,
        lambda v: is_integer(v) and (low is None or v >= low) and (high is None or v <= high),
    )


def number(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    infinite: bool = False,
) -> Spec:
    """A finite int or float (NaN never; ±inf only with `infinite`) within the bounds."""

    def accepts(v: Any) -> bool:
        if not is_number(v) or math.isnan(v) or (math.isinf(v) and not infinite):
            return False
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    kind = "a number" if infinite else "a finite number"
    if low is not None and high is not None:
        words = f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        words = f"{kind} {'>' if low_open else '≥'} {low:g}"
    else:
        words = kind
    return Spec(words, accepts)


def choice(*options: str) -> Spec:
    """One of the strings `options`."""
    words = options[0] if len(options) == 1 else f"one of {', '.join(options)}"
    return Spec(words, lambda v: isinstance(v, str) and v in options)


def optional(spec: Spec) -> Spec:
    """`spec`, or null."""
    return Spec(lambda: f"{spec.allowed} or null", lambda v: v is None or spec.accepts(v))


def registered(table: Mapping[str, Any]) -> Spec:
    """A name in the registry `table`, read when a value is checked: a name registered after
    import counts."""
    return Spec(lambda: f"one of {', '.join(table)}", lambda v: isinstance(v, str) and v in table)


def list_of(item: Spec, items: str, nonempty: bool = True) -> Spec:
    """A list whose items all pass `item` (`items`: them in words, plural)."""
    words = f"a {'non-empty ' if nonempty else ''}list of {items}"
    return Spec(
        words,
        lambda v: isinstance(v, list) and (bool(v) or not nonempty) and all(map(item.accepts, v)),
    )


BOOLEAN = Spec("true or false", lambda v: isinstance(v, bool))
STRING = Spec("a string", lambda v: isinstance(v, str))
TEXT = Spec("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
PATH = Spec("a path", lambda v: isinstance(v, str) and bool(v.strip()))


def matching(description: str, pattern: str) -> Spec:
    """Strings that match `pattern` in full."""
    return Spec(description, lambda v: isinstance(v, str) and re.fullmatch(pattern, v) is not None)


NAME = matching("a name of letters, digits, _ . or - (it names a folder)", r"[\w.-]+")
TARGET = matching("a dotted Python name", r"[\w.]+")
HUB_REPO = matching("a Hub repo id user/repo", r"[\w.-]+/[\w.-]+")
GPU_INDICES = matching("GPU indices like 0,1", r"\d+(,\d+)*,?")
CLASS_NAME = matching("a class name such as DDIMScheduler", r"[A-Za-z_]\w*")
ALL_DEVICES = Spec("-1", lambda v: is_integer(v) and v == -1)
SEED = integer(0, MAX_SEED)
CONVERT = choice("none", "partial", "object", "all")
FRACTION_OPEN = number(0, 1, low_open=True, high_open=True)
POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)

SAMPLER = {
    "scheduler": CLASS_NAME,
    "num_steps": integer(1),
    "eta": NON_NEGATIVE,
    "spacing": choice(*SPACINGS),
    "variance": choice("fixed_small", "fixed_large"),
    "clip_x0": BOOLEAN,
    "batch_size": integer(1),
    "guidance_scale": optional(NON_NEGATIVE),
    "guidance_interval": optional(list_of(NON_NEGATIVE, "non-negative numbers")),
    "churn": NON_NEGATIVE,
    "churn_min": NON_NEGATIVE,
    "churn_max": number(0, infinite=True),
    "noise_scale": POSITIVE,
}
DATA = {
    "name": registered(DATASETS),
    "root": optional(PATH),
    "batch_size": integer(1),
    "val_fraction": FRACTION_OPEN,
    "pad": integer(0),
    "split_seed": SEED,
    "num_points": integer(2),
    "num_test_points": integer(1),
    "noise": NON_NEGATIVE,
}
MODEL = {
    "in_channels": integer(1),
    "model_channels": integer(1),
    "num_timesteps": integer(2),
    "channel_multipliers": list_of(integer(1), "integers ≥ 1"),
    "block_layer": choice(*BLOCK_LAYERS),
    "num_blocks_per_level": integer(1),
    "block_groups": integer(1),
    "num_attention_heads": integer(1),
    "num_classes": optional(integer(2)),
    "in_dim": integer(1),
    "hidden_dim": integer(2),
    "num_layers": integer(1),
    "sample_size": integer(1),
    "block_out_channels": list_of(integer(1), "integers ≥ 1"),
    "layers_per_block": integer(1),
    "down_block_types": list_of(CLASS_NAME, "diffusers block names"),
    "up_block_types": list_of(CLASS_NAME, "diffusers block names"),
    "norm_num_groups": integer(1),
    "attention_head_dim": integer(1),
    "dim": integer(1),
    "dim_mults": list_of(integer(1), "integers ≥ 1"),
    "attn_heads": integer(1),
    "attn_dim_head": integer(1),
    "channels_last": BOOLEAN,
    "compile": BOOLEAN,
}
SCHEDULE = {
    "name": choice(*BETA_SCHEDULES),
    "num_timesteps": integer(2),
    "s": POSITIVE,
    "beta_start": FRACTION_OPEN,
    "beta_end": FRACTION_OPEN,
    "start": number(),
    "end": number(),
    "tau": POSITIVE,
}
OPTIMIZER = {"lr": POSITIVE, "weight_decay": NON_NEGATIVE}
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
        lambda v: (isinstance(v, str) and v in PRECISIONS) or (is_integer(v) and v in (16, 32, 64)),
    ),
    "max_epochs": integer(-1) | Spec("null", lambda v: v is None),
    "max_steps": integer(-1),
    "log_every_n_steps": integer(1),
    "fast_dev_run": BOOLEAN | integer(1),
    "overfit_batches": integer(0) | number(0, 1),
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
    "fld.test_num_samples": Spec(
        "0 (off) or an integer ≥ 2", lambda v: is_integer(v) and (v == 0 or v >= 2)
    ),
    "last_checkpoint.dirpath": optional(PATH),
    "sample_grid.dirpath": PATH,
    "sample_grid.every_n_epochs": integer(1),
    "sample_grid.num_samples": integer(1),
    "sample_grid.seed": SEED,
    "ema.decay": FRACTION_OPEN,
    "ema.warmup": BOOLEAN,
    "ema.update_every_n_steps": integer(1),
    "ema.sigma_rel": optional(number(0, MAX_SIGMA_REL, low_open=True)),
    "model_summary.max_depth": integer(-1),
    "time_budget.every_n_steps": integer(1),
    "throughput.batch_size_fn.path": TARGET,
    **{
        f"{callback}.sampler.{key}": spec
        for callback in ("fld", "sample_grid")
        for key, spec in SAMPLER.items()
    },
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


def mount(prefix: str, table: dict[str, Spec]) -> dict[str, Spec]:
    """`table`'s keys under `prefix.`."""
    return {f"{prefix}.{key}": spec for key, spec in table.items()}


SCHEMAS: dict[str, dict[str, Spec]] = {
    "train": {
        "task_name": NAME,
        "seed": optional(SEED),
        "ckpt_path": optional(PATH),
        "optimized_metric": optional(TEXT),
        "test": BOOLEAN,
        "diffusion.objective": choice(*(o.value for o in Objective)),
        "diffusion.loss": choice(*(o.value for o in LossType)),
        "diffusion.weighting": choice(*(o.value for o in Weighting)),
        "diffusion.min_snr_gamma": POSITIVE,
        "diffusion.noise_levels": choice(*(o.value for o in NoiseLevels)),
        "diffusion.p_mean": number(),
        "diffusion.p_std": POSITIVE,
        "diffusion.p_uncond": number(0, 1, high_open=True),
        "lr_schedule.warmup_steps": integer(0),
        "lr_schedule.cosine_decay": BOOLEAN,
        **mount("data", DATA),
        **mount("model", MODEL),
        **mount("schedule", SCHEDULE),
        **mount("optimizer", OPTIMIZER),
        **mount("trainer", TRAINER),
        **mount("callbacks", CALLBACKS),
        **mount("logger", LOGGER),
        **mount("paths", PATHS),
    },
    "sample": {
        "task_name": NAME,
        **MODEL_SOURCE,
        "num_samples": integer(1),
        "force": BOOLEAN,
        "labels": optional(choice("all") | list_of(integer(0), "class indices ≥ 0")),
        "same_noise_columns": integer(0),
        "seed": SEED,
        "out_dir": PATH,
        "gif_images": integer(1),
        "gif_frames": integer(1),
        **mount("sampler", SAMPLER),
        **mount("trainer", TRAINER),
        **mount("paths", PATHS),
    },
    "evaluate": {
        "task_name": NAME,
        **MODEL_SOURCE,
        "samples": optional(PATH),
        "dataset": optional(registered(DATASETS)),
        "allow_dataset_mismatch": BOOLEAN,
        "num_samples": integer(2),
        "force": BOOLEAN,
        "seed": SEED,
        "out_dir": PATH,
        **mount("sampler", SAMPLER),
        **mount("trainer", TRAINER),
        **mount("paths", PATHS),
    },
    "export": {
        "task_name": NAME,
        "ckpt_path": optional(PATH),
        "pretrained": optional(TEXT),
        "format": choice("folder", "diffusers", "onnx"),
        "out_dir": PATH,
        "replace_shipped": BOOLEAN,
        "metrics": optional(PATH),
        "record": optional(PATH),
        "name": optional(TEXT),
        "samples": BOOLEAN,
        "num_samples": integer(1),
        "push_to_hub": optional(HUB_REPO),
        **mount("sampler", SAMPLER),
        **mount("paths", PATHS),
    },
    "demo": {
        "task_name": NAME,
        "models": optional(list_of(TEXT, "model names, folders or Hub repo ids")),
        "out_dir": PATH,
        "serve": BOOLEAN,
        "port": integer(1, 65535),
        **mount("sampler", SAMPLER),
        **mount("paths", PATHS),
    },
    "classifier": {
        "task_name": NAME,
        "seed": SEED,
        "lr": POSITIVE,
        "augment.max_shift": integer(0),
        "augment.max_rotation": NON_NEGATIVE,
        "augment.hflip": BOOLEAN,
        "export_dir": optional(PATH),
        "replace_shipped": BOOLEAN,
        **mount("data", DATA),
        **mount("trainer", TRAINER),
        **mount("paths", PATHS),
    },
}


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any, bool]]:
    """(dotted key, resolved plain value, whether it is an interpolation) of every leaf; a key
    whose interpolation cannot be resolved here (e.g. `${hydra:...}` outside a Hydra run) is
    skipped."""
    for key in map(str, node):
        path = f"{prefix}{key}"
        try:
            value = node[key]
            if isinstance(value, ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException:
            continue
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{path}.")
        else:
            yield path, value, OmegaConf.is_interpolation(node, key)


def spec_for(command: str, key: str) -> Spec | None:
    """The schema entry of `key`, the shared one of `_target_`, `_partial_` and `_convert_`,
    or None."""
    name = key.rsplit(".", 1)[-1]
    if name == "_target_":
        return TARGET
    if name == "_partial_":
        return BOOLEAN
    if name == "_convert_":
        return CONVERT
    return SCHEMAS[command].get(key)


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


def validate_config(cfg: DictConfig, command: str) -> None:
    """Raise `ConfigError` for the first key of `cfg` whose value its schema refuses, or that
    is not a setting of `command` at all (outside the open sections)."""
    schema = SCHEMAS[command]
    # Keys set directly first, so `model.num_timesteps: ${schedule.num_timesteps}` does not
    # take the blame for a bad schedule.num_timesteps.
    for key, value, _ in sorted(leaves(cfg), key=lambda leaf: leaf[2]):
        spec = spec_for(command, key)
        if spec is None:
            if is_open(key) or is_switched_off(key, value):
                continue
            section = key.rsplit(".", 1)[0] if "." in key else ""
            known = sorted(k for k in schema if k.rsplit(".", 1)[0] == section and "." in k)
            takes = f"; {section} takes {', '.join(k.rsplit('.', 1)[1] for k in known)}"
            raise ConfigError(
                f"{key}={shown(value)}: {key} is not a setting of the {command} command"
                + (takes if section and known else "")
            )
        if not spec.accepts(value):
            raise ConfigError(rejection(key, value, spec))
