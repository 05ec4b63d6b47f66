"""A model folder that ships its guide (`guide/`): export writes it, sample and evaluate
autoguide with it unless guide=false or guide= names another, the card says so and its Python
example runs, and a guide that cannot guide the model is refused before anything is written."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ddpm_lightning import load_folder_guide, load_pretrained
from ddpm_lightning import sample as sample_command
from ddpm_lightning.config import compose_config
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluation.fld import sha256
from ddpm_lightning.export import export
from tests.conftest import run_command, tiny_model_folder


def export_config(out_dir: Path, *overrides: str):
    return compose_config(
        "export",
        [f"out_dir={out_dir}", f"paths.output_dir={out_dir}", "sampler.num_steps=3", *overrides],
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny model, a weaker one of the same data and schedule, and the model exported with
    the weaker one as its guide (8 samples in samples.png)."""
    root = tmp_path_factory.mktemp("guided")
    model = tiny_model_folder(root / "model", seed=0)
    weak = tiny_model_folder(root / "weak", seed=1)
    (root / "metrics.json").write_text(json.dumps({"fld": 1.234, "num_samples": 100, "seed": 0}))
    export(
        export_config(
            root / "guided",
            f"pretrained={model}",
            f"guide={weak}",
            f"metrics={root / 'metrics.json'}",
            "num_samples=8",
            "name=guided",
        )
    )
    return {"model": model, "weak": weak, "guided": root / "guided"}


def drawn(argv: list[str], out: Path, monkeypatch, capsys) -> tuple[dict, np.ndarray, list[str]]:
    """samples.npz's metadata and images of the sample command, and what it printed."""
    code, printed, stderr = run_command(
        sample_command.main, [*argv, f"hydra.run.dir={out}"], monkeypatch, capsys
    )
    assert code == 0, stderr[-2000:]
    files = np.load(out / "samples.npz")
    return json.loads(str(files["metadata"])), files["images"], printed


def test_export_writes_the_guide_beside_the_model(models):
    """guide/ holds the weaker model's weights unchanged, its config its own SHA-256; the main
    folder's files are the model's."""
    guided, weak = models["guided"], models["weak"]
    assert sha256(guided / "guide" / "model.safetensors") == sha256(weak / "model.safetensors")
    assert sha256(guided / "model.safetensors") == sha256(models["model"] / "model.safetensors")
    config = json.loads((guided / "guide" / "config.json").read_text())
    assert config["sha256"] == sha256(weak / "model.safetensors")
    assert (
        load_folder_guide(guided).state_dict().keys() == load_pretrained(weak).state_dict().keys()
    )


def test_sampling_the_folder_autoguides_with_its_guide_unless_told_not_to(
    models, tmp_path, monkeypatch, capsys
):
    """pretrained=FOLDER draws as guide=FOLDER/guide would (the same images, γ = 1.5 at every
    step, the guide recorded), says so in one line; guide=false draws the model alone."""
    guided = models["guided"]
    argv = [f"pretrained={guided}", "num_samples=4", "sampler.num_steps=4", "gif_images=1"]
    shipped, images, printed = drawn(argv, tmp_path / "shipped", monkeypatch, capsys)
    assert f"guide: the one pretrained={guided} ships, for autoguidance" in "\n".join(printed)
    assert shipped["guide"] == str(guided / "guide")
    assert shipped["sampler"]["guidance_scale"] == 1.5
    assert shipped["sampler"]["guidance_interval"] is None
    named, same, _ = drawn(
        [*argv, f"guide={models['weak']}"], tmp_path / "named", monkeypatch, capsys
    )
    assert named["guide"] == str(models["weak"])
    np.testing.assert_array_equal(images, same)
    alone, plain, _ = drawn([*argv, "guide=false"], tmp_path / "alone", monkeypatch, capsys)
    assert "guide" not in alone
    assert np.abs(images.astype(int) - plain.astype(int)).max() > 0


def test_the_card_says_how_the_guide_is_used_and_its_example_runs(models):
    """The card has a Guide section and loads the guide in its Python example, which draws."""
    card = (models["guided"] / "README.md").read_text()
    assert "## Guide" in card and "`guide=false` samples without it" in card
    code = (
        card.split("```python\n")[1]
        .split("```")[0]
        .replace('"guided"', repr(str(models["guided"])))
    )
    assert 'module.guide = load_folder_guide("guided")' in card
    assert "guidance_interval=None" in code
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["module"].guide is not None
    assert namespace["images"].shape == (16, 1, 32, 32)


