"""The ONNX export (`export format=onnx`, ddpm_lightning.sharing.onnx): onnxruntime gives the
torch network's outputs at any batch size, model.json holds what a sampler needs beside the
network, and what cannot be exported is one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_lightning import export as export_command
from ddpm_lightning.components import build
from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion.samplers import timestep_sequence
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.export import export
from ddpm_lightning.sharing import load_folder
from ddpm_lightning.sharing.folder import GUIDE_DIR
from tests.conftest import run_command, tiny_model_folder

try:
    import onnxruntime
except ImportError:
    onnxruntime = None
needs_onnxruntime = pytest.mark.skipif(
    onnxruntime is None,
    reason="onnxruntime is not installed: pip install -e '.[onnx]' (CI installs it)",
)
# conf/export.yaml sets sampler.num_steps, which DDPM does not take.
DDPM = ["sampler=ddpm"]
FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def onnx_config(out_dir: Path, *overrides: str):
    return compose_config(
        "export", [f"out_dir={out_dir}", f"paths.output_dir={out_dir}", "format=onnx", *overrides]
    )


@pytest.fixture(scope="module", params=["unconditional", "conditional"])
def exported(request, tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, export folder) of a tiny random-init UNet: unconditional with the v
    objective on MNIST, or class-conditional with the x0 objective on Fashion-MNIST."""
    if onnxruntime is None:
        pytest.skip("onnxruntime is not installed: pip install -e '.[onnx]' (CI installs it)")
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "conditional":
        folder = tiny_model_folder(root / "model", "x0", num_classes=10, dataset="fashion_mnist")
    else:
        folder = tiny_model_folder(root / "model", "v")
    export(onnx_config(root / "onnx", f"pretrained={folder}"))
    return folder, root / "onnx"


@needs_onnxruntime
@pytest.mark.parametrize("batch_size", [1, 7])
def test_onnxruntime_gives_the_networks_outputs(exported, batch_size):
    folder, out_dir = exported
    network = load_folder(folder).model
    runtime = onnxruntime.InferenceSession(out_dir / "model.onnx")
    generator = torch.Generator().manual_seed(batch_size)
    inputs = {
        "x": torch.randn(batch_size, 1, 32, 32, generator=generator),
        "t": torch.randint(0, 20, (batch_size,), generator=generator),
    }
    if network.num_classes is not None:
        inputs["y"] = torch.randint(0, 11, (batch_size,), generator=generator)  # 10: null label
    assert [i.name for i in runtime.get_inputs()] == list(inputs)
    (output,) = runtime.run(None, {key: value.numpy() for key, value in inputs.items()})
    with torch.no_grad():
        expected = network(*inputs.values()).numpy()
    assert output.shape == (batch_size, 1, 32, 32)
    assert np.abs(output - expected).max() <= 1e-4
    assert expected.std() > 0.01


@needs_onnxruntime
def test_model_json_holds_what_a_sampler_needs(exported):
    folder, out_dir = exported
    module = load_folder(folder)
    record = json.loads((out_dir / "model.json").read_text())
    schedule = module.diffusion.schedule
    assert torch.equal(
        torch.tensor(record["schedule"]["alphas_cumprod"], dtype=torch.float32),
        schedule.alphas_cumprod,
    )
    assert torch.equal(
        torch.tensor(record["schedule"]["posterior_mean_coef1"], dtype=torch.float32),
        schedule.posterior_mean_coef1,
    )
    assert len(record["schedule"]["betas"]) == record["num_timesteps"] == 20
    assert record["data_shape"] == [1, 32, 32]
    assert record["ddpm_lightning_version"] == "0.2.0"
    sampler = {"num_steps": 20, "eta": 1.0, "spacing": "uniform", "clip_x0": True}
    if module.num_classes is None:
        assert record["objective"] == "v"
        assert record["dataset"] == "mnist"
        assert record["inputs"] == ["x", "t"]
        assert record["num_classes"] is None
        assert record["class_names"] == [str(digit) for digit in range(10)]
        assert record["sampler"] == {
            "name": "ddim",
            **sampler,
            "guidance_scale": None,
            "guidance_interval": None,
        }
    else:
        assert record["objective"] == "x0"
        assert record["inputs"] == ["x", "t", "y"]
        assert record["num_classes"] == 10
        assert record["class_names"] == FASHION_NAMES
        assert record["sampler"] == {
            "name": "ddim",
            **sampler,
            "guidance_scale": 1.25,
            "guidance_interval": [0.3, 4.0],
        }


