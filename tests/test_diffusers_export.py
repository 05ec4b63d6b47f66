"""`export format=diffusers` of our UNet (model=unet, unet_cond): a folder diffusers loads with
the package's DDPMLightningUNet, whose pipelines give our samplers' images from the same noise,
class labels included; its model card; and the networks that cannot be exported."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from ddpm_lightning import load_pretrained
from ddpm_lightning.config import compose_config
from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.diffusion import DDIMSampler, DDPMSampler
from ddpm_lightning.diffusion.noise import sample_seed
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.export import export
from ddpm_lightning.sharing.folder import write_folder
from ddpm_lightning.training.checkpoints import load_module
from ddpm_lightning.training.module import DiffusionModule
from tests.conftest import REPO_ROOT, tiny_model_folder
from tests.test_sharing import card_settings, machine_paths_in, run_with_local_paths

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None,
    reason="diffusers is not installed (the hf extra: pip install 'ddpm_lightning[hf]')",
)
# Images in [0, 1] of diffusers' pipelines against ours, drawn from the same noise.
ATOL = 1e-4


def export_diffusers(out_dir: Path, *overrides: str) -> dict[str, Path]:
    cfg = compose_config(
        "export",
        [f"out_dir={out_dir}", f"paths.output_dir={out_dir}", "format=diffusers", *overrides],
    )
    validate_config(cfg, "export")
    return export(cfg)


def generators(num_samples: int, seed: int = 0) -> list[torch.Generator]:
    """One generator per image, seeded as our samplers seed sample i of a run: diffusers then
    draws x_T and each step's noise of every image in our order."""
    return [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(num_samples)]


def as_unit(images: torch.Tensor) -> torch.Tensor:
    """Our samples (B, C, H, W) in [-1, 1] as the pipelines give them: in [0, 1]."""
    return (images + 1) / 2


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory) -> tuple[Path, Path]:
    """(root, ckpt): the tiny run's checkpoint (model=unet, T=20, v objective) in a run folder
    under a temporary root, with records naming its absolute paths, exported into
    root/out/pipeline without name=."""
    root = tmp_path_factory.mktemp("machine")
    ckpt, records = run_with_local_paths(trained, root)
    files = export_diffusers(
        root / "out" / "pipeline",
        f"ckpt_path={ckpt}",
        *records,
        "num_samples=8",
        "sampler.num_steps=2",
    )
    assert sorted(files) == sorted(p.name for p in (root / "out" / "pipeline").iterdir())
    return root, ckpt


@pytest.fixture(scope="module")
def pipeline_dir(run) -> Path:
    return run[0] / "out" / "pipeline"


def test_the_folder_holds_a_ddpm_pipeline_of_our_unet_and_no_code(pipeline_dir):
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["ddpm_lightning.sharing.diffusers_model", "DDPMLightningUNet"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert (pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(pipeline_dir.rglob("*.py")) and not list(pipeline_dir.rglob("*.bin"))
    scheduler = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["num_train_timesteps"] == 20 and scheduler["prediction_type"] == "v_prediction"


def test_diffusers_ddpm_pipeline_draws_our_ddpm_samples(run, pipeline_dir):
    """DiffusionPipeline.from_pretrained gives a DDPMPipeline around our UNet: one network call
    equals our module's (a 0-d, a (B,) and a fractional timestep alike), and its 20 DDPM steps
    give our DDPMSampler's images from the same generators."""
    from diffusers import DDPMPipeline, DiffusionPipeline

    import ddpm_lightning.sharing.diffusers_model as ours

    module = load_module(run[1])
    pipeline = DiffusionPipeline.from_pretrained(pipeline_dir)
    assert isinstance(pipeline, DDPMPipeline)
    assert isinstance(pipeline.unet, ours.DDPMLightningUNet) and not pipeline.unet.training
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 5, 12, 19])
    with torch.no_grad():
        assert torch.equal(pipeline.unet(x, t).sample, module(x, t))
        assert torch.equal(pipeline.unet(x, torch.tensor(7)).sample, module(x, torch.full((4,), 7)))
        assert torch.equal(pipeline.unet(x, 6.6).sample, module(x, torch.full((4,), 7)))
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        batch_size=4, generator=generators(4), num_inference_steps=20, output_type="np"
    )
    images = module.generate(module.make_sampler(DDPMSampler, progress=False), 4, seed=0)
    expected = as_unit(images).permute(0, 2, 3, 1)
    torch.testing.assert_close(torch.from_numpy(theirs.images), expected, rtol=0, atol=ATOL)


