import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from torchmetrics.image.fid import _compute_fid

from ddpm_lightning import classifier as classifier_module
from ddpm_lightning.components import component_settings
from ddpm_lightning.config import compose_config
from ddpm_lightning.errors import ConfigError, DataError
from ddpm_lightning.evaluate import evaluate, min_class_mean_distance
from ddpm_lightning.evaluation import fld as fld_module
from ddpm_lightning.evaluation.fld import (
    FLD,
    asset_paths,
    feature_statistics,
    fld_metric,
    lenet_features,
    lenet_identity,
    load_lenet,
    load_record,
    load_test_statistics,
    sha256,
)
from ddpm_lightning.sample import sample
from ddpm_lightning.train import build_module, train
from tests.conftest import sample_config, tiny_config

DATASETS = ["mnist", "fashion_mnist"]
SHIPPED_MNIST_LENET = "42b7f565b58098588c0db489b0e050e6008788f899f05c90831d414e30bcc6a7"


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The independent reference for torchmetrics' FLD: ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½)
    with scipy's `sqrtm` in float64. LeNet units that never fire make Σ₁Σ₂ singular; the trace
    of its root stays exact (tested against the closed form), so scipy's warning is silenced."""
    m1, m2 = mu1.double().numpy(), mu2.double().numpy()
    s1, s2 = sigma1.double().numpy(), sigma2.double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    diff = m1 - m2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def digit_like_images(num_images: int, seed: int = 0) -> torch.Tensor:
    """(N, 1, 32, 32) in [-1, 1]: the shipped MNIST class means plus noise, so the LeNet's
    features spread like those of digits (some units never fire)."""
    means = load_test_statistics("mnist")["class_means"]
    generator = torch.Generator().manual_seed(seed)
    classes = torch.arange(num_images) % 10
    noise = 0.3 * torch.randn((num_images, 1, 32, 32), generator=generator)
    return (means[classes] + noise).clamp(-1, 1)


def random_stats(seed: int, dim: int = 84):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(500, dim, generator=generator, dtype=torch.float64)
    features = features @ torch.randn(dim, dim, generator=generator, dtype=torch.float64) * 0.3
    return feature_statistics(features + seed)


@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_weights_match_their_record(dataset):
    record = load_record(dataset)
    paths = asset_paths(dataset)
    assert sha256(paths["weights"]) == record["sha256"]
    assert sha256(paths["stats"]) == record["stats_sha256"]
    assert record["test_accuracy"] >= {"mnist": 0.99, "fashion_mnist": 0.90}[dataset]
    assert paths["weights"].stat().st_size < 1_000_000


def test_features_are_84_wide():
    model = load_lenet("mnist")
    assert lenet_features(model, torch.zeros(5, 1, 32, 32)).shape == (5, 84)
    uint8 = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert lenet_features(model, uint8).shape == (3, 84)


def test_fld_with_itself_is_zero_and_symmetric():
    mu1, s1 = random_stats(1)
    mu2, s2 = random_stats(2)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 1 and d12 == pytest.approx(d21, rel=1e-9)


def test_scipy_and_torchmetrics_agree():
    mu1, s1 = random_stats(3)
    mu2, s2 = random_stats(4)
    ours = frechet_distance(mu1, s1, mu2, s2)
    theirs = _compute_fid(mu1, s1, mu2, s2).item()
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_torchmetrics_fld_equals_the_scipy_reference_on_the_same_features():
    """FLD (torchmetrics, from feature sums) against scipy's `sqrtm` on the features' mean and
    covariance: measured to agree within 3e-14 relative; 9 of the 84 units never fire here."""
    images = digit_like_images(500)
    fld = FLD("mnist")
    mean, cov = feature_statistics(lenet_features(fld.model, images))
    stats = load_test_statistics("mnist")
    expected = frechet_distance(mean, cov, stats["mean"], stats["cov"])
    assert fld(images) == pytest.approx(expected, rel=1e-9)
    assert fld(images) == pytest.approx(expected, rel=1e-9), "compute() resets the samples"


