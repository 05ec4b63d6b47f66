"""The package's layers: imports run only downward, and checkpoints of the release before the
split into layers still load and sample the same images."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from ddpm_lightning.diffusion import DDIMSampler
from ddpm_lightning.train import build_module
from ddpm_lightning.training import DiffusionModule
from ddpm_lightning.training.checkpoints import load_module, read_checkpoint
from ddpm_lightning.training.safety import check_resume_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "ddpm_lightning"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Higher layers may import lower ones, never the reverse. Top-level modules are the commands a
# user types, and `tools/` holds the commands around them.
LAYERS = {
    "errors": 0,
    "settings": 1,
    "diffusion": 2,
    "models": 2,
    "data": 2,
    "components": 3,
    "evaluation": 3,
    "training": 4,
    "editing": 4,
    "sharing": 5,
    "distill": 5,
    "config": 6,
}
COMMAND_LAYER = 7
COMMAND_ROOMS = ("", "tools")
# Top-level modules that are no command: the package's front door and the error types.
NOT_COMMANDS = ("__init__", "errors")


def layer(module: str) -> tuple[int, str]:
    """(rank, room) of a dotted module name inside the package."""
    room = module.split(".")[1] if "." in module else ""
    return LAYERS.get(room, COMMAND_LAYER), room


def support_modules_beside_the_commands(package: Path) -> list[str]:
    """Top-level modules (and modules of `tools/`) that define no `main`: support code that
    belongs in a layer."""
    found = []
    for room in COMMAND_ROOMS:
        for path in sorted((package / room).glob("*.py")):
            if room == "" and path.stem in NOT_COMMANDS or path.stem == "__init__":
                continue
            names = set()
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.FunctionDef):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            if "main" not in names:
                found.append(str(path.relative_to(package)))
    return found


def package_imports(path: Path) -> list[str]:
    """The `ddpm_lightning.*` modules a source file imports."""
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name.startswith("ddpm_lightning.")]


def upward_imports() -> list[str]:
    """'importer -> imported' for every import that goes sideways or up a layer."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        rank, room = layer(module)
        for imported in package_imports(path):
            other_rank, other_room = layer(imported)
            if room == other_room and room:
                continue
            if other_rank >= rank and not (rank == COMMAND_LAYER and other_rank == COMMAND_LAYER):
                found.append(f"{module} -> {imported}")
    return found


def test_imports_only_run_downward():
    assert upward_imports() == []


def test_only_commands_sit_beside_the_commands():
    assert support_modules_beside_the_commands(PACKAGE) == []


def test_the_command_floor_check_sees_a_support_module(tmp_path):
    package = tmp_path / "ddpm_lightning"
    (package / "tools").mkdir(parents=True)
    (package / "train.py").write_text("def main():\n    pass\n")
    (package / "tools" / "bench.py").write_text("main = lambda: None\n")
    (package / "helpers.py").write_text("def helper():\n    pass\n")
    assert support_modules_beside_the_commands(package) == ["helpers.py"]


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    rogue = tmp_path / "ddpm_lightning" / "models" / "rogue.py"
    rogue.parent.mkdir(parents=True)
    rogue.write_text("from ddpm_lightning.training.module import DiffusionModule\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "ddpm_lightning")
    assert upward_imports() == ["ddpm_lightning.models.rogue -> ddpm_lightning.training.module"]


def test_every_room_is_a_package():
    rooms = {path.parent.name for path in PACKAGE.glob("*/*.py")}
    assert set(LAYERS) - {"errors"} <= rooms and "tools" in rooms
    for room in rooms:
        assert (PACKAGE / room / "__init__.py").is_file(), room


@pytest.fixture
def release_checkpoint() -> Path:
    """A tiny model trained 2 steps and saved by release 0.1.0 (flat package layout)."""
    path = FIXTURES / "release_0.1.0.ckpt"
    saved = torch.load(path, weights_only=True)["hyper_parameters"]["schedule"]["_target_"]
    assert saved == "ddpm_lightning.schedules.NoiseSchedule"
    return path


def test_a_release_checkpoint_samples_the_same_images(release_checkpoint):
    """The reference images were drawn by release 0.1.0 with seed 0, whose x_T came from one
    generator seeded 0 for the whole batch (samples now draw their own, from (seed, index));
    deterministic DDIM adds no noise after x_T, so that x_T gives the same images, to float
    error: the reference was saved on another CPU, and 5 DDIM steps differ by up to 9.3e-5."""
    module = load_module(release_checkpoint)
    sampler = module.make_sampler(DDIMSampler, num_steps=5, eta=0.0, progress=False)
    release_noise = torch.randn((2, 1, 32, 32), generator=torch.Generator().manual_seed(0))
    images = module.generate(sampler, 2, seed=0, noise=release_noise)
    expected = torch.load(FIXTURES / "release_0.1.0_ddim5_seed0.pt", weights_only=True)
    torch.testing.assert_close(images, expected, rtol=0, atol=2e-4)


def test_a_release_checkpoint_loads_through_lightning(release_checkpoint):
    module = DiffusionModule.load_from_checkpoint(release_checkpoint, weights_only=True)
    assert module.hparams["schedule"] == {"name": "cosine", "num_timesteps": 20, "s": 0.008}
    assert module.hparams["model"]["name"] == "unet"
    assert module.hparams["optimizer"] == {"name": "adam", "lr": 0.0002}
    saved = read_checkpoint(release_checkpoint)["state_dict"]
    assert all(torch.equal(module.state_dict()[key], value) for key, value in saved.items())


def test_a_release_checkpoint_resumes_with_todays_config(release_checkpoint, tmp_path):
    cfg = tiny_config(tmp_path / "data", tmp_path / "run", "diffusion.objective=eps")
    check_resume_checkpoint(release_checkpoint, dict(build_module(cfg, (1, 32, 32)).hparams))
