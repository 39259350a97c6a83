"""``train(config)``: a config in, a finished run directory out.

Lightning runs the loop (devices, DDP, mixed precision, gradient clipping);
attnscope's pieces are the task, a data module that shards the uint8 loaders
per process, and :class:`RunRecorder`, which after every epoch writes
``metrics.csv``, the best and last weights, and the training state. The
recorder's history travels inside the training state, so after a resume
``metrics.csv`` and the weights always describe the same epochs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from attnscope.data.module import DataModule
from attnscope.engine.build import build_model
from attnscope.engine.config import RunConfig, dump_config, load_config
from attnscope.engine.metrics import task_kind
from attnscope.engine.rundir import (
    RunLock,
    RunPaths,
    prepare_run_dir,
    read_best,
    save_best,
    save_weights,
    sweep_run,
    write_json,
    write_metrics_csv,
)
from attnscope.errors import ConfigError, DataError
from attnscope.fileio import atomic_write, write_marker
from attnscope.training.budget import BudgetGuard, plan_epochs, quiet_fit_warnings
from attnscope.training.checkpoint_io import AtomicCheckpointIO
from attnscope.training.lr_find import AUTO_LR, default_rate_note, find_learning_rate
from attnscope.training.precision import AUTO, FLOAT32, resolve_precision
from attnscope.training.task import ClassifierTask, seed_all
from attnscope.training.trainer_options import shared_trainer_options

log = logging.getLogger(__name__)

# Set by the launching process so that DDP's re-launched processes write into the same run.
RUN_DIR_ENV = "ATTNSCOPE_RUN_DIR"


class LoaderModule(L.LightningDataModule):
    """Lightning's view of a DataModule: loaders built per process, after the launch."""

    def __init__(self, data: DataModule) -> None:
        super().__init__()
        self.data = data

    def _loader(self, split: str):
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        on_cpu = trainer is None or trainer.accelerator.__class__.__name__ == "CPUAccelerator"
        return self.data.loader(split, rank=rank, world_size=world, prefetch=not on_cpu)

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")


class RunRecorder(Callback):
    """After each epoch: metrics.csv, best/last weights, best.json, the training state, a log line."""

    def __init__(self, paths: RunPaths, monitor: str, mode: str, model_name: str) -> None:
        self.paths, self.monitor, self.mode, self.model_name = paths, monitor, mode, model_name
        self.history: list[dict[str, float]] = []
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._started = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "best_value": self.best_value, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.best_value, self.best_epoch = state_dict["best_value"], state_dict["best_epoch"]

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        assert isinstance(task, ClassifierTask), "RunRecorder records an attnscope ClassifierTask"
        task.finish_train_epoch()
        epoch = trainer.current_epoch
        row = {
            "epoch": float(epoch),
            "seconds": time.perf_counter() - self._started,
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            **dict(sorted(task.epoch_metrics.items())),
        }
        task.epoch_metrics = {}
        self.history = [r for r in self.history if r["epoch"] < epoch] + [row]
        value = row.get(self.monitor, math.nan)
        if self.monitor not in row and epoch == 0:
            log.warning(
                "trainer.monitor=%r is not among the metrics (%s); keeping the last epoch as best",
                self.monitor,
                ", ".join(sorted(k for k in row if "/" in k)),
            )
        improved = self._improved(value) or (self.monitor not in row)
        if improved:
            self.best_value, self.best_epoch = (None if math.isnan(value) else value), epoch
        if trainer.is_global_zero:
            meta = {"model": self.model_name, "epoch": str(epoch)}
            write_metrics_csv(self.paths.metrics, self.history)
            save_weights(task.eval_model, self.paths.last_weights, meta)
            if improved:
                record = {
                    "epoch": epoch,
                    "monitor": self.monitor,
                    "value": self.best_value,
                    "threshold": task.val_threshold,
                    "metrics": row,
                }
                save_best(task.eval_model, self.paths, record, meta)
        # every process takes part (DDP); only global rank 0 writes
        trainer.save_checkpoint(self.paths.last_state, weights_only=False)
        if trainer.is_global_zero:
            log.info(epoch_line(row, trainer.max_epochs, improved))