@needs_onnxruntime
def test_a_student_of_distilled_guidance_takes_guidance_as_an_input(tmp_path):
    """model.onnx of a student of distilled guidance has a fourth input, guidance (B,) float32,
    model.json names it, and onnxruntime gives torch's outputs, which γ changes."""
    folder = tiny_model_folder(tmp_path / "model", "v", num_classes=10, guidance_embedding=True)
    export(onnx_config(tmp_path / "onnx", f"pretrained={folder}"))
    record = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert record["inputs"] == ["x", "t", "y", "guidance"]
    runtime = onnxruntime.InferenceSession(tmp_path / "onnx" / "model.onnx")
    assert [(i.name, i.type) for i in runtime.get_inputs()][3] == ("guidance", "tensor(float)")
    network = load_folder(folder).model
    generator = torch.Generator().manual_seed(5)
    inputs = {
        "x": torch.randn(3, 1, 32, 32, generator=generator),
        "t": torch.tensor([2, 9, 17]),
        "y": torch.tensor([0, 4, 10]),
        "guidance": torch.tensor([1.0, 2.5, 0.0]),
    }
    (output,) = runtime.run(None, {key: value.numpy() for key, value in inputs.items()})
    with torch.no_grad():
        expected = network(*inputs.values()).numpy()
        unguided = network(*list(inputs.values())[:3]).numpy()
    assert np.abs(output - expected).max() <= 1e-4
    assert np.abs(expected - unguided)[0].max() <= 1e-6
    assert np.abs(expected - unguided)[1:].max() > 1e-3


@needs_onnxruntime
def test_the_recommended_sampler_follows_the_sampler_option(tmp_path):
    folder = tiny_model_folder(tmp_path / "model")
    out_dir = tmp_path / "onnx"
    export(onnx_config(out_dir, f"pretrained={folder}", *DDPM, "sampler.clip_x0=false"))
    record = json.loads((out_dir / "model.json").read_text())
    assert record["sampler"] == {
        "name": "ddpm",
        "variance": "fixed_small",
        "clip_x0": False,
        "guidance_scale": None,
        "guidance_interval": None,
    }
    conditional = tiny_model_folder(tmp_path / "conditional", "v", 10)
    for i, (interval, expected) in enumerate((("[0.5,3]", [0.5, 3.0]), ("null", None))):
        out_dir = tmp_path / f"guided_{i}"
        option = f"sampler.guidance_interval={interval}"
        export(onnx_config(out_dir, f"pretrained={conditional}", option))
        record = json.loads((out_dir / "model.json").read_text())
        assert record["sampler"]["guidance_scale"] == 1.25
        assert record["sampler"]["guidance_interval"] == expected


@needs_onnxruntime
def test_a_consistency_students_record_rebuilds_its_timesteps(tmp_path):
    """With sampler=consistency, model.json's record holds num_steps, spacing and the visited
    timesteps; num_steps of the spacing rebuild them, and an explicit list, which no spacing
    gives, is kept as it is."""
    folder = tiny_model_folder(tmp_path / "model", "v")
    module = load_folder(folder)
    cases = {
        "spaced": (["sampler.num_steps=2"], [19, 9]),
        "listed": (["sampler.timesteps=[19,12,3]", "sampler.clip_x0=false"], [19, 12, 3]),
    }
    for name, (overrides, visited) in cases.items():
        out_dir = tmp_path / name
        export(onnx_config(out_dir, f"pretrained={folder}", "sampler=consistency", *overrides))
        record = json.loads((out_dir / "model.json").read_text())["sampler"]
        assert record == {
            "name": "consistency",
            "num_steps": len(visited),
            "spacing": "trailing",
            "timesteps": visited,
            "clip_x0": name == "spaced",
            "guidance_scale": None,
            "guidance_interval": None,
        }
        for keys in (("num_steps", "spacing"), ("timesteps",)):
            settings = {"name": "consistency", **{key: record[key] for key in keys}}
            rebuilt = module.make_sampler(build("sampler", settings), progress=False)
            assert (rebuilt.steps() == visited) is (name == "spaced" or keys == ("timesteps",))
    assert timestep_sequence(module.diffusion.schedule, 3, "trailing") == [19, 12, 6]


@needs_onnxruntime
def test_what_the_onnx_format_cannot_do_is_one_line(tmp_path):
    folder = tiny_model_folder(tmp_path / "model")
    with pytest.raises(ConfigError) as info:
        export(onnx_config(tmp_path / "a", f"pretrained={folder}", "sampler=heun"))
    assert str(info.value) == (
        "sampler=heun has no port outside PyTorch: the ONNX record and the demo page take "
        "sampler=ddim, sampler=ddpm, sampler=consistency, sampler=flow_euler or "
        "sampler=flow_heun"
    )
    with pytest.raises(ConfigError, match=r"^push_to_hub=me/tiny uploads model folders: drop it"):
        export(onnx_config(tmp_path / "b", f"pretrained={folder}", "push_to_hub=me/tiny"))
    with pytest.raises(
        ConfigError, match=r"^format=png is not supported; .*\['folder', 'diffusers', 'onnx'\]"
    ):
        export(onnx_config(tmp_path / "c", f"pretrained={folder}", "format=png"))
    flow = tiny_model_folder(tmp_path / "flow", objective="flow")
    with pytest.raises(ConfigError, match=r"^sampler=ddim follows the ᾱ path but the model "):
        export(onnx_config(tmp_path / "d", f"pretrained={flow}", "sampler=ddim"))
    assert not (tmp_path / "d" / "model.json").exists()