def test_the_metric_holds_the_shipped_test_statistics():
    stats = load_test_statistics("mnist")
    metric = fld_metric(load_lenet("mnist"), stats)
    n = metric.real_features_num_samples
    mean = metric.real_features_sum / n
    cov = (metric.real_features_cov_sum - n * torch.outer(mean, mean)) / (n - 1)
    assert int(n) == 10_000
    torch.testing.assert_close(mean, stats["mean"], rtol=0, atol=1e-12)
    torch.testing.assert_close(cov, stats["cov"], rtol=0, atol=1e-12)
    assert int(fld_metric(load_lenet("mnist"), None).real_features_num_samples) == 0


def test_fld_adds_up_over_processes():
    """Two processes' metrics, only the first holding the test set, merged as torchmetrics
    merges them under DDP (a sum of each state), give the FLD of all the images at once."""
    images = digit_like_images(300)
    first, second = FLD("mnist"), FLD("mnist", holds_test_set=False)
    first.update(images[:100])
    second.update(images[100:])
    first.metric.merge_state(second.metric)
    assert first.compute() == pytest.approx(FLD("mnist")(images), rel=1e-9)


def test_closed_form_for_known_gaussians():
    # Commuting covariances: tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) = Σᵢ (√λ₁ᵢ − √λ₂ᵢ)² in a shared eigenbasis.
    q, _ = torch.linalg.qr(
        torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    l1 = torch.tensor([1.0, 2, 3, 4, 5, 6], dtype=torch.float64)
    l2 = torch.tensor([4.0, 1, 9, 1, 0.25, 6], dtype=torch.float64)
    s1, s2 = q @ torch.diag(l1) @ q.T, q @ torch.diag(l2) @ q.T
    mu1, mu2 = torch.zeros(6, dtype=torch.float64), torch.full((6,), 0.5, dtype=torch.float64)
    expected = 6 * 0.25 + ((l1.sqrt() - l2.sqrt()) ** 2).sum().item()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_dead_features_give_the_closed_form_without_warnings():
    # A LeNet ReLU unit that never fires (feature 0) has zero variance: Σ₁Σ₂ is singular.
    q, _ = torch.linalg.qr(
        torch.randn(5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    )
    q = torch.block_diag(torch.ones(1, 1, dtype=torch.float64), q)
    l1 = torch.tensor([0.0, 2, 3, 4, 5, 6], dtype=torch.float64)
    l2 = torch.tensor([0.0, 1, 9, 1, 0.25, 6], dtype=torch.float64)
    s1, s2 = q @ torch.diag(l1) @ q.T, q @ torch.diag(l2) @ q.T
    mu = torch.zeros(6, dtype=torch.float64)
    expected = ((l1.sqrt() - l2.sqrt()) ** 2).sum().item()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-6)


def test_min_class_mean_distance():
    means = torch.stack([torch.full((1, 2, 2), float(c)) for c in range(10)])
    images = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 3.0)])
    # Nearest means: 0 or 1 at distance √(4·0.25) = 1, and 3 exactly.
    assert min_class_mean_distance(images, means) == pytest.approx(0.5)
    absent = torch.cat([means, torch.full_like(means[:1], float("nan"))])
    assert min_class_mean_distance(images, absent) == pytest.approx(0.5)


DATA_DIR = os.environ.get("DDPM_DATA_DIR")


@pytest.mark.skipif(not DATA_DIR, reason="DDPM_DATA_DIR not set")
@pytest.mark.parametrize("dataset", DATASETS)
def test_shipped_lenet_classifies_real_test_images(dataset):
    from ddpm_lightning.data.images import load_split, to_model_range

    images, labels = load_split(DATA_DIR, dataset, train=False)
    model = load_lenet(dataset)
    with torch.no_grad():
        predicted = model(to_model_range(images[:500], 2)).argmax(1)
    accuracy = (predicted == labels[:500]).float().mean().item()
    assert accuracy >= {"mnist": 0.98, "fashion_mnist": 0.85}[dataset]
    test_fld = FLD(dataset)(to_model_range(images, 2))
    assert test_fld < 1e-3, "the test set against its own statistics"


