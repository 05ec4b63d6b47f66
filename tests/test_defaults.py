"""One source of truth: a network's, a schedule's and a sampler's defaults live in its signature
alone; conf/ selects a component and overrides what differs, and never repeats a default."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml

from ddpm_lightning.components import REGISTRY, build, component_settings
from ddpm_lightning.config import compose_config, config_dir
from ddpm_lightning.config.defaults import KINDS, class_defaults
from ddpm_lightning.diffusion import DDIMSampler, NoiseSchedule

COMMAND = {"model": "train", "schedule": "train", "sampler": "sample"}


def option_files(kind: str) -> list[Path]:
    return sorted((config_dir() / kind).glob("*.yaml"))


def own_settings(path: Path) -> dict[str, Any]:
    """The keys a YAML option sets itself (its defaults list aside)."""
    return {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}


def repeated_defaults(kind: str, name: str, settings: dict[str, Any]) -> list[str]:
    """The keys of `settings` whose value is the class default of `kind`/`name`."""
    defaults = class_defaults(kind, name)
    return sorted(key for key, value in settings.items() if defaults.get(key, object()) == value)


def composed(kind: str, option: str) -> dict[str, Any]:
    return component_settings(kind, compose_config(COMMAND[kind], [f"{kind}={option}"])[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_no_yaml_option_repeats_a_default_of_its_class(kind):
    repeats = {
        path.name: repeated_defaults(kind, composed(kind, path.stem)["name"], own_settings(path))
        for path in option_files(kind)
    }
    assert {name: keys for name, keys in repeats.items() if keys} == {}


def test_the_check_sees_a_repeated_default():
    assert repeated_defaults("sampler", "ddim", {"eta": 1.0, "num_steps": 20}) == ["eta"]
    assert repeated_defaults("model", "unet", {"model_channels": 16}) == ["model_channels"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_option_composes_to_its_class_defaults_and_its_own_overrides(kind):
    for path in option_files(kind):
        settings = composed(kind, path.stem)
        defaults = {"name": settings["name"], **class_defaults(kind, settings["name"])}
        differing = {key for key in settings if settings[key] != defaults.get(key)}
        own = set(own_settings(path))
        for parent in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
            if isinstance(parent, str) and parent != "_self_" and not parent.startswith("/"):
                own |= set(own_settings(path.parent / f"{parent}.yaml"))
        assert differing <= own, (path.name, differing - own)
        assert set(defaults) <= set(settings), path.name


def test_the_python_defaults_are_the_command_lines():
    """`DDIMSampler(schedule)` in Python samples as `sampler=ddim` does."""
    schedule = NoiseSchedule()
    from_python = DDIMSampler(schedule, progress=False)
    from_config = build("sampler", composed("sampler", "ddim"))(schedule=schedule, progress=False)
    for attribute in ("eta", "timesteps", "guidance_interval", "clip_x0", "batch_size"):
        assert getattr(from_python, attribute) == getattr(from_config, attribute), attribute
    assert from_python.eta == 1.0 and from_python.guidance_interval == (0.3, 4.0)


def test_every_registered_component_has_its_defaults_in_conf():
    for kind in KINDS:
        for name, component in REGISTRY[kind].items():
            defaults = class_defaults(kind, name)
            assert defaults, (kind, name)
            assert all(
                parameter in defaults
                for parameter, value in inspect.signature(component).parameters.items()
                if value.default is not inspect.Parameter.empty
                and parameter not in ("objective", "progress")
            ), (kind, name)
