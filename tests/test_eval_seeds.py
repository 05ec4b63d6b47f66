"""The evaluate command's share of confidently classified samples (on constructed class
probabilities) and its FLD across seeds: k sample sets of a tiny model drawn with seeds
seed … seed + k − 1, their mean, sd and t interval, with the first set's scores unchanged."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scipy.stats import t as student_t

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.evaluate import evaluate
from ddpm_lightning.evaluation.confidence import confidence_scores
from ddpm_lightning.evaluation.intervals import across_seeds
from tests.conftest import tiny_model_folder, writing_config

SEED_KEYS = {"fld_seeds", "fld_seed_mean", "fld_seed_sd", "fld_seed_interval"}
# Eight samples, two sampler steps, no precision/recall (n ≤ nearest_k): seconds on a CPU.
TINY_RUN = [
    "num_samples=8",
    "sampler.num_steps=2",
    "trainer.accelerator=cpu",
    "metrics.nearest_k=8",
    "metrics.bootstrap=20",
    "metrics.kid_subsets=2",
]


def test_the_confident_share_counts_top_probabilities_at_or_above_the_threshold():
    """Top probabilities 0.95, 0.9, 0.5, 0.89 and 1/3: two of five reach 0.9."""
    probabilities = torch.tensor(
        [
            [0.95, 0.05, 0.0],
            [0.05, 0.9, 0.05],
            [0.5, 0.25, 0.25],
            [0.0, 0.11, 0.89],
            [1 / 3, 1 / 3, 1 / 3],
        ]
    )
    found = confidence_scores(probabilities, 0.9)
    assert found["confident_share"] == pytest.approx(2 / 5)
    assert found["mean_confidence"] == pytest.approx((0.95 + 0.9 + 0.5 + 0.89 + 1 / 3) / 5)
    assert confidence_scores(probabilities, 1 / 3)["confident_share"] == 1.0
    assert confidence_scores(probabilities, 0.96)["confident_share"] == 0.0


def test_the_interval_across_seeds_is_the_t_interval_of_the_mean():
    """FLDs 2, 3, 4 and 7: mean 4, sd √(14/3), half-width t₀.₉₇₅,₃ · sd / 2."""
    found = across_seeds([2.0, 3.0, 4.0, 7.0], 0.95)
    sd = math.sqrt(14 / 3)
    half = 3.182446305284263 * sd / 2
    assert found["fld_seed_mean"] == 4.0 and found["fld_seed_sd"] == pytest.approx(sd)
    assert found["fld_seed_interval"] == pytest.approx([4 - half, 4 + half])
    assert found["fld_seeds"] == [2.0, 3.0, 4.0, 7.0]


def run(folder, out, *overrides) -> tuple[dict, dict]:
    """The metrics evaluate returns and the metrics.json it writes."""
    cfg = writing_config("evaluate", out, f"pretrained={folder}", *TINY_RUN, *overrides)
    metrics = evaluate(cfg)
    return metrics, json.loads((out / "metrics.json").read_text())


def test_several_seeds_add_the_spread_of_fld_and_keep_the_first_sets_scores(tmp_path, capsys):
    folder = tiny_model_folder(tmp_path / "model")
    one, _ = run(folder, tmp_path / "one")
    capsys.readouterr()
    two, saved = run(folder, tmp_path / "two", "metrics.num_seeds=2")
    printed = capsys.readouterr().out
    second, _ = run(folder, tmp_path / "second", "seed=1", "metrics.confident_threshold=0.05")
    assert saved == json.loads(json.dumps(two))
    assert SEED_KEYS.isdisjoint(one) and set(two) - set(one) == SEED_KEYS
    assert {key: two[key] for key in one} == one, "the first set's scores as with one seed"
    flds = two["fld_seeds"]
    assert flds == [one["fld"], second["fld"]] and flds[0] != flds[1]
    mean, sd = sum(flds) / 2, abs(flds[0] - flds[1]) / math.sqrt(2)
    half = student_t.ppf(0.975, 1) * sd / math.sqrt(2)
    assert two["fld_seed_mean"] == pytest.approx(mean) and two["fld_seed_sd"] == pytest.approx(sd)
    assert two["fld_seed_interval"] == pytest.approx([mean - half, mean + half])
    assert "FLD across 2 seeds" in printed and "share with LeNet confidence ≥ 0.9" in printed
    report = (tmp_path / "two" / "report.md").read_text()
    assert "FLD, mean over 2 seeds" in report and f"{two['fld_seed_mean']:.4f}" in report
    assert "share with LeNet confidence ≥ 0.9" in report
    assert 0 <= one["confident_share"] <= 1 and one["confident_threshold"] == 0.9
    assert second["confident_share"] == 1.0, "ten classes: the top probability is ≥ 0.1"


def test_several_seeds_of_a_samples_file_are_refused(tmp_path):
    cfg = writing_config(
        "evaluate", tmp_path / "out", f"samples={tmp_path / 'samples.npz'}", "metrics.num_seeds=3"
    )
    with pytest.raises(ConfigError, match=r"^metrics.num_seeds=3 draws fresh sample sets"):
        evaluate(cfg)