def test_evaluate_on_a_tiny_npz(tmp_path, capsys):
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8).numpy()
    np.savez_compressed(tmp_path / "samples.npz", images=images)
    cfg = compose_config(
        "evaluate",
        [
            f"samples={tmp_path / 'samples.npz'}",
            "dataset=mnist",
            f"out_dir={tmp_path / 'eval'}",
            f"paths.output_dir={tmp_path}",
        ],
    )
    metrics = evaluate(cfg)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["lenet"] == f"{SHIPPED_MNIST_LENET[:12]} (shipped)"
    assert f"FLD (LeNet-5 {SHIPPED_MNIST_LENET[:12]} (shipped))" in capsys.readouterr().out
    assert sum(metrics["label_counts"]) == 40 and sum(metrics["test_label_counts"]) == 10_000
    assert metrics["fld"] > 10, "uniform noise is far from digits"
    assert 0.1 <= metrics["mean_confidence"] <= 1
    assert (tmp_path / "eval" / "label_histogram.png").stat().st_size > 500
    assert saved["samples"] == str(tmp_path / "samples.npz") and "sampler" not in saved


def test_evaluate_needs_an_input(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path"):
        evaluate(compose_config("evaluate", [f"paths.output_dir={tmp_path}"]))
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(
            compose_config(
                "evaluate", [f"paths.output_dir={tmp_path}", f"samples={tmp_path / 'none.npz'}"]
            )
        )


def test_fld_callback_logs_val_fld(data_root, tmp_path):
    cfg = tiny_config(
        data_root,
        tmp_path,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
    )
    cfg.callbacks.fld = compose_config("train", [f"paths.output_dir={tmp_path}"]).callbacks.fld
    cfg.callbacks.fld.num_samples = 16
    cfg.callbacks.fld.every_n_epochs = 1
    cfg.callbacks.fld.sampler.num_steps = 2
    cfg.callbacks.fld.test_num_samples = 12
    metrics = train(cfg)
    assert np.isfinite(metrics["val/fld"]) and metrics["val/fld"] > 0
    assert np.isfinite(metrics["val/kid"]), "KID of the 16 samples, unbiased, may be below 0"
    written = json.loads((tmp_path / "test_metrics.json").read_text())
    assert set(written) == {"test/loss", "test/fld"}
    assert np.isfinite(written["test/fld"]) and written["test/fld"] != metrics["val/fld"]


def test_classifier_exports_weights_and_statistics(data_root, tmp_path):
    from ddpm_lightning.classifier import train_classifier

    cfg = compose_config(
        "classifier",
        [
            f"data.root={data_root}",
            f"export_dir={tmp_path}",
            f"paths.output_dir={tmp_path}",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "data.batch_size=30",
        ],
    )
    record = train_classifier(cfg)
    paths = asset_paths("mnist", Path(tmp_path))
    assert record["sha256"] == sha256(paths["weights"])
    assert record["released_sha256"] == SHIPPED_MNIST_LENET
    stats = torch.load(paths["stats"], weights_only=True)
    assert stats["mean"].shape == (84,) and stats["cov"].shape == (84, 84)
    assert stats["class_means"].shape == (10, 1, 32, 32) and int(stats["label_counts"].sum()) == 30
    assert set(record["reference_fld"]) == {
        "test_half_vs_test_half",
        "train_10k_vs_test",
        "gaussian_noise_vs_test",
    }


def classifier_config(data_root: Path, run_dir: Path, *overrides: str):
    """One CPU epoch of the LeNet on the synthetic MNIST, run folder `run_dir`."""
    return compose_config(
        "classifier",
        [
            f"data.root={data_root}",
            f"paths.output_dir={run_dir}",
            "trainer.max_epochs=1",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            "data.batch_size=30",
            *overrides,
        ],
    )


@pytest.fixture
def assets_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the package's LeNet assets standing in for them (so replacing is safe)."""
    copy = tmp_path / "assets"
    copy.mkdir()
    for path in fld_module.ASSETS_DIR.glob("lenet_*"):
        shutil.copy(path, copy / path.name)
    monkeypatch.setattr(fld_module, "ASSETS_DIR", copy)
    monkeypatch.setattr(classifier_module, "ASSETS_DIR", copy)
    return copy


def test_classifier_writes_to_its_run_folder_not_the_package(data_root, tmp_path, assets_copy):
    before = {path.name: path.read_bytes() for path in assets_copy.iterdir()}
    record = classifier_module.train_classifier(classifier_config(data_root, tmp_path / "run"))
    assert {path.name: path.read_bytes() for path in assets_copy.iterdir()} == before
    written = asset_paths("mnist", tmp_path / "run")
    assert all(path.is_file() for path in written.values())
    assert json.loads(written["record"].read_text()) == record
    assert lenet_identity("mnist") == f"{SHIPPED_MNIST_LENET[:12]} (shipped)"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["export_dir={assets}"], "export_dir={assets} holds the shipped LeNet every FLD is"),
        (
            ["export_dir={tmp}", "replace_shipped=true"],
            "replace_shipped=true writes to {assets}; drop export_dir={tmp}",
        ),
    ],
)
def test_replacing_the_shipped_lenet_needs_the_flag(
    data_root, tmp_path, assets_copy, overrides, message
):
    fill = {"assets": assets_copy, "tmp": tmp_path}
    cfg = classifier_config(data_root, tmp_path, *[o.format(**fill) for o in overrides])
    with pytest.raises(ConfigError, match=re.escape(message.format(**fill))):
        classifier_module.train_classifier(cfg)


