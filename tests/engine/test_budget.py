"""trainer.time_budget_s: the epochs that fit are planned from a probe that leaves the run untouched."""

import logging
import math
import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from attnscope.engine import budget
from attnscope.engine.budget import BudgetGuard, EpochCost, epochs_that_fit
from attnscope.engine.config import load_config
from attnscope.engine.rundir import RunPaths, load_weights, read_metrics_csv
from attnscope.engine.train import _plan_within_budget, train
from attnscope.errors import ConfigError
from tests.runs import tiny_settings


@given(
    budget_s=st.floats(1, 1e5),
    spent_s=st.floats(0, 1e5),
    epoch_s=st.floats(0.01, 1e4),
    max_epochs=st.integers(1, 500),
)
def test_the_planned_epochs_are_the_whole_epochs_left_between_one_and_the_maximum(
    budget_s, spent_s, epoch_s, max_epochs
):
    cost = EpochCost(train_batch_s=epoch_s / 10, val_batch_s=0.0, train_batches=10, val_batches=3)
    epochs = epochs_that_fit(budget_s, spent_s, cost, max_epochs)
    assert 1 <= epochs <= max_epochs
    left, tolerance = budget_s - spent_s, 1e-9 * budget_s
    if epochs > 1:  # every planned epoch fits (one is run even when none does)
        assert epochs * cost.epoch_s <= left + tolerance
    if epochs < max_epochs:  # and one more would not
        assert (epochs + 1) * cost.epoch_s > left - tolerance


def test_an_epoch_costs_its_training_and_validation_batches():
    cost = EpochCost(train_batch_s=0.25, val_batch_s=0.1, train_batches=100, val_batches=20)
    assert cost.epoch_s == pytest.approx(27.0)
    assert epochs_that_fit(600, 60, cost, 50) == 20


def _weights(run_dir):
    return load_weights(RunPaths(run_dir).last_weights)


def test_a_budget_that_fits_every_epoch_trains_exactly_the_run_without_one(tmp_path):
    settings = ["schedule.name=onecycle", "optim.name=sgd", "optim.lr=0.05"]
    train(load_config(None, tiny_settings(tmp_path / "plain", epochs=2) + settings))
    budgeted = tiny_settings(tmp_path / "budget", epochs=2) + [*settings, "trainer.time_budget_s=100000"]
    train(load_config(None, budgeted))

    plain, probed = _weights(tmp_path / "plain"), _weights(tmp_path / "budget")
    assert plain.keys() == probed.keys()
    for name in plain:  # the probe trained a copy, and put every random generator back
        assert torch.equal(plain[name], probed[name]), name
    paths = RunPaths(tmp_path / "budget")
    assert "time budget 100000 s: 2 of at most 2 epochs fit" in paths.log.read_text()
    saved = yaml.safe_load(paths.config.read_text())["trainer"]
    assert (saved["epochs"], saved["time_budget_s"]) == (2, 100000)


def test_a_tight_budget_plans_fewer_epochs_with_the_schedule_of_a_run_that_long(tmp_path, monkeypatch):
    # an epoch "costs" 1000 s and the budget leaves room for two and a half: two are planned of at most 5
    monkeypatch.setattr(budget, "probe_epoch_cost", lambda *a, **k: EpochCost(100.0, 0.0, 10, 1))
    settings = ["schedule.name=onecycle", "optim.name=sgd", "optim.lr=0.05"]
    train(load_config(None, tiny_settings(tmp_path / "budget", epochs=5) + [*settings, "trainer.time_budget_s=2500"]))
    train(load_config(None, tiny_settings(tmp_path / "two", epochs=2) + settings))

    paths = RunPaths(tmp_path / "budget")
    history, reference = read_metrics_csv(paths.metrics), read_metrics_csv(RunPaths(tmp_path / "two").metrics)
    assert len(history) == 2
    # the one-cycle schedule was laid out for two epochs, not cut from five: it annealed as a 2-epoch run's did
    assert [row["lr"] for row in history] == pytest.approx([row["lr"] for row in reference], rel=1e-9)
    assert history[-1]["lr"] < 0.05 / 25  # below the schedule's starting rate: annealed
    assert yaml.safe_load(paths.config.read_text())["trainer"]["epochs"] == 2
    assert "2 of at most 5 epochs fit" in paths.log.read_text()


def _guard_after(epoch_seconds, elapsed, budget_s, epoch, max_epochs):
    guard = BudgetGuard(budget_s, started=time.perf_counter() - elapsed)
    guard._epoch_started = time.perf_counter() - epoch_seconds
    trainer = SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs, should_stop=False)
    guard.on_train_epoch_end(trainer, None)
    return trainer.should_stop


def test_the_guard_stops_before_an_epoch_that_would_overrun_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="attnscope.engine.budget"):
        assert _guard_after(epoch_seconds=30, elapsed=90, budget_s=100, epoch=2, max_epochs=6)
    assert "stopping after epoch 3 of 6" in caplog.text and "has not finished" in caplog.text
    assert not _guard_after(epoch_seconds=30, elapsed=60, budget_s=100, epoch=1, max_epochs=6)
    # after the last epoch there is nothing to stop
    assert not _guard_after(epoch_seconds=30, elapsed=90, budget_s=100, epoch=5, max_epochs=6)


def test_a_budget_is_refused_for_more_than_one_process_and_for_a_bad_value():
    config = load_config(None, ["trainer.time_budget_s=60"])
    with pytest.raises(ConfigError, match="time_budget_s plans epochs by timing one process, and this run has 2"):
        _plan_within_budget(config, SimpleNamespace(world_size=2), None, None, None, 0.0)
    for bad in ("0", "-5", "soon"):
        with pytest.raises(ConfigError, match="trainer.time_budget_s"):
            load_config(None, [f"trainer.time_budget_s={bad}"])
    assert math.isclose(load_config(None, ["trainer.time_budget_s=90.5"]).trainer.time_budget_s, 90.5)
