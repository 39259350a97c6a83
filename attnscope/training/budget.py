"""A wall-time budget for training: how many epochs fit, measured on this machine.

With ``trainer.time_budget_s`` the epoch count becomes a maximum. Before training, a
short probe times training and validation batches (data, augmentation and step
together) on a copy of the model, so the run's own weights and random state are
untouched. The epochs that fit in what is left of the budget are planned, and the
learning-rate schedule is laid out for them, so a one-cycle or cosine schedule still
anneals to its end: a run cut off by the clock mid-schedule would not. The planned count
is written to the run's ``config.yaml``, so the run can be repeated exactly without the
budget. A tenth into the first epoch a guard checks the probe against the run's own
batches and re-plans up or down while the warm-up can still follow (a probe of seconds
can fall on a busy moment). After each epoch it compares the plan with the epochs' real
pace and, when they have slowed, re-plans to fewer epochs with the schedule shortened to
anneal by then; it stops outright only when not one more epoch fits. ``RUN/budget.json`` keeps
the measurement, the plan and every re-plan.

Machines differ several-fold in speed (the README's Fashion-MNIST recipe trains 2.4-3x
slower on one 2-core CPU than on another, and a shared machine drifts within a run),
which is why a budget is planned from a measurement and checked as it goes.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from attnscope.training.precision import resolve_precision
from attnscope.training.task import WarmupCosine

log = logging.getLogger(__name__)

PROBE_TRAIN_BATCHES = 24
PROBE_VAL_BATCHES = 4
# intervals left out: the first batches build kernels (and compile, where asked). On the Fashion-MNIST
# recipe the first five ran 20-50% slower than the rest, and 10 batches less 2 overestimated an epoch by 15%.
PROBE_WARMUP = 6
# The run's own first batches check the probe: after this share of the first epoch (and no fewer batches than it
# timed), and only where their pace is this far from the probe's. A probe that fell on a busy moment is off by 2-4x;
# 10-15% is the noise of a shared machine, which the epoch-end guard answers (on 2026-11-23 a check acting on 12%
# planned 6 epochs where the probe had planned 5, and the guard took it back to 5 after the first epoch).
EARLY_CHECK_SHARE = 0.1
EARLY_CHECK_TOLERANCE = 0.25

# Warnings every fit raises on purpose: the task applies its transform in on_after_batch_transfer (it
# knows training from evaluation), a deprecation inside Lightning (LeafSpec), and AG-CNN's frozen
# branches stay in eval mode while a stage trains the others.
FIT_WARNINGS = (".*on_after_batch_transfer.*", ".*LeafSpec.*", ".*module\\(s\\) in eval mode.*")


@contextmanager
def quiet_fit_warnings():
    """Silence the warnings every attnscope fit raises on purpose (see :data:`FIT_WARNINGS`)."""
    with warnings.catch_warnings():
        for message in FIT_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


@dataclass(frozen=True)
class EpochCost:
    """Seconds per training batch and per validation batch, each from data to step, and the batch counts."""

    train_batch_s: float
    val_batch_s: float
    train_batches: int
    val_batches: int

    @property
    def epoch_s(self) -> float:
        return self.train_batches * self.train_batch_s + self.val_batches * self.val_batch_s


def epochs_that_fit(budget_s: float, spent_s: float, cost: EpochCost, max_epochs: int) -> int:
    """Whole epochs of ``cost`` in the ``budget_s - spent_s`` seconds left: at least 1, at most ``max_epochs``."""
    left = budget_s - spent_s
    fitting = int(left // cost.epoch_s) if cost.epoch_s > 0 else max_epochs
    return max(1, min(max_epochs, fitting))


def early_check_batch(batches: int) -> int:
    """After how many batches of the first epoch the guard checks the plan: a tenth of the epoch,
    and at least as many as the probe timed; 0 (never) where that is not before the epoch's end."""
    at = max(PROBE_WARMUP + PROBE_TRAIN_BATCHES, math.ceil(EARLY_CHECK_SHARE * batches))
    return at if at < batches else 0


class _BatchClock(Callback):
    """Times between the ends of consecutive batches: loading, augmentation and the step together."""

    def __init__(self) -> None:
        self.train: list[float] = []
        self.val: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.train.append(time.perf_counter())

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.val.append(time.perf_counter())

    def on_validation_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.val.append(time.perf_counter())


def _median_interval(stamps: list[float], skip: int) -> float:
    gaps = np.diff(stamps)[skip:] if len(stamps) > skip + 1 else np.diff(stamps)
    return float(statistics.median(gaps)) if len(gaps) else 0.0