def test_fld_names_a_replaced_lenet_retrained(data_root, tmp_path, assets_copy):
    """replace_shipped=true: FLD still works, but says its LeNet is not the released one."""
    cfg = classifier_config(data_root, tmp_path / "run", "replace_shipped=true")
    record = classifier_module.train_classifier(cfg)
    assert record["sha256"] != SHIPPED_MNIST_LENET
    assert record["released_sha256"] == SHIPPED_MNIST_LENET
    assert sha256(assets_copy / "lenet_mnist.pt") == record["sha256"]
    assert lenet_identity("mnist") == f"{record['sha256'][:12]} (retrained)"
    assert FLD("mnist").lenet == f"{record['sha256'][:12]} (retrained)"


def untrained_checkpoint(path: Path, dataset: str) -> Path:
    """A checkpoint of the tiny UNet (random weights) recording `dataset`."""
    cfg = tiny_config(path.parent, path.parent, f"data={dataset}")
    module = build_module(cfg, (1, 32, 32))
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


def evaluate_config(tmp_path: Path, *overrides: str):
    return compose_config(
        "evaluate",
        [f"out_dir={tmp_path / 'eval'}", f"paths.output_dir={tmp_path}", *overrides],
    )


@pytest.fixture
def fashion_samples(tmp_path) -> tuple[Path, Path]:
    """(checkpoint, samples.npz): 4 samples of an untrained Fashion-MNIST model, DDIM-2."""
    checkpoint = untrained_checkpoint(tmp_path / "fashion.ckpt", "fashion_mnist")
    cfg = sample_config(
        checkpoint, tmp_path / "s", "num_samples=4", "sampler.num_steps=2", "seed=3"
    )
    return checkpoint, sample(cfg)["samples.npz"]


def test_samples_npz_records_what_made_it_and_evaluate_uses_it(fashion_samples, tmp_path):
    checkpoint, samples = fashion_samples
    with np.load(samples) as archive:
        metadata = json.loads(str(archive["metadata"]))
    assert metadata == {
        "dataset": "fashion_mnist",
        "ckpt_path": str(checkpoint),
        "seed": 3,
        "sampler": {
            **component_settings("sampler", compose_config("sample").sampler),
            "num_steps": 2,
            "guidance_interval": None,
        },
        "network_evaluations": 2,
    }
    metrics = evaluate(evaluate_config(tmp_path, f"samples={samples}"))
    assert metrics["dataset"] == "fashion_mnist" and metrics["samples"] == str(samples)
    assert metrics["ckpt_path"] == str(checkpoint) and metrics["seed"] == 3
    assert metrics["network_evaluations"] == 2