def test_the_shipped_mnist_model_runs_in_diffusers(tmp_path):
    """pretrained=mnist exported, loaded by DDPMPipeline, run with diffusers' DDIMScheduler
    (η = 0, 10 trailing steps, no clipping: DDIMScheduler clips x̂₀ without recomputing ε̂, our
    DDIM recomputes it) gives our DDIMSampler's images from the same start noise."""
    from diffusers import DDIMScheduler, DDPMPipeline

    import ddpm_lightning.sharing.diffusers_model  # noqa: F401

    export_diffusers(tmp_path / "mnist_diffusers", "pretrained=mnist", "samples=false")
    module = load_pretrained("mnist")
    pipeline = DDPMPipeline.from_pretrained(tmp_path / "mnist_diffusers")
    betas = torch.tensor(pipeline.scheduler.config.trained_betas, dtype=torch.float64)
    torch.testing.assert_close(betas, module.diffusion.schedule.betas.double(), rtol=1e-6, atol=0)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, clip_sample=False)
    pipeline.set_progress_bar_config(disable=True)
    theirs = pipeline(
        batch_size=4, generator=generators(4), num_inference_steps=10, output_type="np"
    )
    sampler = module.make_sampler(
        DDIMSampler, num_steps=10, eta=0.0, spacing="trailing", clip_x0=False, progress=False
    )
    expected = as_unit(module.generate(sampler, 4, seed=0)).permute(0, 2, 3, 1)
    torch.testing.assert_close(torch.from_numpy(theirs.images), expected, rtol=0, atol=ATOL)


@pytest.fixture(scope="module")
def conditional(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, pipeline folder) of a random-init tiny conditional UNet (10 classes)."""
    root = tmp_path_factory.mktemp("conditional")
    folder = tiny_model_folder(root / "cond", objective="v", num_classes=10)
    export_diffusers(root / "cond_diffusers", f"pretrained={folder}", "samples=false")
    return folder, root / "cond_diffusers"


@pytest.mark.parametrize(("scale", "interval"), [(1.0, None), (2.0, None), (2.0, (0.3, 4.0))])
def test_our_pipeline_passes_class_labels_and_guidance(conditional, scale, interval):
    """DDPMLightningPipeline.from_pretrained with class labels and classifier-free guidance γ
    (every step, or only at σ in (0.3, 4]) gives our guided DDPMSampler's images."""
    from ddpm_lightning.sharing.diffusers_model import DDPMLightningPipeline

    folder, pipeline_dir = conditional
    module = load_pretrained(folder)
    pipeline = DDPMLightningPipeline.from_pretrained(pipeline_dir)
    pipeline.set_progress_bar_config(disable=True)
    labels = torch.tensor([0, 3, 3, 9])
    options = {"guidance_scale": scale, "guidance_interval": interval}
    theirs = pipeline(
        batch_size=4, class_labels=labels, generator=generators(4), output_type="pt", **options
    ).images
    sampler = module.make_sampler(DDPMSampler, progress=False, **options)
    ours = as_unit(module.generate(sampler, 4, seed=0, labels=labels))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=ATOL)
    others = pipeline(batch_size=4, class_labels=5, generator=generators(4), output_type="pt")
    assert (others.images - theirs).abs().amax(dim=(1, 2, 3)).min() > 1e-3, "labels matter"