@contextmanager
def _kept_random_state():
    """The probe draws random numbers (augmentation, dropout): put every generator back afterwards."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def probe_epoch_cost(
    make_task: Callable[[torch.nn.Module], L.LightningModule],
    model: torch.nn.Module,
    datamodule: L.LightningDataModule,
    trainer_options: dict[str, Any],
    batches: tuple[int, int],
) -> EpochCost:
    """Train a copy of ``model`` for a few batches and validate a few; return what an epoch of
    ``batches`` (training, validation) would cost."""
    clock = _BatchClock()
    train_limit = min(PROBE_TRAIN_BATCHES, batches[0])
    val_limit = min(PROBE_VAL_BATCHES, batches[1])
    with tempfile.TemporaryDirectory(prefix="attnscope-probe-") as scratch, _kept_random_state():
        probe = L.Trainer(
            default_root_dir=scratch,
            max_epochs=1,
            limit_train_batches=train_limit,
            limit_val_batches=val_limit,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            callbacks=[clock],
            **trainer_options,
        )
        with quiet_fit_warnings():
            probe.fit(make_task(copy.deepcopy(model)), datamodule=datamodule)
    skip = PROBE_WARMUP if train_limit > PROBE_WARMUP + 1 else 0
    return EpochCost(
        train_batch_s=_median_interval(clock.train, skip),
        val_batch_s=_median_interval(clock.val, 0),
        train_batches=batches[0],
        val_batches=batches[1],
    )


def relay_schedule(scheduler: Any, total_steps: int, warmup_too: bool = False) -> bool:
    """Lay the rest of ``scheduler`` out for ``total_steps`` in all, keeping the steps already
    taken: one-cycle and cosine then anneal to their end at the new horizon. A one-cycle warm-up
    is kept as it is, unless ``warmup_too`` stretches it with the horizon (its share of the
    steps kept), which is only done while the run is still inside the stretched warm-up; a
    cosine's warm-up is counted in epochs and stays. False, and nothing changed, where the new
    horizon would end inside the warm-up or before this step; true for schedules counted in
    epochs, which need nothing."""
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        phases = scheduler._schedule_phases  # torch's own layout: [warm-up, anneal] (or three phases)
        if total_steps <= scheduler.last_epoch:
            return False
        if warmup_too:
            warmup_end = (phases[0]["end_step"] + 1) * total_steps / scheduler.total_steps - 1
            if len(phases) != 2 or scheduler.last_epoch >= warmup_end:
                return False
            phases[0]["end_step"] = warmup_end
        elif total_steps - 1 <= phases[-2]["end_step"]:
            return False
        phases[-1]["end_step"] = total_steps - 1
        scheduler.total_steps = total_steps
        return True
    cosines = [f for f in getattr(scheduler, "lr_lambdas", []) if isinstance(f, WarmupCosine)]
    if any(total_steps <= f.warmup or total_steps <= scheduler.last_epoch for f in cosines):
        return False
    for factor in cosines:
        factor.total = total_steps
    return True


class BudgetGuard(Callback):
    """Checks the plan against the run's real pace, twice over.

    Early in the first epoch (after :func:`early_check_batch` batches, when :meth:`expect` gave
    it the probe's measurement), it times the run's own batches and, where their pace is more
    than :data:`EARLY_CHECK_TOLERANCE` off the probe's and says another number of epochs fits,
    re-plans up or down while the one-cycle warm-up can still be stretched with it: a probe of
    a few seconds can fall on a moment the shared machine was busy. After each epoch, when the
    epochs left no longer fit (the machine slowed down), the run is re-planned to the whole
    epochs that do, its schedule shortened to anneal by then; when not even one more fits, it
    stops there. Each is logged as a warning and passed to
    ``on_change`` as an event: ``{"after_epoch"`` (or ``"after_batch"`` for the early check)
    ``, "pace_s", "left_s", "action": "replanned" or "stopped", "epochs"}``, the epochs that
    will have run."""

    def __init__(self, budget_s: float, started: float, on_change: Callable[[dict], None] | None = None) -> None:
        self.budget_s, self.started, self.on_change = budget_s, started, on_change
        self._epoch_started = 0.0
        self._probe: EpochCost | None = None
        self._max_epochs = 0
        self._batch_ends: list[float] = []

    def expect(self, probe: EpochCost, max_epochs: int) -> None:
        """Arm the early check with the probe's measurement and the most epochs the run may have."""
        self._probe, self._max_epochs = probe, max_epochs

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, task: L.LightningModule, *args: Any) -> None:
        if self._probe is None or trainer.current_epoch != 0:
            return
        self._batch_ends.append(time.perf_counter())
        if len(self._batch_ends) == early_check_batch(int(trainer.num_training_batches)):
            self._early_check(trainer)

    def _early_check(self, trainer: L.Trainer) -> None:
        assert self._probe is not None
        batches, done = int(trainer.num_training_batches), len(self._batch_ends)
        pace = _median_interval(self._batch_ends, PROBE_WARMUP)
        if abs(pace - self._probe.train_batch_s) <= EARLY_CHECK_TOLERANCE * self._probe.train_batch_s:
            return
        validation = self._probe.val_batches * self._probe.val_batch_s
        left = self.budget_s - (time.perf_counter() - self.started)
        rest_of_epoch = (batches - done) * pace + validation
        cost = replace(self._probe, train_batch_s=pace, train_batches=batches)
        more = int((left - rest_of_epoch) // cost.epoch_s) if cost.epoch_s > 0 else self._max_epochs
        epochs = max(1, min(self._max_epochs, 1 + more))
        planned = trainer.max_epochs or 1
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        if epochs == planned:
            return
        if not all(relay_schedule(s, epochs * batches, warmup_too=True) for s in schedulers):
            log.info(
                "time budget %.0f s: the first %d batches say %d epochs fit, not %d, but the warm-up is over; "
                "the plan is left to the check after each epoch",
                self.budget_s,
                done,
                epochs,
                planned,
            )
            return
        trainer.fit_loop.max_epochs = epochs
        self._tell(
            {"after_batch": done, "pace_s": round(cost.epoch_s, 1), "left_s": round(left, 1)}
            | {"action": "replanned", "epochs": epochs}
        )
        log.warning(
            "time budget %.0f s: the first %d batches took %.3f s each, not the probe's %.3f s, so %d epochs "
            "fit, not %d; the learning-rate schedule was laid out again for them",
            self.budget_s,
            done,
            pace,
            self._probe.train_batch_s,
            epochs,
            planned,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        now = time.perf_counter()
        done = trainer.current_epoch + 1
        planned = trainer.max_epochs or done
        left, pace = self.budget_s - (now - self.started), now - self._epoch_started
        fitting = int(left // pace) if pace > 0 else planned - done
        if done >= planned or fitting >= planned - done:
            return
        event = {"after_epoch": done, "pace_s": round(pace, 1), "left_s": round(left, 1)}
        if fitting >= 1 and self._replan(trainer, done + fitting):
            self._tell({**event, "action": "replanned", "epochs": done + fitting})
            log.warning(
                "time budget %.0f s: epochs take %.0f s, so %d of the %d planned fit; the learning-rate "
                "schedule was shortened to end with epoch %d",
                self.budget_s,
                pace,
                done + fitting,
                planned,
                done + fitting,
            )
            return
        trainer.should_stop = True
        self._tell({**event, "action": "stopped", "epochs": done})
        log.warning(
            "time budget %.0f s: stopping after epoch %d of %d, since the next would end at about %.0f s; "
            "the learning-rate schedule has not finished",
            self.budget_s,
            done,
            planned,
            now - self.started + pace,
        )

    def _replan(self, trainer: L.Trainer, epochs: int) -> bool:
        total = epochs * int(trainer.num_training_batches)
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        if not all(relay_schedule(scheduler, total) for scheduler in schedulers):
            return False
        trainer.fit_loop.max_epochs = epochs
        return True

    def _tell(self, event: dict) -> None:
        if self.on_change is not None:
            self.on_change(event)


def plan_epochs(
    section: Any,
    make_task: Callable[[torch.nn.Module], L.LightningModule],
    model: torch.nn.Module,
    datamodule: L.LightningDataModule,
    batches: tuple[int, int],
    spent_s: float,
) -> tuple[int, EpochCost, dict]:
    """The epochs of ``section`` (a config's trainer section) that fit its ``time_budget_s``,
    ``spent_s`` seconds having gone already, the probe's measurement, and the journal of the plan (``RUN/budget.json``:
    the budget, the probe's measurement, the plan, and later the guard's events); logs the plan."""
    options = {
        "accelerator": section.accelerator,
        "devices": 1,
        "precision": resolve_precision(section.precision, section.accelerator),
        "gradient_clip_val": section.grad_clip,
    }
    started = time.perf_counter()
    cost = probe_epoch_cost(make_task, model, datamodule, options, batches)
    spent_s += time.perf_counter() - started
    epochs = epochs_that_fit(section.time_budget_s, spent_s, cost, section.epochs)
    log.info(
        "time budget %.0f s: %d of at most %d epochs fit (%.0f s gone; an epoch about %.1f s: "
        "%d training batches at %.3f s, %d validation batches at %.3f s)",
        section.time_budget_s,
        epochs,
        section.epochs,
        spent_s,
        cost.epoch_s,
        cost.train_batches,
        cost.train_batch_s,
        cost.val_batches,
        cost.val_batch_s,
    )
    journal = {
        "budget_s": section.time_budget_s,
        "max_epochs": section.epochs,
        "spent_before_training_s": round(spent_s, 1),
        "probe": {**asdict(cost), "epoch_s": round(cost.epoch_s, 2)},
        "planned_epochs": epochs,
        "events": [],
    }
    return epochs, cost, journal