@needs_onnxruntime
def test_a_flow_model_exports_with_its_flow_sampler(tmp_path, monkeypatch, capsys):
    """A flow model's record names the flow objective and its sampler: flow_heun (25 steps, so
    all T = 20) from a command line that chooses none, as `sample` draws it, or the one chosen."""
    flow = tiny_model_folder(tmp_path / "flow", objective="flow")
    argv = [f"pretrained={flow}", "format=onnx", f"out_dir={tmp_path / 'out0'}"]
    code, _, stderr = run_command(export_command.main, argv, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    export(
        onnx_config(
            tmp_path / "out1", f"pretrained={flow}", "sampler=flow_euler", "sampler.num_steps=7"
        )
    )
    for number, expected in enumerate([("flow_heun", 20), ("flow_euler", 7)]):
        record = json.loads((tmp_path / f"out{number}" / "model.json").read_text())
        assert (record["objective"], record["num_timesteps"]) == ("flow", 20)
        assert (record["sampler"]["name"], record["sampler"]["num_steps"]) == expected


def test_a_missing_onnx_extra_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    folder = tiny_model_folder(tmp_path / "model")
    with pytest.raises(ConfigError) as info:
        export(onnx_config(tmp_path / "onnx", f"pretrained={folder}"))
    assert str(info.value) == (
        "format=onnx needs the onnx extra (onnxscript is not installed): "
        "pip install 'ddpm_lightning[onnx]'"
    )
    assert not (tmp_path / "onnx" / "model.onnx").exists()


@needs_onnxruntime
def test_a_guided_model_exports_its_guide_as_guide_onnx(tmp_path, monkeypatch, capsys):
    """A folder that ships a guide exports guide.onnx (the guide network's torch output) and
    model.json's `guide`, starting at autoguidance's γ = 1.5 at every step as `sample` draws it;
    the command line's γ wins; `guide=` adds one to a folder without or replaces the shipped
    one; guide=false leaves it out."""
    folder = tiny_model_folder(tmp_path / "guided", "v")
    tiny_model_folder(folder / GUIDE_DIR, "eps", seed=1)
    plain = tiny_model_folder(tmp_path / "plain", "v")
    weak = tiny_model_folder(tmp_path / "weak", "x0", seed=2)
    cases = [
        ([f"pretrained={folder}"], "eps"),
        ([f"pretrained={plain}", f"guide={weak}"], "x0"),
        ([f"pretrained={folder}", f"guide={weak}"], "x0"),
    ]
    for number, (overrides, objective) in enumerate(cases):
        out = tmp_path / f"out{number}"
        files = export(onnx_config(out, *overrides))
        assert sorted(files) == ["guide.onnx", "model.json", "model.onnx"]
        record = json.loads((out / "model.json").read_text())
        assert record["guide"] == {
            "file": "guide.onnx",
            "inputs": ["x", "t"],
            "objective": objective,
            "num_classes": None,
        }
        sampler = record["sampler"]
        assert (sampler["guidance_scale"], sampler["guidance_interval"]) == (1.5, None)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([19, 7, 0])
    session = onnxruntime.InferenceSession(str(tmp_path / "out2" / "guide.onnx"))
    with torch.no_grad():
        expected = load_folder(weak).model(x, t)
    assert (
        np.abs(session.run(None, {"x": x.numpy(), "t": t.numpy()})[0] - expected.numpy()).max()
        < 1e-4
    )
    out = tmp_path / "command"
    argv = [f"pretrained={folder}", "format=onnx", f"out_dir={out}", "sampler.guidance_scale=2.5"]
    code, printed, stderr = run_command(export_command.main, argv, monkeypatch, capsys)
    assert code == 0, stderr[-2000:]
    assert f"autoguided by guide={folder / GUIDE_DIR}) into {out.resolve()}" in printed[-1]
    assert json.loads((out / "model.json").read_text())["sampler"]["guidance_scale"] == 2.5
    for number, overrides in enumerate(
        [[f"pretrained={folder}", "guide=false"], [f"pretrained={plain}"]]
    ):
        out = tmp_path / f"alone{number}"
        assert sorted(export(onnx_config(out, *overrides))) == ["model.json", "model.onnx"]
        assert "guide" not in json.loads((out / "model.json").read_text())
        assert not (out / "guide.onnx").exists()
