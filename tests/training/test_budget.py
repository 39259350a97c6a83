"""trainer.time_budget_s: the epochs that fit are planned from a probe that leaves the run untouched."""

import itertools
import json
import logging
import math
import time
from types import SimpleNamespace

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from attnscope.engine.config import load_config
from attnscope.engine.rundir import RunPaths, load_weights, read_metrics_csv
from attnscope.errors import ConfigError
from attnscope.training import budget
from attnscope.training.budget import BudgetGuard, EpochCost, early_check_batch, epochs_that_fit, relay_schedule
from attnscope.training.task import WarmupCosine, warmup_cosine
from attnscope.training.train import _budget_guard, _plan_within_budget, train
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


@pytest.mark.slow
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
    journal = json.loads(paths.budget.read_text())
    assert (journal["budget_s"], journal["max_epochs"], journal["planned_epochs"], journal["events"]) == (
        100000,
        2,
        2,
        [],
    )
    probe = journal["probe"]
    assert probe["train_batch_s"] > 0 and probe["epoch_s"] == pytest.approx(
        probe["train_batches"] * probe["train_batch_s"] + probe["val_batches"] * probe["val_batch_s"], abs=0.01
    )
    assert not RunPaths(tmp_path / "plain").budget.exists()


@pytest.mark.slow
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


