"""The evaluate command's scores beside FLD, in metrics.json, the printed table and the report
(report.md, report.png), from samples.npz files of noise and of real test images."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_lightning.data.images import load_split
from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import EVALUATE_FILES, evaluate, print_table
from ddpm_lightning.evaluation.report import report_markdown, write_report
from tests.conftest import writing_config

NOISE = torch.randint(0, 256, (60, 1, 32, 32), generator=torch.Generator().manual_seed(0))
FLOOR = {"n": 1000, "fld_mean": 1.25, "fld_sd": 0.04, "kid_mean": 0.5, "kid_sd": 0.2}


def npz(path, images, labels=None):
    arrays = {"images": images.to(torch.uint8).numpy()}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    np.savez_compressed(path, **arrays)
    return path


def run(tmp_path, images, *overrides, labels=None):
    samples = npz(tmp_path / "samples.npz", images, labels)
    cfg = writing_config(
        "evaluate", tmp_path / "eval", f"samples={samples}", "dataset=mnist", *overrides
    )
    return evaluate(cfg)


def test_noise_gets_an_interval_a_kid_and_low_precision(tmp_path, capsys):
    metrics = run(tmp_path, NOISE, "metrics.bootstrap=40")
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    low, high = metrics["fld_interval"]
    assert low < metrics["fld"] < high and metrics["bootstrap_draws"] == 40
    assert metrics["kid_subset_size"] == 60 and metrics["kid"] > 3 * metrics["kid_se"]
    assert metrics["nearest_k"] == 5
    assert metrics["prdc_real_samples"] == {"precision_density": 10_000, "recall_coverage": 60}
    assert metrics["precision"] < 0.3 and metrics["density"] < 0.1, "noise lies off the digits"
    assert metrics["recall"] == 0 and metrics["coverage"] < 0.2
    assert 0 <= metrics["class_balance"]["tv_uniform"] <= 0.9
    fld_row = next(line for line in printed.splitlines() if "FLD (LeNet-5" in line)
    assert f"[{low:.4g}, {high:.4g}]" in fld_row and fld_row.rstrip("│ ").endswith(" 60")
    assert "KID (LeNet-5 features)" in printed and "precision (k=5)" in printed
    written = sorted(p.name for p in (tmp_path / "eval").iterdir() if p.is_file())
    unconditional = {"memorisation.png", "off_class.png"}
    assert written == sorted(set(EVALUATE_FILES) - unconditional), "metric=fld, no labels"
    assert "confusion" not in metrics and "off_class" not in metrics
    report = (tmp_path / "eval" / "report.md").read_text()
    assert f"{metrics['fld']:.4f}" in report and "precision (k = 5)" in report
    assert "another class" not in report
    assert Image.open(tmp_path / "eval" / "report.png").size == (960, 260)


def data_dir():
    """$DDPM_DATA_DIR, or a skip where it is not set."""
    folder = os.environ.get("DDPM_DATA_DIR")
    if not folder:
        pytest.skip("DDPM_DATA_DIR is not set: the MNIST test set is needed")
    return folder


def test_real_test_images_score_like_the_test_set(tmp_path):
    """500 test images as samples: precision and recall against the test set above 0.85, KID
    within 3 standard errors of 0; conditional labels give per-class FLDs and accuracies."""
    images, labels = load_split(data_dir(), "mnist", train=False)
    chosen = torch.randperm(10_000, generator=torch.Generator().manual_seed(1))[:500]
    padded = torch.nn.functional.pad(images[chosen], (2, 2, 2, 2))[:, None]
    metrics = run(tmp_path, padded, "metrics.bootstrap=0", labels=labels[chosen])
    assert "fld_interval" not in metrics
    assert min(metrics["precision"], metrics["recall"]) > 0.85
    assert abs(metrics["kid"]) < 3 * metrics["kid_se"]
    assert metrics["requested_label_accuracy"] > 0.97
    assert len(metrics["fld_per_class"]) == 10 and "class_balance" not in metrics
    assert "FLD of the class" in (tmp_path / "eval" / "report.md").read_text()


def test_a_bad_metric_setting_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^metrics.confidence=1.5:? must be"):
        run(tmp_path, NOISE, "metrics.confidence=1.5")


def test_floors_are_shown_beside_the_scores(tmp_path, capsys):
    metrics = {
        "dataset": "mnist",
        "lenet": "42b7f565b580 (shipped)",
        "num_samples": 1000,
        "fld": 2.5,
        "fld_interval": [2.0, 3.0],
        "fld_sd": 0.25,
        "confidence": 0.95,
        "kid": 0.75,
        "kid_se": 0.1,
        "kid_std": 0.3,
        "kid_subsets": 100,
        "kid_subset_size": 1000,
        "mean_confidence": 0.9,
        "mean_min_distance_to_class_means": 9.0,
        "label_counts": [100] * 10,
        "test_label_counts": [1000] * 10,
    }
    print_table(metrics, {}, floor=FLOOR)
    printed = capsys.readouterr().out
    floors = [line for line in printed.splitlines() if "floor: real training images" in line]
    assert "1.25±0.04" in floors[0] and "0.5±0.2" in floors[1]
    assert all(line.rstrip("│ ").endswith(" 1,000") for line in floors)
    assert "| FLD | 2.5000 | 95%: [2.0000, 3.0000]" in report_markdown(metrics, FLOOR)
    written = write_report(tmp_path, metrics, NOISE.float() / 127.5 - 1, FLOOR)
    assert [path.name for path in written] == ["report.md", "report.png"]
    assert Image.open(written[1]).size == (640, 260), "no precision panel without precision"
