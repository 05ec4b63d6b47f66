import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ddpm_lightning.config import compose_config
from ddpm_lightning.diffusion.guidance import DEFAULT_GUIDANCE_SCALE, balanced_labels
from ddpm_lightning.diffusion.samplers import DDIMSampler
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.sample import sample
from ddpm_lightning.train import train
from ddpm_lightning.training.checkpoints import load_module
from ddpm_lightning.training.module import DiffusionModule
from tests import conftest
from tests.conftest import tiny_config, write_fake_dataset

SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    """last.ckpt of a 2-step run of the tiny UNet with 10 classes (model=unet_cond)."""
    root = tmp_path_factory.mktemp("cond")
    write_fake_dataset(root / "data", "MNIST")
    train(tiny_config(root / "data", root / "run", "model=unet_cond", *SHORT))
    return root / "run" / "checkpoints" / "last.ckpt"


def sample_config(checkpoint, out_dir, *overrides):
    """The sample command's config with a 3-step DDIM sampler."""
    return conftest.sample_config(checkpoint, out_dir, "sampler.num_steps=3", *overrides)


def test_unet_cond_config_is_the_seed_unet_plus_a_label_table():
    base = compose_config("train", ["paths.output_dir=/tmp/unused"])
    cond = compose_config("train", ["model=unet_cond", "paths.output_dir=/tmp/unused"])
    count = lambda cfg: sum(p.numel() for p in instantiate(cfg.model).parameters())  # noqa: E731
    # 11 labels (10 classes + null) × the 4d = 64-wide embedding.
    assert count(cond) - count(base) == 11 * 64
    assert cond.diffusion.p_uncond == 0.1


def test_blog_recipes_compose():
    overrides = ["experiment=vanmaastricht_cond", "paths.output_dir=/tmp/unused"]
    recipe = compose_config("train", overrides)
    model = instantiate(recipe.model)
    assert sum(p.numel() for p in model.parameters()) == 2_406_433
    assert model.num_classes == 10 and recipe.schedule.name == "linear"
    assert recipe.schedule.num_timesteps == 1000 and recipe.data.batch_size == 64
    assert recipe.optimizer._target_ == "torch.optim.AdamW" and recipe.optimizer.lr == 5e-5
    cfg = compose_config("train", ["experiment=sinai_cfg", "paths.output_dir=/tmp/unused"])
    assert cfg.model.num_classes == 10 and cfg.callbacks.fld.sampler.guidance_scale == 2.0
    assert cfg.schedule.num_timesteps == 100 and cfg.trainer.max_epochs == 15


def test_training_drops_labels_at_the_configured_rate(tmp_path):
    cfg = compose_config(
        "train", ["model=unet_cond", "diffusion.p_uncond=0.25", f"paths.output_dir={tmp_path}"]
    )
    module = DiffusionModule(model=cfg.model, schedule=cfg.schedule, diffusion=dict(cfg.diffusion))
    seen = []
    module.diffusion.training_loss = lambda model, x, y: seen.append(y) or torch.zeros(())
    torch.manual_seed(0)
    y = torch.randint(0, 10, (4000,))
    for chunk in y.split(1000):
        module.training_step((torch.zeros(len(chunk), 1, 32, 32), chunk), 0)
    labels = torch.cat(seen)
    # Binomial standard error √(0.25·0.75/4000) ≈ 0.0068; allow 4σ.
    assert (labels == 10).double().mean().item() == pytest.approx(0.25, abs=0.028)
    assert torch.equal(labels[labels != 10], y[labels != 10])


def test_make_sampler_guidance_defaults_and_refusals(conditional, tmp_path):
    module = load_module(conditional)
    factory = lambda **kw: DDIMSampler(num_steps=2, progress=False, **kw)  # noqa: E731
    assert module.make_sampler(factory).denoiser.guidance_scale == 1.25, "default γ"
    assert module.make_sampler(factory, guidance_scale=0.0).denoiser.guidance_scale == 0.0
    guided = module.make_sampler(factory, guidance_interval=[0.3, 5])
    assert guided.denoiser.guidance_interval is not None
    cfg = tiny_config(tmp_path / "data", tmp_path, *SHORT)
    write_fake_dataset(tmp_path / "data", "MNIST")
    train(cfg)
    unconditional = load_module(tmp_path / "checkpoints" / "last.ckpt")
    assert unconditional.make_sampler(factory).denoiser.guidance_scale is None
    unguided = unconditional.make_sampler(factory, guidance_interval=[0.3, 5])
    interval = unguided.denoiser.guidance_interval
    assert interval is None, "an unconditional sampler keeps no guidance interval"
    with pytest.raises(ConfigError, match="sampler.guidance_scale=3.0"):
        unconditional.make_sampler(factory, guidance_scale=3.0)
    with pytest.raises(ConfigError, match="unconditional"):
        unconditional.generate(unconditional.make_sampler(factory), 2, 0, labels=[1, 2])


