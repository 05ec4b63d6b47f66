"""One source of truth: a data module's, a network's, a schedule's and a sampler's defaults live in
its signature alone, an optimizer's in torch's; conf/ selects a component and overrides what
differs, and never repeats a default."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from ddpm_lightning.components import REGISTRY, build, component_settings
from ddpm_lightning.components.defaults import class_defaults, components
from ddpm_lightning.components.registry import OPTIMIZER_SETTINGS
from ddpm_lightning.config import compose_config, config_dir
from ddpm_lightning.config.defaults import KINDS
from ddpm_lightning.diffusion import DDIMSampler, NoiseSchedule
from ddpm_lightning.diffusion.denoiser import Denoiser, denoiser_options
from ddpm_lightning.errors import ConfigError

COMMAND = {"sampler": "sample"}


def option_files(kind: str) -> list[Path]:
    return sorted((config_dir() / kind).glob("*.yaml"))


def option_file(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def own_settings(path: Path) -> dict[str, Any]:
    """The keys a YAML option sets itself (its defaults list aside)."""
    return {k: v for k, v in option_file(path).items() if k != "defaults"}


def parents(path: Path) -> list[str]:
    return [p for p in option_file(path).get("defaults", []) if p != "_self_"]


def component_of(path: Path) -> str:
    """The component an option configures: the `schema/<kind>/<name>` under its defaults."""
    parent = parents(path)[0]
    if not parent.startswith("/"):
        return component_of(path.parent / f"{parent}.yaml")
    return parent.split("/")[-1].split("@")[0]


def repeated_defaults(kind: str, name: str, settings: dict[str, Any]) -> list[str]:
    """The keys of `settings` whose value is the class default of `kind`/`name`."""
    defaults = class_defaults(kind, name)
    return sorted(key for key, value in settings.items() if defaults.get(key, object()) == value)


def composed(kind: str, option: str) -> dict[str, Any]:
    """The settings `kind=option` composes to, interpolations as written, Hydra's keys aside."""
    cfg = compose_config(COMMAND.get(kind, "train"), [f"{kind}={option}"])
    section = OmegaConf.to_container(cfg[kind], resolve=False)
    assert isinstance(section, dict)
    return {key: value for key, value in section.items() if not str(key).startswith("_")}


@pytest.mark.parametrize("kind", KINDS)
def test_every_option_extends_its_components_defaults(kind):
    for path in option_files(kind):
        assert parents(path), path.name
        assert component_of(path) in components(kind), path.name


@pytest.mark.parametrize("kind", KINDS)
def test_no_yaml_option_repeats_a_default_of_its_class(kind):
    repeats = {
        path.name: repeated_defaults(kind, component_of(path), own_settings(path))
        for path in option_files(kind)
    }
    assert {name: keys for name, keys in repeats.items() if keys} == {}


def test_the_check_sees_a_repeated_default():
    assert repeated_defaults("sampler", "ddim", {"eta": 1.0, "num_steps": 20}) == ["eta"]
    assert repeated_defaults("model", "unet", {"model_channels": 16}) == ["model_channels"]
    assert repeated_defaults("data", "spiral", {"batch_size": 256, "noise": 0.1}) == ["batch_size"]
    assert repeated_defaults("optimizer", "adamw", {"lr": 2e-4, "weight_decay": 0.01}) == [
        "weight_decay"
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_an_option_composes_to_its_class_defaults_and_its_own_overrides(kind):
    for path in option_files(kind):
        settings = composed(kind, path.stem)
        defaults = class_defaults(kind, component_of(path))
        differing = {key for key in settings if settings[key] != defaults.get(key)}
        own = set(own_settings(path))
        for parent in parents(path):
            if not parent.startswith("/"):
                own |= set(own_settings(path.parent / f"{parent}.yaml"))
        assert differing <= own, (path.name, differing - own)
        assert set(defaults) == set(settings), path.name


def test_a_dataset_and_a_schedule_are_named_by_their_option():
    assert composed("data", "fashion_mnist")["name"] == "fashion_mnist"
    assert composed("schedule", "linear")["name"] == "linear"
    assert "name" not in composed("data", "spiral")


def test_the_python_defaults_are_the_command_lines():
    """`DDIMSampler(schedule)` in Python samples as `sampler=ddim` does."""
    schedule = NoiseSchedule()
    from_python = DDIMSampler(schedule, progress=False)
    denoiser = Denoiser(ConditionalNetwork(), schedule, "eps")
    sampler = compose_config("sample", ["sampler=ddim"]).sampler
    from_config = build("sampler", component_settings("sampler", sampler))
    factory, options, denoising = denoiser_options(from_config, {"progress": False})
    built = factory(schedule=schedule, **options)
    built_denoiser = Denoiser(ConditionalNetwork(), schedule, "eps", **denoising)
    for attribute in ("eta", "timesteps", "batch_size"):
        assert getattr(from_python, attribute) == getattr(built, attribute), attribute
    assert denoiser.settings() == built_denoiser.settings()
    assert from_python.eta == 1.0 and denoiser.guidance_interval == (0.3, 4.0)


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "optimizer"])
def test_every_component_has_its_defaults_in_conf(kind):
    for name, component in components(kind).items():
        defaults = class_defaults(kind, name)
        assert defaults, (kind, name)
        assert all(
            parameter in defaults
            for parameter, value in inspect.signature(component).parameters.items()
            if value.default is not inspect.Parameter.empty
            and parameter not in ("objective", "progress")
        ), (kind, name)


def test_an_optimizer_gets_the_settings_declared_for_it_with_torchs_defaults():
    assert class_defaults("optimizer", "adam") == {"lr": 1e-3}
    assert class_defaults("optimizer", "adamw") == {"lr": 1e-3, "weight_decay": 1e-2}
    for name, settings in OPTIMIZER_SETTINGS.items():
        torch_defaults = inspect.signature(REGISTRY["optimizer"][name]).parameters
        assert set(settings.__annotations__) <= set(torch_defaults), name


def test_list_settings_from_a_config_pass_the_same_checks_as_python_lists():
    """Hydra hands constructors ListConfigs: their bounds are checked item by item, as lists'."""
    schedule = NoiseSchedule(num_timesteps=20)
    interval = OmegaConf.create({"i": [0.3, 4]}).i
    network = ConditionalNetwork()
    guided = Denoiser(network, schedule, "eps", guidance_interval=interval)
    assert guided.guidance_interval == (0.3, 4.0)
    with pytest.raises(ConfigError, match=r"sampler.guidance_interval=\[-1.0, 4\]"):
        Denoiser(network, schedule, "eps", guidance_interval=OmegaConf.create({"i": [-1.0, 4]}).i)


class ConditionalNetwork:
    """A stand-in conditional network (10 classes): its denoiser keeps a guidance interval."""

    num_classes = 10

    def __call__(self, x, t, y):
        return x