def _onecycle_trainer(epochs: int, batches: int, done: int):
    """A stand-in for Lightning's trainer after ``done`` epochs of a one-cycle run planned for ``epochs``."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=epochs * batches, pct_start=0.25)
    for _ in range(done * batches):
        optimizer.step()
        scheduler.step()
    trainer = SimpleNamespace(
        current_epoch=done - 1,
        max_epochs=epochs,
        should_stop=False,
        num_training_batches=batches,
        lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)],
        fit_loop=SimpleNamespace(max_epochs=epochs),
    )
    return trainer, scheduler, optimizer


def _guard_after(trainer, pace, elapsed, budget_s):
    """The guard's events after an epoch of ``pace`` seconds, ``elapsed`` seconds into the run;
    as (action, epochs) pairs."""
    events = []
    guard = BudgetGuard(budget_s, started=time.perf_counter() - elapsed, on_change=events.append)
    guard._epoch_started = time.perf_counter() - pace
    guard.on_train_epoch_end(trainer, None)
    assert all(event["after_epoch"] == trainer.current_epoch + 1 for event in events)
    return [(event["action"], event["epochs"]) for event in events]


def test_the_guard_leaves_a_plan_that_still_fits_alone():
    trainer, scheduler, _ = _onecycle_trainer(epochs=6, batches=10, done=2)
    assert _guard_after(trainer, pace=30, elapsed=60, budget_s=200) == []  # 4 more epochs of 30 s fit in 140
    assert (trainer.should_stop, trainer.fit_loop.max_epochs, scheduler.total_steps) == (False, 6, 60)


def test_when_epochs_slow_down_the_guard_replans_and_the_schedule_still_anneals(caplog):
    trainer, scheduler, optimizer = _onecycle_trainer(epochs=6, batches=10, done=2)
    before = optimizer.param_groups[0]["lr"]
    with caplog.at_level(logging.WARNING, logger="attnscope.training.budget"):
        assert _guard_after(trainer, pace=30, elapsed=60, budget_s=155) == [("replanned", 5)]  # 95 s: 3 more
    assert "so 5 of the 6 planned fit" in caplog.text
    assert (trainer.should_stop, trainer.fit_loop.max_epochs, scheduler.total_steps) == (False, 5, 50)
    rates = []
    for _ in range(30):  # the three epochs left
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    # the rate each of those steps uses (the scheduler's value after the very last step is never used)
    used = rates[:-1]
    assert used[0] < before and all(a > b for a, b in itertools.pairwise(used))
    assert used[-1] == pytest.approx(0.1 / 25 / 1e4)  # the schedule's floor, reached at the new end


def test_the_guard_stops_when_not_one_more_epoch_fits_or_the_warm_up_would_not_end(caplog):
    trainer, _, _ = _onecycle_trainer(epochs=6, batches=10, done=2)
    with caplog.at_level(logging.WARNING, logger="attnscope.training.budget"):
        assert _guard_after(trainer, pace=30, elapsed=60, budget_s=80) == [("stopped", 2)]
    assert trainer.should_stop and "stopping after epoch 2 of 6" in caplog.text and "has not finished" in caplog.text
    trainer, scheduler, _ = _onecycle_trainer(epochs=8, batches=10, done=1)  # warm-up: the first 2 epochs
    assert _guard_after(trainer, pace=30, elapsed=30, budget_s=65) == [("stopped", 1)]  # 1 more ends in warm-up
    assert trainer.should_stop and scheduler.total_steps == 80
    trainer, _, _ = _onecycle_trainer(epochs=6, batches=10, done=6)
    assert _guard_after(trainer, pace=30, elapsed=180, budget_s=100) == [] and not trainer.should_stop  # the last


def test_a_shortened_cosine_follows_the_formula_at_the_new_horizon_and_keeps_it_in_its_state():
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(10, 100, 0.1))
    for _ in range(50):
        optimizer.step()
        scheduler.step()
    assert relay_schedule(scheduler, 80)
    for step in range(51, 81):
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(warmup_cosine(step, 10, 80, 0.1))
    fresh = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(10, 100, 0.1))
    fresh.load_state_dict(scheduler.state_dict())  # a resumed run keeps the shortened horizon
    assert fresh.lr_lambdas[0].total == 80
    assert not relay_schedule(scheduler, 10)  # would end inside the warm-up


def test_a_budget_is_refused_for_more_than_one_process_and_for_a_bad_value():
    config = load_config(None, ["trainer.time_budget_s=60"])
    with pytest.raises(ConfigError, match="time_budget_s plans epochs by timing one process, and this run has 2"):
        _plan_within_budget(config, SimpleNamespace(world_size=2), None, None, None, 0.0)
    for bad in ("0", "-5", "soon"):
        with pytest.raises(ConfigError, match="trainer.time_budget_s"):
            load_config(None, [f"trainer.time_budget_s={bad}"])
    assert math.isclose(load_config(None, ["trainer.time_budget_s=90.5"]).trainer.time_budget_s, 90.5)


def test_the_guards_events_join_budget_json_and_a_replan_rewrites_the_config(tmp_path):
    config = load_config(None, tiny_settings(tmp_path / "run", epochs=9) + ["trainer.time_budget_s=60"])
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    assert _budget_guard(load_config(None, []), paths, 0.0, {}) == []  # no budget, no guard
    journal = {"budget_s": 60, "planned_epochs": 9, "events": []}
    (guard,) = _budget_guard(config, paths, time.perf_counter(), journal)
    event = {"after_epoch": 2, "pace_s": 9.0, "left_s": 40.0}
    guard.on_change({**event, "action": "replanned", "epochs": 6})
    saved = yaml.safe_load(paths.config.read_text())["trainer"]
    assert (saved["epochs"], saved["time_budget_s"]) == (6, 60)
    guard.on_change({**event, "after_epoch": 5, "action": "stopped", "epochs": 5})
    written = json.loads(paths.budget.read_text())
    assert [e["action"] for e in written["events"]] == ["replanned", "stopped"] and written["planned_epochs"] == 9
    assert yaml.safe_load(paths.config.read_text())["trainer"]["epochs"] == 6  # a stop leaves the plan as it was


def _warming_up(epochs: int, batches: int, steps: int, pct_start: float = 0.25):
    """A stand-in trainer ``steps`` batches into the first epoch of a one-cycle run planned for ``epochs``."""
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
    total = epochs * batches
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=total, pct_start=pct_start)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    trainer = SimpleNamespace(
        current_epoch=0,
        max_epochs=epochs,
        num_training_batches=batches,
        lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)],
        fit_loop=SimpleNamespace(max_epochs=epochs),
    )
    return trainer, scheduler, optimizer


def _early_events(trainer, probe: EpochCost, pace: float, budget_s: float, max_epochs: int, monkeypatch):
    """The guard's events when the first epoch's batches end every ``pace`` seconds (a fake clock
    started with the run), as (action, epochs, after_batch)."""
    now = iter(itertools.count(start=0.0, step=pace))
    monkeypatch.setattr(budget.time, "perf_counter", lambda: next(now))
    events = []
    guard = BudgetGuard(budget_s, started=0.0, on_change=events.append)
    guard.expect(probe, max_epochs)
    for _ in range(early_check_batch(probe.train_batches)):
        guard.on_train_batch_end(trainer, None)
    return [(e["action"], e["epochs"], e["after_batch"]) for e in events]


def _one_cycle_rates(scheduler, optimizer, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_the_check_batch_is_a_tenth_of_the_first_epoch_and_never_fewer_than_the_probe_timed():
    assert [early_check_batch(n) for n in (422, 1000, 100, 31, 30, 5)] == [43, 100, 30, 30, 0, 0]


def test_when_the_probe_was_slowed_down_the_first_batches_plan_more_epochs_and_stretch_the_warm_up(monkeypatch, caplog):
    # the probe fell on a busy moment: 0.85 s a batch, one epoch planned; the run's batches take 0.2 s
    probe = EpochCost(train_batch_s=0.85, val_batch_s=0.2, train_batches=422, val_batches=12)
    trainer, scheduler, optimizer = _warming_up(epochs=1, batches=422, steps=43)
    with caplog.at_level(logging.WARNING, logger="attnscope.training.budget"):
        events = _early_events(trainer, probe, pace=0.2, budget_s=570, max_epochs=15, monkeypatch=monkeypatch)
    # at batch 43, 8.6 s in: the epoch's rest takes 379 x 0.2 + 12 x 0.2 = 78.2 s, an epoch 86.8 s, and
    # (570 - 8.6 - 78.2) // 86.8 = 5 more fit
    assert events == [("replanned", 6, 43)] and trainer.fit_loop.max_epochs == 6
    assert "so 6 epochs fit, not 1" in caplog.text
    fresh_optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
    fresh = torch.optim.lr_scheduler.OneCycleLR(fresh_optimizer, max_lr=0.1, total_steps=6 * 422, pct_start=0.25)
    reference = _one_cycle_rates(fresh, fresh_optimizer, 6 * 422)
    # from the next step on (this one's rate was set before), those of a one-cycle run planned for 6
    # epochs from the start: a warm-up of a quarter of them, then the anneal to the floor; the rate
    # steps down to where the longer warm-up is at this step
    rates = _one_cycle_rates(scheduler, optimizer, 6 * 422 - 43)
    assert rates[1:] == pytest.approx(reference[44:], rel=1e-9) and rates[1] < rates[0] / 5


def test_when_the_probe_was_too_hopeful_the_first_batches_plan_fewer_epochs(monkeypatch):
    probe = EpochCost(train_batch_s=0.15, val_batch_s=0.2, train_batches=422, val_batches=12)
    trainer, scheduler, _ = _warming_up(epochs=8, batches=422, steps=43)
    # 0.3 s a batch: 13.2 s in, the rest of the epoch 116.1 s, an epoch 129 s: 3 more fit
    events = _early_events(trainer, probe, pace=0.3, budget_s=570, max_epochs=15, monkeypatch=monkeypatch)
    assert events == [("replanned", 4, 43)] and scheduler.total_steps == 4 * 422
    assert scheduler._schedule_phases[0]["end_step"] == pytest.approx(0.25 * 4 * 422 - 1)


def test_the_early_check_leaves_a_plan_that_fits_a_finished_warm_up_and_small_differences_alone(monkeypatch, caplog):
    probe = EpochCost(train_batch_s=0.2, val_batch_s=0.2, train_batches=422, val_batches=12)
    trainer, scheduler, _ = _warming_up(epochs=6, batches=422, steps=43)
    assert _early_events(trainer, probe, pace=0.2, budget_s=570, max_epochs=15, monkeypatch=monkeypatch) == []
    assert (trainer.fit_loop.max_epochs, scheduler.total_steps) == (6, 6 * 422)
    # the probe was slowed down and 5 more would fit, but the warm-up (1% of the steps) ended at step 3:
    # stretching it now would send the rate back down; the epoch-end guard still shortens where needed
    slowed = EpochCost(train_batch_s=0.85, val_batch_s=0.2, train_batches=422, val_batches=12)
    trainer, scheduler, _ = _warming_up(epochs=1, batches=422, steps=43, pct_start=0.01)
    with caplog.at_level(logging.INFO, logger="attnscope.training.budget"):
        assert _early_events(trainer, slowed, pace=0.2, budget_s=570, max_epochs=15, monkeypatch=monkeypatch) == []
    assert "say 6 epochs fit, not 1, but the warm-up is over" in caplog.text
    assert (trainer.fit_loop.max_epochs, scheduler.total_steps) == (1, 422)
    # 12% faster than the probe would fit a sixth epoch, but that is a shared machine's noise: left to the
    # epoch-end guard, which would take it back if the next batches were slower
    trainer, scheduler, _ = _warming_up(epochs=5, batches=422, steps=43)
    near = EpochCost(train_batch_s=0.235, val_batch_s=0.2, train_batches=422, val_batches=12)
    assert _early_events(trainer, near, pace=0.207, budget_s=570, max_epochs=15, monkeypatch=monkeypatch) == []
    assert (trainer.fit_loop.max_epochs, scheduler.total_steps) == (5, 5 * 422)
    trainer, scheduler, _ = _warming_up(epochs=1, batches=422, steps=43)
    assert _early_events(trainer, slowed, pace=0.2, budget_s=570, max_epochs=3, monkeypatch=monkeypatch) == [
        ("replanned", 3, 43)
    ]


@pytest.mark.slow
def test_a_run_whose_probe_fell_on_a_busy_moment_trains_the_epochs_its_first_batches_say_fit(tmp_path, monkeypatch):
    # the probe says an epoch takes 1000 s, so one of at most 3 fits in 1500 s; the run's batches take
    # milliseconds, and after 30 of the first epoch's 35 batches the run is re-planned to all 3
    monkeypatch.setattr(budget, "probe_epoch_cost", lambda *a, **k: EpochCost(1000 / 35, 0.0, 35, 1))
    settings = ["schedule.name=onecycle", "optim.name=sgd", "optim.lr=0.05", "data.batch_size=8"]
    settings += ["data.source_options={count: 400, size: 16}", "data.image_size=16"]
    train(load_config(None, tiny_settings(tmp_path / "budget", epochs=3) + [*settings, "trainer.time_budget_s=1500"]))
    train(load_config(None, tiny_settings(tmp_path / "three", epochs=3) + settings))

    paths = RunPaths(tmp_path / "budget")
    history, reference = read_metrics_csv(paths.metrics), read_metrics_csv(RunPaths(tmp_path / "three").metrics)
    assert len(history) == 3 and "1 of at most 3 epochs fit" in paths.log.read_text()
    journal = json.loads(paths.budget.read_text())
    assert journal["planned_epochs"] == 1
    assert [(e["action"], e["epochs"], e["after_batch"]) for e in journal["events"]] == [("replanned", 3, 30)]
    assert yaml.safe_load(paths.config.read_text())["trainer"]["epochs"] == 3
    # from the re-plan on, the schedule is a 3-epoch run's: each epoch ends at the same learning rate
    assert [row["lr"] for row in history] == pytest.approx([row["lr"] for row in reference], rel=1e-9)
