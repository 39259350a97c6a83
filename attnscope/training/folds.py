"""K-fold cross-validation: one run per fold into one folder, resumable, the test split held out from all.

``train_folds(config, k)`` trains the config ``k`` times, each a complete run directory
(``fold1/`` ... ``foldK/``) whose validation split is one of ``k`` parts of the non-test
images (stratified, each patient whole in one part, seeded) and whose training split is
the rest; the test split is the same for every fold and never trained on. ``folds.json``
records the config and which folds are done, so ``attnscope train --resume FOLDER``
keeps the finished folds and continues the rest. ``attnscope evaluate FOLDER`` reports
every fold on the test split, their mean and spread, and the fold ensemble
(:mod:`attnscope.engine.folds`).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

from attnscope.engine.config import RunConfig
from attnscope.engine.rundir import FOLDS_FILE, fold_folder
from attnscope.errors import ConfigError, DataError
from attnscope.fileio import atomic_write, read_marker
from attnscope.training.train import (
    TrainResult,
    finished_folder,
    new_folder_of_runs,
    resolve_run_dir,
    train_or_resume,
    with_progress,
)

log = logging.getLogger(__name__)

MARKER_KIND = "folds"


def fold_config(config: RunConfig, folds: int, fold: int, root: Path) -> RunConfig:
    """The run config of fold ``fold`` (1-based): its part of the data validates, the rest trains."""
    result = copy.deepcopy(config)
    result.data.folds, result.data.fold = folds, fold
    result.run_dir = str(fold_folder(root, fold))
    return result


def _write_state(root: Path, config: RunConfig, folds: int, done: list[int]) -> None:
    state = {"folds": folds, "config": config.to_dict(), "done": done}
    atomic_write(root / FOLDS_FILE, json.dumps(state, indent=2) + "\n")


def train_folds(config: RunConfig, folds: int) -> TrainResult:
    """Train one run per fold into one new folder; returns the last fold's result (``staged_root``: the folder)."""
    if not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if config.trainer.time_budget_s is not None:
        raise ConfigError("trainer.time_budget_s plans one run, and --folds trains several: give --epochs")
    root = resolve_run_dir(config)
    new_folder_of_runs(root, MARKER_KIND, "cross-validation")
    config = copy.deepcopy(config)
    config.run_dir = str(root)
    _write_state(root, config, folds, [])
    return _run(root, config, folds, [])


def resume_folds(root: str | Path, progress: bool | None = None) -> TrainResult:
    """Continue a cross-validation folder after a stop: finished folds are kept, the running one resumes."""
    root = Path(root)
    marker = read_marker(root)
    if marker is None or marker.get("kind") != MARKER_KIND or not (root / FOLDS_FILE).is_file():
        raise DataError(f"{root} is not a cross-validation folder (no {FOLDS_FILE}); pass the folder train printed")
    state = json.loads((root / FOLDS_FILE).read_text(encoding="utf-8"))
    config = with_progress(RunConfig.from_dict(state["config"]), progress)
    return _run(root, config, int(state["folds"]), [int(f) for f in state["done"]], progress)


def _run(root: Path, config: RunConfig, folds: int, done: list[int], progress: bool | None = None) -> TrainResult:
    result = None
    for fold in range(1, folds + 1):
        folder = fold_folder(root, fold)
        if fold in done:
            log.info("fold %d/%d: done before, kept", fold, folds)
            continue
        log.info("fold %d/%d into %s", fold, folds, folder)
        result = train_or_resume(folder, fold_config(config, folds, fold, root), progress)
        if not result.is_global_zero:
            continue
        done.append(fold)
        _write_state(root, config, folds, done)
    return finished_folder(root, fold_folder(root, folds), result)
