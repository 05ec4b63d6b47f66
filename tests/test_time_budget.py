import csv
import logging
import math

import lightning as L
import pytest
from lightning.pytorch.callbacks import timer

from ddpm_lightning.errors import ConfigError
from ddpm_lightning.train import train
from ddpm_lightning.training.checkpoints import read_checkpoint
from ddpm_lightning.training.module import warmup_cosine
from ddpm_lightning.training.time_budget import TimeBudget, fitted_steps, plan_message
from tests.conftest import tiny_config
from tests.test_tooling import StopAt

# Epochs of 3 batches (100 of them: an epoch plan of 300 steps) that a 30-second limit cuts at
# step 30.
EPOCHS = "trainer.max_epochs=100"
BUDGETED = [
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "+trainer.max_time=00:00:00:30",
    "lr_schedule.warmup_steps=2",
    "callbacks.time_budget.every_n_steps=5",
]


def test_fitted_steps():
    assert fitted_steps(100, 0.5, 50.0, 10_000) == 200
    assert fitted_steps(100, 0.5, 50.0, 150) == 150, "capped by the epoch plan"
    assert fitted_steps(100, 0.5, 50.0, math.inf) == 200, "no epoch limit"
    assert fitted_steps(100, 0.3, 1.0, 10_000) == 103, "whole steps only"
    assert fitted_steps(100, 0.5, -3.0, 10_000) == 100, "time is up: decay ends now"


def test_the_plan_message_says_when_the_epoch_plan_ends_the_run_first():
    assert plan_message(0.5, 200, 200, 50) == (
        "trainer.max_time: 0.500 s per step, the learning-rate decay is planned over 200 steps "
        "and re-planned every 50"
    )
    assert plan_message(0.162, 33_760, 44_000, 50) == (
        "trainer.max_time: 0.162 s per step; trainer.max_epochs ends the run after 33,760 steps, "
        "0:27:39 (h:mm:ss) before the time limit: the learning-rate decay is planned over them "
        "(trainer.max_epochs=-1 trains until the time limit)"
    )


def test_warmup_cosine():
    assert [warmup_cosine(s, 4, 14, True) for s in (0, 3)] == [0.25, 1.0]
    assert warmup_cosine(9, 4, 14, True) == pytest.approx(0.5), "half-way through the decay"
    assert warmup_cosine(14, 4, 14, True) == 0.0 and warmup_cosine(20, 4, 14, True) == 0.0
    assert warmup_cosine(9, 4, 14, False) == 1.0
    assert warmup_cosine(9, 4, math.inf, True) == 1.0, "no plan yet: no decay"
    assert warmup_cosine(9, 4, 3, True) == 0.0, "a plan shorter than the warm-up: 0 after it"


def test_bad_interval_names_the_key():
    with pytest.raises(ConfigError, match="callbacks.time_budget.every_n_steps"):
        TimeBudget(every_n_steps=0)


class StepClock(L.Callback):
    """Lightning's Timer clock reading one second per optimizer step: a pace of exactly 1 s."""

    def __init__(self):
        self.trainer: L.Trainer | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trainer = trainer

    def monotonic(self) -> float:
        return float(self.trainer.global_step) if self.trainer else 0.0


@pytest.mark.parametrize(
    "budget, epochs",
    [(True, EPOCHS), (True, "trainer.max_epochs=-1"), (False, EPOCHS)],
)
def test_a_time_limited_run_decays_its_learning_rate_to_zero(
    data_root, tmp_path, monkeypatch, budget, epochs
):
    """At 1 s per step, measured over steps 5-10 (the first 5 are not counted), the re-plan at
    step 10 fits 20 more steps in the 20 s left: the cosine ends at step 30, where the time
    limit stops the run, also without an epoch limit. Without the re-plan the decay is planned
    over 300 steps and the run stops at 97% of the peak learning rate."""
    clock = StepClock()
    monkeypatch.setattr(timer, "time", clock)
    overrides = [*BUDGETED, epochs, *([] if budget else ["callbacks.time_budget=null"])]
    train(tiny_config(data_root, tmp_path, *overrides), [clock])
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 30
    (scheduler,) = checkpoint["lr_schedulers"]
    peak = scheduler["base_lrs"][0]
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    plans = {
        int(row["step"]): float(row["train/planned_steps"])
        for row in rows
        if row.get("train/planned_steps")
    }
    if budget:
        assert scheduler["_last_lr"][0] == 0.0
        assert {9, 14, 19, 24, 29} <= set(plans) and 4 not in plans, "re-planned at 10, …, 30"
        assert set(plans.values()) == {30.0}
        assert checkpoint["callbacks"]["TimeBudget"] == {"pace": 1.0}
    else:
        progress = (30 - 2) / (300 - 2)
        assert scheduler["_last_lr"][0] == pytest.approx(
            0.5 * peak * (1 + math.cos(math.pi * progress))
        )
        assert plans == {}


def test_a_resumed_time_limited_run_keeps_its_plan(data_root, tmp_path, monkeypatch):
    """Pre-empted at step 12 and resumed: the resumed run re-plans at once with the saved pace
    (1 s per step, 18 s left), so steps 12-14 train at the cosine's values for 30 steps, not
    for the epoch plan of 300, and the decay still ends at step 30."""
    monkeypatch.setattr(timer, "time", first_clock := StepClock())
    stopped = tmp_path / "stopped"
    with pytest.raises(SystemExit):
        train(tiny_config(data_root, stopped, *BUDGETED, EPOCHS), [first_clock, StopAt(4, 0)])
    last = stopped / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 12
    monkeypatch.setattr(timer, "time", clock := StepClock())
    resumed = tmp_path / "resumed"
    train(tiny_config(data_root, resumed, *BUDGETED, EPOCHS, f"ckpt_path={last}"), [clock])
    checkpoint = read_checkpoint(resumed / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 30
    assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == 0.0
    rows = list(csv.DictReader((resumed / "csv" / "metrics.csv").open()))
    lrs = [float(row["lr-Adam"]) for row in rows if row["lr-Adam"]][:3]  # steps 12, 13, 14
    peak = checkpoint["lr_schedulers"][0]["base_lrs"][0]
    assert lrs == pytest.approx(
        [0.5 * peak * (1 + math.cos(math.pi * (step - 2) / (30 - 2))) for step in (12, 13, 14)]
    )


def test_an_epoch_plan_shorter_than_the_time_limit_is_said_once(
    data_root, tmp_path, monkeypatch, caplog
):
    """5 epochs of 3 batches (15 steps) under a 30-second limit at 1 s per step: the first plan
    (step 10: 20 steps fit the 20 s left) says that the epoch plan ends the run 15 s early, once,
    though every later re-plan is capped by it too; the decay still ends with the run."""
    clock = StepClock()
    monkeypatch.setattr(timer, "time", clock)
    with caplog.at_level(logging.INFO):
        train(tiny_config(data_root, tmp_path, *BUDGETED, "trainer.max_epochs=5"), [clock])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trainer.max_time")]
    assert said == [
        "trainer.max_time: 1.000 s per step; trainer.max_epochs ends the run after 15 steps, "
        "0:00:15 (h:mm:ss) before the time limit: the learning-rate decay is planned over them "
        "(trainer.max_epochs=-1 trains until the time limit)"
    ]
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 15
    assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == 0.0