def test_a_dataset_mismatch_is_refused_unless_allowed(fashion_samples, tmp_path, capsys):
    checkpoint, samples = fashion_samples
    with pytest.raises(ConfigError) as error:
        evaluate(evaluate_config(tmp_path, f"samples={samples}", "dataset=mnist"))
    assert str(error.value) == (
        f"dataset=mnist but samples={samples} is of fashion_mnist: drop dataset=, or pass "
        "allow_dataset_mismatch=true to score against mnist anyway"
    )
    model = [f"ckpt_path={checkpoint}", "dataset=mnist", "num_samples=4", "sampler.num_steps=2"]
    with pytest.raises(ConfigError, match="^dataset=mnist but the model is of fashion_mnist"):
        evaluate(evaluate_config(tmp_path, *model))
    allowed = [f"samples={samples}", "dataset=mnist", "allow_dataset_mismatch=true"]
    assert evaluate(evaluate_config(tmp_path, *allowed))["dataset"] == "mnist"
    assert "warning: scoring fashion_mnist images against the mnist test set" in (
        capsys.readouterr().out
    )


def test_samples_without_a_dataset_need_dataset(tmp_path):
    np.savez(tmp_path / "old.npz", images=np.zeros((4, 1, 32, 32), np.uint8))
    with pytest.raises(ConfigError) as error:
        evaluate(evaluate_config(tmp_path, f"samples={tmp_path / 'old.npz'}"))
    assert str(error.value) == (
        f"samples={tmp_path / 'old.npz'} records no dataset: "
        "pass dataset=NAME, one of mnist, fashion_mnist, shapes"
    )


def write_npz(path: Path, images) -> Path:
    np.savez(path, images=images)
    return path


BAD_SAMPLES = [
    (
        lambda p: write_npz(p, np.full((4, 1, 32, 32), 0.5, np.float32)),
        ": images are a float32 array of shape (4, 1, 32, 32) with values in [0.5, 0.5]; need "
        "uint8 images in [0, 255] of shape (N, C, H, W), C = 1 or 3, as the sample command writes",
    ),
    (
        lambda p: write_npz(p, np.arange(4 * 32 * 32).reshape(4, 1, 32, 32)),
        ": images are a int64 array of shape (4, 1, 32, 32) with values in [0, 4095]; need",
    ),
    (
        lambda p: write_npz(p, np.zeros((4, 28, 28), np.uint8)),
        ": images are a uint8 array of shape (4, 28, 28) with values in [0, 0]; need",
    ),
    (
        lambda p: write_npz(p, np.full((4, 1, 32, 32), np.nan)),
        ": images contain NaN (float64 array of shape (4, 1, 32, 32))",
    ),
    (
        lambda p: write_npz(p, np.zeros((1, 1, 32, 32), np.uint8)),
        ": 1 image(s); a covariance needs at least 2 (10,000 for figures that compare)",
    ),
    (
        lambda p: p.write_text("not an archive") and p,
        " is not an .npz archive; pass a samples.npz from the sample command",
    ),
    (
        lambda p: np.save(p.with_suffix(".npy"), np.zeros(3)) or p.with_suffix(".npy"),
        " is not an .npz archive; pass a samples.npz from the sample command",
    ),
    (
        lambda p: np.savez(p, pictures=np.zeros(3)) or p,
        " has no 'images' array; pass a samples.npz from the sample command",
    ),
]


@pytest.mark.parametrize(("write", "message"), BAD_SAMPLES)
def test_bad_samples_files_are_one_line_errors(tmp_path, write, message):
    path = write(tmp_path / "samples.npz")
    with pytest.raises(DataError) as error:
        evaluate(evaluate_config(tmp_path, f"samples={path}", "dataset=mnist"))
    assert str(error.value).startswith(f"samples={path}{message}")
    assert "\n" not in str(error.value)


def test_a_checkpoint_of_2d_points_is_refused_by_the_evaluator(tmp_path):
    cfg = compose_config("train", ["experiment=spiral", f"paths.output_dir={tmp_path}"])
    module = build_module(cfg, (2,))
    path = tmp_path / "spiral.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    with pytest.raises(ConfigError) as info:
        evaluate(evaluate_config(tmp_path, f"ckpt_path={path}", "dataset=mnist"))
    assert str(info.value) == (
        f"ckpt_path={path} models data of shape (2,), not images (C, H, W): FLD scores "
        "images; use the sample command for it"
    )