def epoch_line(row: dict[str, float], epochs: int | None, improved: bool) -> str:
    """``epoch 3/10  train loss 0.41 auc 0.87 | val loss 0.40 auc 0.91  12.3 s *`` (* = new best)."""
    parts = [f"epoch {int(row['epoch']) + 1}/{epochs}"]
    for split in ("train", "val"):
        shown = [
            f"{name} {row[f'{split}/{name}']:.4f}" for name in ("loss", "auc", "accuracy") if f"{split}/{name}" in row
        ]
        if shown:
            parts.append(f"{split} " + " ".join(shown))
    parts.append(f"{row['seconds']:.1f} s" + (" *" if improved else ""))
    return "  ".join(parts)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run left: its folder, its best epoch (``best.json``), and whether this process
    is rank zero (the one that prints); ``staged_root`` is the staged folder the run was the last
    stage of (None for a single run)."""

    run_dir: Path
    best: dict
    is_global_zero: bool
    staged_root: Path | None = None


def resolve_run_dir(config: RunConfig) -> Path:
    """The run directory: the config's, the launching process's (DDP), or ``runs/<model>-<time>``."""
    if config.run_dir:
        return Path(config.run_dir)
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.model.name}-{stamp}"


class _RunLog:
    """Copies attnscope's log records (INFO and up) into RUN/train.log while a run lasts."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.setLevel(logging.INFO)
        self.loggers = [logging.getLogger("attnscope")]
        self.levels: list[int] = []

    def __enter__(self) -> _RunLog:
        for logger in self.loggers:
            self.levels.append(logger.level)
            if logger.getEffectiveLevel() > logging.INFO:
                logger.setLevel(logging.INFO)
            logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for logger, level in zip(self.loggers, self.levels, strict=True):
            logger.removeHandler(self.handler)
            logger.setLevel(level)
        self.handler.close()


def make_trainer(config: RunConfig, paths: RunPaths, callbacks: list[Callback], steps_per_epoch: int) -> L.Trainer:
    section = config.trainer
    if section.progress:
        callbacks = [*callbacks, TQDMProgressBar(leave=True)]
    try:
        return _trainer(section, paths, callbacks, steps_per_epoch)
    except (MisconfigurationException, ValueError, TypeError) as error:
        raise ConfigError(
            f"trainer options (accelerator={section.accelerator!r}, devices={section.devices!r}, "
            f"num_nodes={section.num_nodes}, strategy={section.strategy!r}, "
            f"precision={section.precision!r}) are refused by Lightning: {error}"
        ) from error


def _trainer(section, paths: RunPaths, callbacks: list[Callback], steps_per_epoch: int) -> L.Trainer:
    return L.Trainer(
        **shared_trainer_options(section),
        default_root_dir=paths.root,
        max_epochs=section.epochs,
        devices=section.devices,
        num_nodes=section.num_nodes,
        strategy=section.strategy,
        logger=TensorBoardLogger(paths.root, name="tensorboard", version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=max(1, min(50, steps_per_epoch)),
    )


def train(config: RunConfig, resume: bool = False) -> TrainResult:
    """Train ``config`` into its run directory, then calibrate its best weights on validation.

    Args:
        config: the run config (:func:`~attnscope.engine.config.load_config`); ``optim.lr: auto`` is
            replaced by the rate a range test chooses, and the resolved config is written to the run.
        resume: continue the run directory from its last finished epoch (``last.ckpt``).

    Returns:
        The run directory and its best epoch.

    Raises:
        ConfigError: options Lightning refuses, or a run directory attnscope did not make.
        DataError: unreadable data (with ``data.skip_bad`` the bad rows are listed instead).
        TrainingError: training cannot go on (a non-finite loss, a range test without a suggestion).
    """
    started = time.perf_counter()  # trainer.time_budget_s counts from here
    if config.trainer.threads:
        torch.set_num_threads(config.trainer.threads)
    paths = RunPaths(resolve_run_dir(config))
    config.run_dir = str(paths.root)
    rank_zero = getattr(rank_zero_only, "rank", 0) == 0
    launched = os.environ.get(RUN_DIR_ENV)
    if launched is not None:  # a process DDP launched: the launching process prepared and locked the run
        return _train(config, paths, resume, rank_zero, started)
    prepare_run_dir(paths, resume)
    os.environ[RUN_DIR_ENV] = str(paths.root)  # inherited by the processes DDP launches
    try:
        with RunLock(paths.root):
            sweep_run(paths)
            return _train(config, paths, resume, rank_zero, started)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)


def _train(config: RunConfig, paths: RunPaths, resume: bool, rank_zero: bool, started: float) -> TrainResult:
    with _RunLog(paths.log):
        seed_all(config.trainer.seed)
        log.info("run %s: %s on %s", paths.root, config.model.name, config.data.source)
        if config.trainer.precision == AUTO:
            chosen = resolve_precision(AUTO, config.trainer.accelerator)
            log.info("precision auto: %s (%s native bfloat16)", chosen, "has" if chosen != FLOAT32 else "no")
        data = DataModule(config.data).setup()
        manifest = data.manifest
        kind = task_kind(manifest.num_classes, manifest.multilabel)
        model = build_model(config, manifest.num_classes, manifest.multilabel, data.channels)
        weights = None if data.weights is None else torch.as_tensor(data.weights, dtype=torch.float32)

        def make_task(net: torch.nn.Module) -> ClassifierTask:
            return ClassifierTask(config, net, data.transform(), kind, list(manifest.classes), weights)

        if config.optim.lr == AUTO_LR:
            find_learning_rate(config, make_task, model, LoaderModule(data), paths.root)
        elif note := default_rate_note(config):
            log.warning(note)
        task = make_task(model)
        recorder = RunRecorder(paths, config.trainer.monitor, config.trainer.mode, config.model.name)
        journal: dict = {}
        guard = _budget_guard(config, paths, started, journal) if not resume else []
        trainer = make_trainer(config, paths, [recorder, *guard], batch_count(data, "train"))
        if guard:
            journal.update(_plan_within_budget(config, trainer, data, make_task, model, started, guard[0]))
        # written once everything is known to work, so a failed start leaves no half run behind
        if rank_zero:
            if not resume:
                atomic_write(paths.config, dump_config(config))
            if journal:
                write_json(paths.budget, journal)
            data.write(paths.root)
        state = paths.last_state if resume and paths.last_state.exists() else None
        if resume:
            log.info("resuming %s from %s", paths.root, state or "the start (no epoch had finished)")
        with quiet_fit_warnings():
            trainer.fit(task, datamodule=LoaderModule(data), ckpt_path=state, weights_only=True)
        best = read_best(paths) if trainer.is_global_zero else {}
        if trainer.is_global_zero and config.trainer.calibration == "temperature":
            _calibrate(paths)
    return TrainResult(paths.root, best, trainer.is_global_zero)


