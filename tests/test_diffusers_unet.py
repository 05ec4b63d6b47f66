"""model=diffusers_unet (diffusers' UNet2DModel behind our network call): shapes, labels,
training with our callbacks, and `export format=diffusers` loaded by diffusers' DDPMPipeline."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sample_config, tiny_config, write_fake_dataset
from hydra.utils import instantiate

from ddpm_lightning.config import compose_config
from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.diffusion import DDPMSampler
from ddpm_lightning.diffusion.noise import sample_seed
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.export import export
from ddpm_lightning.models import DiffusersUNet
from ddpm_lightning.sample import sample
from ddpm_lightning.tools.bench import diffusers_unet
from ddpm_lightning.train import train
from ddpm_lightning.training.checkpoints import load_module

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("diffusers") is None,
    reason="diffusers is not installed (the hf extra: pip install 'ddpm_lightning[hf]')",
)
DIFFUSERS_MODEL = ("model=diffusers_unet", "schedule.num_timesteps=20")


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_default_config_is_what_the_benchmark_times():
    """conf/model/diffusers_unet.yaml = DiffusersUNet's defaults = the bench's diffusers peer,
    sized like the default UNet (403,409 parameters)."""
    configured = instantiate(compose_config("train", ["model=diffusers_unet"]).model)
    assert count(configured) == count(DiffusersUNet()) == count(diffusers_unet()) == 425_281
    shapes = {key: value.shape for key, value in configured.state_dict().items()}
    assert shapes == {key: value.shape for key, value in diffusers_unet().state_dict().items()}
    conditional = instantiate(compose_config("train", ["model=diffusers_unet_cond"]).model)
    # 11 class embeddings (10 classes and the null label) of the time embedding's width 64.
    assert count(conditional) - count(configured) == 11 * 64


def test_forward_shapes_and_labels():
    torch.manual_seed(0)
    x, t = torch.randn(3, 1, 32, 32), torch.tensor([0, 7, 19])
    assert DiffusersUNet()(x, t).shape == (3, 1, 32, 32)
    model = DiffusersUNet(num_classes=10)
    with torch.no_grad():  # a fresh UNet2DModel zeroes its last conv: give it weights
        model.unet.conv_out.weight.normal_()
    out = model(x, t, torch.tensor([1, 2, 3]))
    assert out.shape == (3, 1, 32, 32)
    other = model(x, t, torch.tensor([4, 5, 6]))
    assert (out - other).abs().amax(dim=(1, 2, 3)).min() > 1e-3, "each label changes its output"
    assert torch.equal(model(x, t), model(x, t, torch.full((3,), 10))), "no labels: the null one"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_out_channels": (16, 32)}, "one entry per level"),
        ({"block_out_channels": (16, 32, 44)}, "divisible by model.norm_num_groups=8"),
        ({"num_classes": 0}, "model.num_classes=0"),
    ],
)
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DiffusersUNet(**kwargs)


def test_data_of_another_shape_is_refused():
    with pytest.raises(ConfigError, match=r"model.sample_size\) but the data gives shape \(1, 28"):
        DiffusersUNet().check_input_shape((1, 28, 28))


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ConfigError, match=r"model=diffusers_unet needs diffusers.*\[hf\]'$"):
        DiffusersUNet()


@pytest.mark.parametrize("model", ["diffusers_unet", "diffusers_unet_cond"])
def test_fast_dev_run(data_root, tmp_path, model):
    cfg = tiny_config(data_root, tmp_path, "trainer.fast_dev_run=true", model=(f"model={model}",))
    validate_config(cfg, "train")
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """last.ckpt of a 3-step run of model=diffusers_unet (T=20, v objective, EMA), with the FLD
    and sample-grid callbacks sampling through DPM-Solver++ and Euler of diffusers."""
    root = tmp_path_factory.mktemp("run")
    write_fake_dataset(root / "data", "MNIST")
    run = root / "run"
    cfg = tiny_config(
        root / "data",
        run,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        model=DIFFUSERS_MODEL,
    )
    full = compose_config(
        "train",
        [
            f"paths.output_dir={run}",
            "+sampler@callbacks.fld.sampler=diffusers",
            "callbacks.fld.sampler.num_steps=2",
            "callbacks.fld.num_samples=16",
            "callbacks.fld.every_n_epochs=1",
            "+sampler@callbacks.sample_grid.sampler=diffusers",
            "callbacks.sample_grid.sampler.scheduler=EulerDiscreteScheduler",
            "callbacks.sample_grid.sampler.num_steps=3",
            "callbacks.sample_grid.num_samples=4",
        ],
    )
    validate_config(full, "train")
    cfg.callbacks.fld, cfg.callbacks.sample_grid = full.callbacks.fld, full.callbacks.sample_grid
    metrics = train(cfg)
    assert np.isfinite(metrics["val/fld"]) and metrics["val/fld"] > 0
    assert (run / "samples" / "final.png").is_file()
    return run / "checkpoints" / "last.ckpt"


def test_sample_command_with_a_diffusers_scheduler(checkpoint, tmp_path):
    files = sample(
        sample_config(
            checkpoint,
            tmp_path,
            "sampler=diffusers",
            "sampler.num_steps=4",
            "num_samples=5",
            "gif_images=4",
        )
    )
    assert np.load(files["samples.npz"])["images"].shape == (5, 1, 32, 32)


@pytest.fixture(scope="module")
def pipeline_dir(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "pipeline"
    cfg = compose_config(
        "export",
        [
            f"ckpt_path={checkpoint}",
            f"out_dir={out}",
            f"paths.output_dir={out}",
            "format=diffusers",
        ],
    )
    validate_config(cfg, "export")
    files = export(cfg)
    assert all(path.exists() for path in files.values())
    return out


def test_export_writes_a_folder_ddpm_pipeline_loads(pipeline_dir):
    from diffusers import DDPMPipeline

    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert (pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipeline = DDPMPipeline.from_pretrained(pipeline_dir)
    config = pipeline.scheduler.config
    assert (config.num_train_timesteps, config.prediction_type) == (20, "v_prediction")
    assert config.clip_sample is True and config.variance_type == "fixed_small"


def test_the_pipeline_computes_what_our_module_computes(checkpoint, pipeline_dir):
    """One denoiser call, then all 20 DDPM steps from the same seed: handed one generator per
    sample, seeded as ours are, the pipeline draws x_T and each step's noise in our order."""
    from diffusers import DDPMPipeline

    module = load_module(checkpoint)
    pipeline = DDPMPipeline.from_pretrained(pipeline_dir)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 5, 12, 19])
    with torch.no_grad():
        torch.testing.assert_close(pipeline.unet(x, t).sample, module(x, t), rtol=0, atol=1e-6)
    theirs = pipeline(
        batch_size=4,
        generator=[torch.Generator().manual_seed(sample_seed(0, i)) for i in range(4)],
        num_inference_steps=20,
        output_type="np",
    ).images
    ours = module.generate(module.make_sampler(DDPMSampler, progress=False), 4, seed=0)
    ours_np = ((ours + 1) / 2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(theirs, ours_np, rtol=0, atol=1e-4)
