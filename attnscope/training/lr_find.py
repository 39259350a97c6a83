"""``optim.lr: auto``: the learning rate chosen by a range test before training (Smith 2017), with Lightning's
learning-rate finder.

The test trains a copy of the freshly built model for ``STEPS`` batches while the learning rate grows
exponentially from ``MIN_LR`` to ``MAX_LR`` and records the smoothed training loss at each. The rate chosen
is a tenth of the one where that loss is lowest (Smith 2017; fastai's ``minimum`` rule): the largest rate
that still trains steadily, with a margin. Lightning's own suggestion, the steepest fall, is recorded beside
it, not used: on folders of small images it picked rates at or below the default that trained worse
(measured in ``benchmarks/learning_rate.py``). The model the run then trains starts from the same initial
weights. The curve and the choice are kept in the run (``lr_find.json``, ``lr_find.png``),
and ``config.yaml`` records the rate chosen, so the run reproduces without the test.
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.tuner import Tuner

from attnscope.engine.config import OptimSection, RunConfig
from attnscope.engine.rundir import write_json
from attnscope.errors import ConfigError, TrainingError
from attnscope.training.budget import quiet_fit_warnings
from attnscope.training.trainer_options import shared_trainer_options

log = logging.getLogger(__name__)

AUTO_LR = "auto"
MIN_LR = 1e-6
MAX_LR = 1.0
STEPS = 100


def find_learning_rate(
    config: RunConfig,
    make_task: Callable[[torch.nn.Module], L.LightningModule],
    model: torch.nn.Module,
    datamodule: L.LightningDataModule,
    run_root: Path,
) -> float:
    """The suggested learning rate for ``config``; the curve is written to ``run_root`` (``lr_find.*``).

    Raises:
        ConfigError: the run trains on several devices or machines (the test runs on one).
        TrainingError: the test gave too few finite losses to suggest a rate.
    """
    section = config.trainer
    if str(section.devices) not in ("1", "auto") or section.num_nodes != 1:
        raise ConfigError("optim.lr=auto runs its range test on one device: find the rate on one, then give it")
    config.optim.lr = MIN_LR  # the finder sets every rate itself; the optimiser is built with this one
    with tempfile.TemporaryDirectory(prefix="attnscope-lr-find-") as scratch:
        trainer = L.Trainer(
            **shared_trainer_options(section),
            default_root_dir=scratch,
            max_epochs=STEPS,  # the finder stops at STEPS batches; an epoch holds at least one
            limit_val_batches=0,
            devices=1,
            logger=False,
        )
        task = make_task(copy.deepcopy(model))
        if not section.progress:  # the finder's own bar ignores the trainer's setting: hushed when it starts
            task.on_train_start = lambda: _hush(trainer)  # type: ignore[method-assign]
        with quiet_fit_warnings():
            finder = Tuner(trainer).lr_find(
                task,
                datamodule=datamodule,
                min_lr=MIN_LR,
                max_lr=MAX_LR,
                num_training=STEPS,
                update_attr=False,
            )
    results = finder.results if finder is not None else {"lr": [], "loss": []}
    rates, losses = list(map(float, results["lr"])), list(map(float, results["loss"]))
    suggested = minimum_rule(rates, losses)
    if suggested is None:
        raise TrainingError(
            "optim.lr=auto: the range test gave too few finite losses to suggest a rate; give one with --lr"
        )
    config.optim.lr = suggested
    _record(rates, losses, suggested, finder.suggestion() if finder is not None else None, run_root)
    log.info("learning rate auto: %.3g (range test of %d steps, lr_find.png in the run)", suggested, STEPS)
    return float(suggested)


def default_rate_note(config: RunConfig) -> str | None:
    """A note for a model trained from scratch at the default rate, which was chosen for fine-tuning
    pretrained weights and trains small models from scratch slowly (``benchmarks/learning_rate.py``)."""
    default = OptimSection()
    if config.optim.name != default.name or config.optim.lr != default.lr or config.model.pretrained:
        return None
    return (
        f"learning rate {default.lr:g}: the default, chosen for fine-tuning pretrained weights; a model trained "
        "from scratch usually learns faster with --lr auto (a range test) or --lr 1e-3"
    )


def _hush(trainer: L.Trainer) -> None:
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if hasattr(callback, "progress_bar_refresh_rate"):
            callback.progress_bar_refresh_rate = 0


def minimum_rule(rates: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """A tenth of the rate of the lowest finite smoothed loss, the first ``skip_begin`` and last ``skip_end``
    steps left out (the smoothing's start and the divergence); None with fewer than two finite losses left."""
    window = list(zip(losses, rates, strict=True))[skip_begin : len(rates) - skip_end]
    finite = [(loss, rate) for loss, rate in window if math.isfinite(loss)]
    if len(finite) < 2:
        return None
    return min(finite)[1] / 10


def _record(rates: list[float], losses: list[float], suggested: float, steepest: float | None, run_root: Path) -> None:
    """``lr_find.json`` (every step's rate and smoothed loss) and ``lr_find.png`` (the curve, the choice marked)."""
    from attnscope.engine.plots import plt, save_figure

    write_json(
        run_root / "lr_find.json",
        {
            "method": "range test (Lightning lr_find): a tenth of the rate of the lowest smoothed loss",
            "suggested": suggested,
            "steepest_fall": steepest,
            "min_lr": MIN_LR,
            "max_lr": MAX_LR,
            "steps": len(rates),
            "lr": rates,
            "loss": losses,
        },
    )
    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot(rates, losses)
    axes.axvline(suggested, color="tab:red", linestyle="--", label=f"chosen {suggested:.2g}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="Learning-rate range test")
    axes.legend()
    save_figure(figure, run_root / "lr_find.png")