def test_a_conditional_card_draws_labels_in_its_example(conditional, monkeypatch):
    card = (conditional[1] / "README.md").read_text()
    assert "class-conditional" in yaml.safe_load(card.split("---\n", 2)[1])["tags"]
    code = card.split("```python\n")[1].split("```")[0]
    assert "class_labels=3" in code
    monkeypatch.chdir(conditional[1].parent)
    namespace: dict = {}
    exec(code, namespace)
    assert len(namespace["threes"]) == 16


def test_labels_for_an_unconditional_model_are_refused(pipeline_dir):
    from ddpm_lightning.sharing.diffusers_model import DDPMLightningPipeline

    pipeline = DDPMLightningPipeline.from_pretrained(pipeline_dir)
    with pytest.raises(ConfigError, match="class_labels needs a conditional model"):
        pipeline(batch_size=2, class_labels=3)
    with pytest.raises(ConfigError, match="class_labels were given to an unconditional model"):
        pipeline.unet(torch.zeros(1, 1, 32, 32), 0, class_labels=torch.tensor([3]))


def test_the_card_travels_and_its_examples_run(run, pipeline_dir, monkeypatch):
    """No path of this machine in any text file; the settings block is the UNet's and the
    schedule's; the install line; the card's Python examples run where the folder's parent is
    the working directory (the card names the folder relative to it)."""
    assert machine_paths_in(pipeline_dir, run[0]) == []
    card = (pipeline_dir / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["library_name"] == "diffusers" and "ddpm_lightning" in meta["tags"]
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 12.345678
    settings = card_settings(card)
    unet = json.loads((pipeline_dir / "unet" / "config.json").read_text())
    assert {k: v for k, v in unet.items() if not k.startswith("_") and k != "sample_size"} == {
        k: v for k, v in settings["model"].items() if k != "name"
    }
    assert settings["schedule"]["num_timesteps"] == 20 and settings["diffusion"]["objective"] == "v"
    assert 'pip install -e ".[hf]"\n' in card and "{'" not in card
    assert "python -m ddpm_lightning.evaluate ckpt_path=last.ckpt num_samples=1000\n" in card
    assert "![8 samples of the recommended sampler, seed 0](samples.png)" in card
    first, second = (block.split("```")[0] for block in card.split("```python\n")[1:])
    assert 'DDPMLightningPipeline.from_pretrained("pipeline")' in first
    monkeypatch.chdir(pipeline_dir.parent)
    for code, steps in ((first, 20), (second, 2)):
        namespace: dict = {}
        exec(code, namespace)
        assert len(namespace["images"]) == 16 and namespace["images"][0].size == (32, 32)
        assert namespace["pipeline"].scheduler.num_inference_steps == steps


def test_other_networks_are_refused_in_one_line(tmp_path):
    module = DiffusionModule(
        {"name": "mlp", "num_timesteps": 20},
        {"name": "cosine", "num_timesteps": 20},
        data_shape=(2,),
    )
    write_folder(tmp_path / "mlp", dict(module.hparams), module.state_dict(), {})
    with pytest.raises(
        ConfigError, match=r"^format=diffusers exports models trained with model=un"
    ):
        export_diffusers(tmp_path / "out", f"pretrained={tmp_path / 'mlp'}")
    assert not (tmp_path / "out" / "model_index.json").exists()


def test_the_shipped_example_is_the_mnist_model():
    """docs/examples/mnist_diffusers: the export command's folder of pretrained=mnist, its card
    loading it by the path relative to the checkout."""
    from ddpm_lightning.sharing.diffusers_model import DDPMLightningPipeline

    example = REPO_ROOT / "docs" / "examples" / "mnist_diffusers"
    pipeline = DDPMLightningPipeline.from_pretrained(example)
    weights = load_pretrained("mnist").model.state_dict()
    assert pipeline.unet.network.state_dict().keys() == weights.keys()
    assert all(torch.equal(v, weights[k]) for k, v in pipeline.unet.network.state_dict().items())
    card = (example / "README.md").read_text()
    assert 'from_pretrained("docs/examples/mnist_diffusers")' in card
    assert machine_paths_in(example, example) == []