def _calibrate(paths: RunPaths) -> None:
    """Temperature scaling of the best weights on the validation split (:mod:`attnscope.engine.recalibrate`)."""
    from attnscope.engine.recalibrate import calibrate_run
    from attnscope.engine.run import Run

    with Run.open(paths.root, progress=False) as run:
        calibrate_run(run)


def _budget_guard(config: RunConfig, paths: RunPaths, started: float, journal: dict) -> list[BudgetGuard]:
    """The guard of ``trainer.time_budget_s`` (none without a budget). Each of its events joins
    ``journal`` in RUN/budget.json; a re-plan also rewrites config.yaml with the epochs that will run."""
    budget = config.trainer.time_budget_s
    if budget is None:
        return []

    def record(event: dict) -> None:
        journal.setdefault("events", []).append(event)
        write_json(paths.budget, journal)
        if event["action"] == "replanned":
            config.trainer.epochs = event["epochs"]
            atomic_write(paths.config, dump_config(config))

    return [BudgetGuard(budget, started, record)]


def batch_count(data: DataModule, split: str) -> int:
    """Batches an epoch of ``split`` takes on one process."""
    return -(-len(data.rows(split)) // data.batch_size(split))


def _plan_within_budget(
    config: RunConfig,
    trainer: L.Trainer,
    data: DataModule,
    make_task,
    model,
    started: float,
    guard: BudgetGuard | None = None,
) -> dict:
    """Set the run's epochs to those that fit ``trainer.time_budget_s`` (the config keeps the plan)
    and arm ``guard``'s early check with the probe; returns the plan's journal
    (:func:`~attnscope.training.budget.plan_epochs`)."""
    if trainer.world_size > 1:
        raise ConfigError(
            f"trainer.time_budget_s plans epochs by timing one process, and this run has {trainer.world_size}: "
            "train on one device, or set trainer.epochs and leave time_budget_s null"
        )
    batches = (batch_count(data, "train"), batch_count(data, "val"))
    spent = time.perf_counter() - started
    epochs, cost, journal = plan_epochs(config.trainer, make_task, model, LoaderModule(data), batches, spent)
    if guard is not None:
        guard.expect(cost, config.trainer.epochs)
    config.trainer.epochs = epochs
    trainer.fit_loop.max_epochs = epochs
    return journal


def resume_config(run_dir: str | Path, progress: bool | None = None) -> RunConfig:
    """The config a run was started with, to continue it.

    ``progress`` overrides whether bars are shown (training and data): display only, it
    changes nothing the run computes, so a resumed run may differ from its start there.
    """
    paths = RunPaths(Path(run_dir)).require()
    config = load_config(paths.config)
    config.run_dir = str(paths.root)
    return with_progress(config, progress)


def with_progress(config: RunConfig, progress: bool | None) -> RunConfig:
    """``config`` with its progress bars set to ``progress`` (unchanged for None)."""
    if progress is not None:
        config.trainer.progress = progress
        config.data.progress = progress
    return config


def train_or_resume(folder: Path, config: RunConfig, progress: bool | None = None) -> TrainResult:
    """One run of a folder of runs (a stage, a fold): continued from its last epoch where it was begun, else
    trained from ``config``."""
    if RunPaths(folder).config.is_file():
        return train(resume_config(folder, progress), resume=True)
    return train(config)


def finished_folder(root: Path, last: Path, result: TrainResult | None) -> TrainResult:
    """The result of a folder of runs: its last run's (read back when every run was done before)."""
    if result is None:
        result = TrainResult(last, read_best(RunPaths(last)), True)
    return replace(result, staged_root=root)


def new_folder_of_runs(root: Path, kind: str, what: str) -> None:
    """Make ``root`` for a folder of runs (``kind``: stages, folds) in a new or empty folder, never a user's or a
    run's, and mark it; ``what`` names the training for the message."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root} exists and is not an empty folder; {what} creates its folder: choose another --run-dir, or "
            f"continue it with --resume {root} if it is one"
        )
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root, kind)
