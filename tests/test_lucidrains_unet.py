"""model=lucidrains_unet (denoising-diffusion-pytorch's Unet behind our network call): the
benchmark's peer, shapes, clear errors, and a training run with our loop."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from conftest import overfit_one_batch, tiny_config
from hydra.utils import instantiate

from ddpm_lightning.config import compose_config
from ddpm_lightning.config.schema import validate_config
from ddpm_lightning.diffusion.gaussian import GaussianDiffusion
from ddpm_lightning.diffusion.schedules import NoiseSchedule
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.models import LucidrainsUNet
from ddpm_lightning.tools.bench import lucidrains_unet
from ddpm_lightning.train import train

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("denoising_diffusion_pytorch") is None,
    reason="denoising-diffusion-pytorch is not installed (pip install 'ddpm_lightning[bench]')",
)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_default_config_is_what_the_benchmark_times():
    configured = instantiate(compose_config("train", ["model=lucidrains_unet"]).model)
    assert count(configured) == count(LucidrainsUNet()) == count(lucidrains_unet()) == 544_049


def test_forward_shape_and_timestep_dependence():
    torch.manual_seed(0)
    model = LucidrainsUNet()
    with torch.no_grad():  # its last conv starts at random weights, unlike diffusers'
        x = torch.randn(3, 1, 32, 32)
        early, late = model(x, torch.tensor([0, 0, 0])), model(x, torch.tensor([999, 999, 999]))
    assert early.shape == (3, 1, 32, 32)
    assert (early - late).abs().amax(dim=(1, 2, 3)).min() > 1e-4, "t changes the output"


def test_labels_and_other_shapes_are_refused():
    model = LucidrainsUNet()
    with pytest.raises(ConfigError, match="model=lucidrains_unet is unconditional"):
        model(torch.zeros(1, 1, 32, 32), torch.zeros(1, dtype=torch.long), torch.zeros(1))
    with pytest.raises(ConfigError, match=r"divisible by 4 .* gives 30×30"):
        model.check_input_shape((1, 30, 30))
    with pytest.raises(ConfigError, match=r"takes images \(C=1, H, W\) .* shape \(3, 32, 32\)"):
        model.check_input_shape((3, 32, 32))


def test_missing_library_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "denoising_diffusion_pytorch", None)
    with pytest.raises(ConfigError, match=r"model=lucidrains_unet needs .*\[bench\]'$"):
        LucidrainsUNet()


def test_it_overfits_one_batch():
    """150 Adam steps on one batch of 16 images cut the fixed-noise v-loss at least 10-fold."""
    torch.manual_seed(0)
    model = LucidrainsUNet(dim=8, dim_mults=(1, 2), attn_dim_head=8)
    diffusion = GaussianDiffusion(NoiseSchedule("cosine", 20), objective="v")
    before, after = overfit_one_batch(model, diffusion)
    assert after < before / 10, f"loss {before:.4f} → {after:.4f}"


def test_fast_dev_run(data_root, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "trainer.fast_dev_run=true",
        model=("model=lucidrains_unet", "model.dim=8", "model.attn_dim_head=8"),
    )
    validate_config(cfg, "train")
    assert np.isfinite(train(cfg)["train/loss"])