def test_sample_writes_class_grid_same_noise_and_labels(conditional, tmp_path):
    files = sample(sample_config(conditional, tmp_path, "num_samples=20", "same_noise_columns=3"))
    archive = np.load(files["samples.npz"])
    assert np.array_equal(archive["labels"], balanced_labels(20, 10).numpy())
    assert archive["images"].shape == (20, 1, 32, 32)
    # Two samples per class → 10 rows × 2 columns of 32 px with 2 px padding.
    assert Image.open(files["class_grid.png"]).size == (2 * 34 + 2, 10 * 34 + 2)
    assert Image.open(files["same_noise.png"]).size == (3 * 34 + 2, 10 * 34 + 2)


def test_sample_explicit_labels(conditional, tmp_path):
    files = sample(sample_config(conditional, tmp_path, "labels=[3,3,7]", "same_noise_columns=0"))
    archive = np.load(files["samples.npz"])
    assert archive["labels"].tolist() == [3, 3, 7] and archive["images"].shape[0] == 3
    assert "same_noise.png" not in files
    assert Image.open(files["class_grid.png"]).size == (1 * 34 + 2, 2 * 34 + 2)


@pytest.mark.parametrize(
    ("labels", "message"),
    [("[3,10]", r"\[0, 10\)"), ("[-1]", r"\[0, 10\)"), ("[]", "labels="), ("seven", "labels=")],
)
def test_sample_bad_labels(conditional, tmp_path, labels, message):
    with pytest.raises(ConfigError, match=message):
        sample(sample_config(conditional, tmp_path, f"labels={labels}"))


def test_given_noise_is_the_starting_point(conditional):
    module = load_module(conditional)
    sampler = module.make_sampler(
        lambda **kw: DDIMSampler(num_steps=3, eta=0.0, progress=False, **kw)
    )
    noise = torch.randn(4, 1, 32, 32)
    labels = torch.tensor([1, 1, 2, 2])
    a = module.generate(sampler, 4, seed=0, labels=labels, noise=noise)
    b = module.generate(sampler, 4, seed=1, labels=labels, noise=noise)
    assert torch.equal(a, b), "deterministic DDIM from the same x_T"
    assert not torch.equal(a, module.generate(sampler, 4, seed=0, labels=labels))


def test_evaluate_reports_requested_label_accuracy(conditional, tmp_path):
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt_path={conditional}",
            "num_samples=20",
            "sampler.num_steps=2",
            f"out_dir={tmp_path}",
            f"paths.output_dir={tmp_path}",
        ],
    )
    metrics = evaluate(cfg)
    assert 0 <= metrics["requested_label_accuracy"] <= 1
    assert len(metrics["per_class_accuracy"]) == 10
    assert all(v is not None for v in metrics["per_class_accuracy"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["requested_label_accuracy"] == metrics["requested_label_accuracy"]
    assert saved["ckpt_path"] == str(conditional) and saved["sampler"]["num_steps"] == 2
    assert saved["sampler"]["guidance_scale"] == DEFAULT_GUIDANCE_SCALE, "the γ applied, not null"
    assert saved["sampler"]["guidance_interval"] == [0.3, 4.0]


def evaluate_black_images(tmp_path, labels):
    """`evaluate` of 30 black MNIST-sized images drawn for `labels` (30,), from a samples.npz."""
    images = np.zeros((30, 1, 32, 32), dtype=np.uint8)
    np.savez_compressed(tmp_path / "s.npz", images=images, labels=labels)
    return evaluate(
        compose_config(
            "evaluate",
            [
                f"samples={tmp_path / 's.npz'}",
                "dataset=mnist",
                f"out_dir={tmp_path}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    )


def test_evaluate_npz_with_labels_scores_them(tmp_path):
    metrics = evaluate_black_images(tmp_path, np.full(30, 4))
    predicted = int(np.argmax(metrics["label_counts"]))
    # All 30 images are identical (black), so the LeNet gives them one label.
    expected = 1.0 if predicted == 4 else 0.0
    assert metrics["requested_label_accuracy"] == expected
    assert metrics["per_class_accuracy"][4] == expected
    assert metrics["per_class_accuracy"][0] is None


def test_evaluate_shows_the_samples_put_in_another_class(tmp_path):
    metrics = evaluate_black_images(tmp_path, np.arange(30) % 10)
    # Identical images get one label, p: 3 of each class requested, 27 put in another class.
    p = int(np.argmax(metrics["label_counts"]))
    assert metrics["confusion"] == [[3 if got == p else 0 for got in range(10)] for _ in range(10)]
    assert metrics["off_class"] == [[i, i % 10, p] for i in range(30) if i % 10 != p]
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["confusion"] == metrics["confusion"] and len(saved["off_class"]) == 27
    assert Image.open(tmp_path / "off_class.png").size == (2 * (8 * 34 + 2), 4 * (2 * 36 + 16))
    report = (tmp_path / "report.md").read_text()
    assert "puts 27 of 30 samples in another class" in report
    assert f"{9 if p != 9 else 8}->{p}: 3" in report and "](off_class.png)" in report
