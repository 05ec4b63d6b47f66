"""Files never name code: model folders and checkpoints carry named settings of registered
components, `_target_`s of earlier releases load by exact match, and every chain that would
make Hydra call code is refused in one line by every command that loads, its marker file never
written."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from ddpm_lightning import demo as demo_command
from ddpm_lightning import evaluate as evaluate_command
from ddpm_lightning import export as export_command
from ddpm_lightning import sample as sample_command
from ddpm_lightning import train as train_command
from ddpm_lightning.components import (
    REGISTRY,
    TARGETS,
    build,
    component_settings,
    plain_settings,
    register,
)
from ddpm_lightning.config import config_dir
from ddpm_lightning.diffusion import DDIMSampler, NoiseSchedule
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.models import UNet
from ddpm_lightning.sharing import load_folder, load_pretrained
from ddpm_lightning.sharing.folder import CONFIG_NAME
from ddpm_lightning.train import train
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from ddpm_lightning.training.module import DiffusionModule
from ddpm_lightning.training.safety import check_resume_checkpoint
from tests.conftest import run_main, tiny_config, tiny_model_folder, tiny_overrides

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]
LEVELS = ("model", "schedule", "sampler", "optimizer", "data")
EVIL_MODULE = "ddpm_evil_module"


class Evil:
    """A pickle that touches `marker` when loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def chains(marker: Path, folder: Path) -> dict[str, dict]:
    """The probe's chains, each a config that makes Hydra's `instantiate` write `marker`."""
    evil_pickle = folder / "evil.pkl"
    torch.save(Evil(marker), evil_pickle)
    (folder / f"{EVIL_MODULE}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return {
        "prefix_os": {
            "_target_": "ddpm_lightning.models.unet.torch.serialization.os.system",
            "_args_": [f"touch {marker}"],
        },
        "torch_load": {
            "_target_": "ddpm_lightning.models.unet.torch.load",
            "f": str(evil_pickle),
            "weights_only": False,
        },
        "builtins": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]},
        "subprocess": {"_target_": "subprocess.run", "args": ["touch", str(marker)]},
        "importlib": {"_target_": "importlib.import_module", "name": EVIL_MODULE},
        "nested": {
            "name": "unet",
            "model_channels": 8,
            "block_layer": {
                "_target_": "ddpm_lightning.diffusion.schedules.torch.serialization.os.system",
                "_args_": [f"touch {marker}"],
            },
        },
        "nested_known_target": {
            "_target_": "ddpm_lightning.models.UNet",
            "model_channels": {"_target_": "os.system", "_args_": [f"touch {marker}"]},
        },
    }


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """The file a chain would write; the chains' module folder is importable (as the cwd is
    for `python -m`)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, EVIL_MODULE, raising=False)
    return tmp_path / "pwned"


def test_the_torch_load_chain_runs_code_when_hydra_instantiates_it(marker, tmp_path):
    """The payload is real: instantiated by Hydra, as loading did before, it writes the marker
    (Hydra 1.3.8 blocks os, builtins, subprocess and importlib targets itself, not this one),
    and it passed the old prefix allow-list."""
    payload = chains(marker, tmp_path)["torch_load"]
    assert payload["_target_"].startswith("ddpm_lightning.models.")
    instantiate(payload)
    assert marker.exists()


def evil_folder(tmp_path: Path, level: str, payload: dict) -> Path:
    """A tiny model folder whose config.json holds `payload` at `level`."""
    folder = tiny_model_folder(tmp_path / f"folder_{level}")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config[level] = payload
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def evil_checkpoint(tmp_path: Path, level: str, payload: dict) -> Path:
    """A tiny checkpoint (plain values only, so `weights_only=True` loads it) whose
    hyper_parameters hold `payload` at `level`."""
    module = load_folder(tiny_model_folder(tmp_path / "clean"))
    hparams = {**dict(module.hparams), level: payload}
    path = tmp_path / f"evil_{level}.ckpt"
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict()}, path)
    return path


def one_line_naming(message: str, *parts: str) -> None:
    assert "\n" not in message.strip(), message
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "chain",
    [
        "prefix_os",
        "torch_load",
        "builtins",
        "subprocess",
        "importlib",
        "nested",
        "nested_known_target",
    ],
)
def test_loaders_refuse_every_chain_at_every_level(chain, level, marker, tmp_path):
    payload = chains(marker, tmp_path)[chain]
    folder = evil_folder(tmp_path, level, payload)
    checkpoint = evil_checkpoint(tmp_path, level, payload)
    loaders: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: load_folder(folder), DataError, str(folder)),
        (lambda: load_pretrained(folder), DataError, str(folder)),
        (lambda: load_module(checkpoint), ConfigError, str(checkpoint)),
        (lambda: read_checkpoint(checkpoint), ConfigError, str(checkpoint)),
        (lambda: check_resume_checkpoint(checkpoint, {}), ConfigError, str(checkpoint)),
    ]
    for load, error, name in loaders:
        with pytest.raises(error) as info:
            load()
        one_line_naming(str(info.value), name, level)
    assert not marker.exists(), "a loaded file ran code"


def folder_commands(folder: Path, out: Path) -> dict[str, tuple[Callable, list[str]]]:
    run = [f"hydra.run.dir={out / 'run'}", f"paths.output_dir={out / 'run'}"]
    return {
        "sample": (sample_command.main, [f"pretrained={folder}", f"out_dir={out}", *run]),
        "evaluate": (evaluate_command.main, [f"pretrained={folder}", f"out_dir={out}", *run]),
        "export": (export_command.main, [f"pretrained={folder}", f"out_dir={out}", *run]),
        "demo": (demo_command.main, [f"models=[{folder}]", f"out_dir={out}", "serve=false", *run]),
    }


@pytest.mark.parametrize("command", ["sample", "evaluate", "export", "demo"])
@pytest.mark.parametrize(
    ("chain", "level"),
    [
        ("prefix_os", "model"),
        ("torch_load", "schedule"),
        ("nested", "model"),
        ("subprocess", "sampler"),
    ],
)
def test_commands_refuse_a_folder_that_names_code(
    command, chain, level, marker, tmp_path, monkeypatch, capsys
):
    folder = evil_folder(tmp_path, level, chains(marker, tmp_path)[chain])
    out = tmp_path / "out"
    main, argv = folder_commands(folder, out)[command]
    code, stderr = run_main(main, argv, monkeypatch, capsys)
    assert code == 1
    one_line_naming(stderr, "error: ", str(folder), level)
    assert not marker.exists(), f"{command} ran code from {CONFIG_NAME}"
    assert not (out / "samples.npz").exists() and not (out / CONFIG_NAME).exists()


@pytest.mark.parametrize("command", ["sample", "evaluate", "export", "train"])
@pytest.mark.parametrize(
    ("chain", "level"),
    [("prefix_os", "model"), ("builtins", "optimizer"), ("importlib", "data"), ("nested", "model")],
)
def test_commands_refuse_a_checkpoint_that_names_code(
    command, chain, level, marker, data_root, tmp_path, monkeypatch, capsys
):
    checkpoint = evil_checkpoint(tmp_path, level, chains(marker, tmp_path)[chain])
    out = tmp_path / "out"
    run = [f"hydra.run.dir={out / 'run'}", f"paths.output_dir={out / 'run'}"]
    main = {
        "sample": sample_command.main,
        "evaluate": evaluate_command.main,
        "export": export_command.main,
        "train": train_command.main,
    }[command]
    argv = [f"ckpt_path={checkpoint}", f"out_dir={out}", *run]
    if command == "train":
        argv = tiny_overrides(data_root, out / "run", *SHORT, f"ckpt_path={checkpoint}")
        argv.append(f"hydra.run.dir={out / 'run'}")
    code, stderr = run_main(main, argv, monkeypatch, capsys)
    assert code == 1
    one_line_naming(stderr, "error: ", str(checkpoint), level)
    assert not marker.exists(), f"{command} ran code from a checkpoint"


def test_new_checkpoints_and_folders_name_components_not_code(data_root, tmp_path):
    train(tiny_config(data_root, tmp_path / "run", *SHORT))
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = saved["hyper_parameters"]
    assert hparams["model"]["name"] == "unet" and hparams["schedule"]["name"] == "cosine"
    assert hparams["optimizer"] == {"name": "adam", "lr": 1e-3}
    folder = tiny_model_folder(tmp_path / "folder")
    assert "_target_" not in (folder / CONFIG_NAME).read_text()


def test_release_targets_map_exactly_to_their_components():
    legacy = {
        "_target_": "ddpm_lightning.schedules.NoiseSchedule",
        "name": "linear",
        "num_timesteps": 10,
    }
    assert component_settings("schedule", legacy) == {"name": "linear", "num_timesteps": 10}
    assert isinstance(build("schedule", legacy), NoiseSchedule)
    sampler = build("sampler", {"_target_": TARGETS_BY_NAME["ddim"], "_partial_": True})
    assert sampler.func is DDIMSampler
    for near_miss in (
        "ddpm_lightning.models.UNet.__init__",
        "ddpm_lightning.models.UNetX",
        " ddpm_lightning.models.UNet",
        "ddpm_lightning.models.unet.UNet.forward.__globals__",
    ):
        with pytest.raises(ConfigError, match=r"^model\._target_=.* is refused"):
            build("model", {"_target_": near_miss})


TARGETS_BY_NAME = {name: target for target, (kind, name) in TARGETS.items() if kind == "sampler"}


def test_every_target_in_conf_is_a_known_component():
    """What conf/ selects with `_target_` for a component maps to a registered one."""
    import yaml

    for kind in ("model", "schedule", "sampler", "optimizer"):
        for path in sorted((config_dir() / kind).glob("*.yaml")):
            target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
            if target is not None:
                assert TARGETS[target][0] == kind, path


def test_a_settings_error_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^model\.name='resnet' is not a registered model"):
        build("model", {"name": "resnet"})
    with pytest.raises(ConfigError, match=r"^model: .*unexpected keyword argument 'widht'"):
        build("model", {"name": "unet", "widht": 3})
    with pytest.raises(ConfigError, match=r"^model\._target_ names a sampler, not a model"):
        build("model", {"_target_": TARGETS_BY_NAME["ddim"]})
    with pytest.raises(ConfigError, match=r"^f\.json: config\._recursive_ is refused"):
        plain_settings({"config": {"_recursive_": False}}, "f.json")
    with pytest.raises(ConfigError, match=r"^schedule must be a mapping"):
        component_settings("schedule", "cosine")


def test_a_registered_network_builds_and_names_itself():
    register("model", "small_unet", UNet)
    try:
        module = DiffusionModule(
            {
                "name": "small_unet",
                "model_channels": 8,
                "channel_multipliers": [1, 2],
                "block_groups": 4,
                "num_attention_heads": 2,
                "num_timesteps": 20,
            },
            {"name": "cosine", "num_timesteps": 20},
        )
        assert module.hparams["model"]["name"] == "small_unet"
        assert isinstance(module.model, UNet)
    finally:
        del REGISTRY["model"]["small_unet"]
    with pytest.raises(ConfigError, match=r"^register: kind='loss' is not one of model"):
        register("loss", "l3", UNet)


def release_form(settings: dict, target: str, partial: bool = False) -> dict:
    """Named settings as an earlier release wrote them: a `_target_` instead of the name."""
    rest = {key: value for key, value in settings.items() if key != "name"}
    return {"_target_": target, **({"_partial_": True} if partial else {}), **rest}


def test_a_model_folder_of_an_earlier_release_loads_the_same_model(tmp_path):
    folder = tiny_model_folder(tmp_path / "today")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert "_target_" not in json.dumps(config)
    old = {
        **config,
        "model": release_form(config["model"], "ddpm_lightning.models.UNet"),
        "schedule": {"_target_": "ddpm_lightning.schedules.NoiseSchedule", **config["schedule"]},
        "optimizer": release_form({"name": "adam", "lr": 2e-4}, "torch.optim.Adam", True),
        "sampler": release_form({"num_steps": 7}, TARGETS_BY_NAME["ddim"], True),
    }
    (folder / CONFIG_NAME).write_text(json.dumps(old))
    module = load_folder(folder)
    assert module.hparams["model"] == config["model"]
    assert module.hparams["optimizer"] == {"name": "adam", "lr": 2e-4}
    today = load_folder(tiny_model_folder(tmp_path / "again"))
    x, t, _ = module.example_input()
    torch.testing.assert_close(module(x + 0.5, t + 3), today(x + 0.5, t + 3), rtol=0, atol=0)