def test_exporting_the_folder_again_keeps_its_guide_or_drops_it(models, tmp_path):
    """Re-exporting a guided folder carries guide/ over; guide=false into the same folder
    removes it."""
    out = tmp_path / "again"
    files = export(export_config(out, f"pretrained={models['guided']}", "samples=false"))
    assert sha256(files["guide/model.safetensors"]) == sha256(models["weak"] / "model.safetensors")
    export(export_config(out, f"pretrained={models['guided']}", "samples=false", "guide=false"))
    assert not (out / "guide").exists()
    assert (out / "model.safetensors").is_file()
    assert "## Guide" not in (out / "README.md").read_text()


def test_a_guide_that_cannot_guide_the_model_is_refused_before_writing(models, tmp_path):
    """A guide of other data, one that is no model, or one for diffusers' pipeline (which has
    no place for it) is one line naming guide=, and out_dir stays empty."""
    colour = tiny_model_folder(tmp_path / "colour", seed=1, shape=(3, 32, 32))
    flow = tiny_model_folder(tmp_path / "flow", objective="flow", seed=1)
    cases = [
        (f"guide={colour}", rf"^guide={colour} models data of shape \(3, 32, 32\)"),
        (f"guide={tmp_path / 'none'}", rf"^guide={tmp_path / 'none'}: pretrained="),
        (
            f"guide={flow}",
            r"^guide= has other noise levels than the model "
            r"\(diffusion.objective=flow against eps\)",
        ),
    ]
    for number, (guide, message) in enumerate(cases):
        out = tmp_path / f"out{number}"
        with pytest.raises(ConfigError, match=message):
            export(export_config(out, f"pretrained={models['model']}", guide, "samples=false"))
        assert not (out / "config.json").exists()
    with pytest.raises(ConfigError, match=r"^guide=\S+: diffusers' DDPMPipeline has no place"):
        export(
            export_config(
                tmp_path / "pipe",
                f"pretrained={models['model']}",
                f"guide={models['weak']}",
                "format=diffusers",
            )
        )
    assert not (tmp_path / "pipe").exists()


def test_a_folder_without_a_guide_says_so(models):
    with pytest.raises(
        ConfigError, match=r"^pretrained=\S+ ships no guide \(no guide/config.json in "
    ):
        load_folder_guide(models["model"])


@pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="needs the hf extra")
def test_a_diffusers_export_of_a_guided_folder_leaves_out_its_guided_fld(models, tmp_path):
    """diffusers' pipeline has no guide, so its card does not claim the autoguided FLD."""
    assert "| 1.23 |" in (models["guided"] / "README.md").read_text()
    files = export(
        export_config(
            tmp_path / "pipe", f"pretrained={models['guided']}", "format=diffusers", "samples=false"
        )
    )
    card = files["README.md"].read_text()
    assert "Not evaluated when exported." in card and "1.23" not in card


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_the_shipped_unconditional_models_ship_their_guides(name):
    """pretrained=mnist and fashion_mnist are autoguided: guide/ holds a smaller model of the
    same data whose weights match its recorded SHA-256 and which may guide the model; the
    recorded FLD is of the two together, at γ = 1.5 on every step, and the card says how the
    guide was trained."""
    from ddpm_lightning.sharing.pretrained import SHIPPED_DIR, check_guide

    folder = SHIPPED_DIR / name
    guide_config = json.loads((folder / "guide" / "config.json").read_text())
    assert guide_config["sha256"] == sha256(folder / "guide" / "model.safetensors")
    model, guide = load_pretrained(name), load_folder_guide(name)
    assert guide.hparams["dataset"] == name and guide.num_classes is None
    assert sum(p.numel() for p in guide.parameters()) < sum(p.numel() for p in model.parameters())
    model.guide = check_guide(guide, model, f"{name}/guide")
    assert model.denoiser().guide is not None
    evaluation = json.loads((folder / "config.json").read_text())["evaluation"]
    assert evaluation["num_samples"] == 10000
    assert evaluation["sampler"]["guidance_scale"] == 1.5
    assert evaluation["sampler"]["guidance_interval"] is None
    card = (folder / "README.md").read_text()
    assert "## Guide" in card and "model.model_channels=8" in card
