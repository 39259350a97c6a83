"""Evaluating a cross-validation folder (``train --folds K``): every fold on the held-out test split, their
mean and spread, and the fold ensemble.

Each fold's run is evaluated as any run is (``foldN/evaluation``). The ensemble
(:mod:`attnscope.engine.ensemble`: the folds' calibrated probabilities averaged, its
threshold the mean of theirs in logits, so no test image chose it) is evaluated as
any run is, into the folder's ``evaluation/``; ``evaluation/folds.json`` holds the
folds' headline metrics, their mean and standard deviation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from attnscope.engine.inference import EvaluateOptions, Evaluation, evaluate
from attnscope.engine.run import Run
from attnscope.engine.rundir import fold_runs, write_json
from attnscope.errors import DataError
from attnscope.names import HEADLINE_METRICS


@dataclass
class FoldsEvaluation:
    """The folds' metrics, their mean and spread, the ensemble's metrics, and where they were written."""

    root: Path
    folds: list[dict]
    mean: dict[str, float]
    sd: dict[str, float]
    evaluation: Evaluation  # the ensemble's, as any run's

    @property
    def ensemble(self) -> dict:
        return self.evaluation.metrics

    @property
    def out(self) -> Path:
        return self.evaluation.out


def evaluate_folds(root: str | Path, options: EvaluateOptions | None = None, progress: bool = True) -> FoldsEvaluation:
    """Every fold of ``root`` evaluated on ``options``' data (default: the test split they share), the mean and
    standard deviation of their headline metrics, and the fold ensemble's metrics."""
    options = options or EvaluateOptions()
    folders = fold_runs(Path(root))
    if not folders:
        raise DataError(f"{root} is not a cross-validation folder (no folds.json); pass the folder train printed")
    missing = [str(f) for f in folders if not (f / "checkpoints" / "best.safetensors").is_file()]
    if missing:
        raise DataError(f"{root}: fold(s) not trained yet: {', '.join(missing)}; continue with --resume {root}")
    runs = [Run.open(folder, progress=progress) for folder in folders]
    try:
        folds = [evaluate(run, replace(options, out=None)).metrics for run in runs]
    finally:
        for run in runs:
            run.close()
    with Run.open(root, progress=progress) as ensemble_run:  # the folds' ensemble, evaluated as any run is
        ensemble = evaluate(ensemble_run, replace(options, out=options.out or Path(root) / "evaluation"))
    names = [name for name in HEADLINE_METRICS if all(isinstance(f.get(name), float) for f in folds)]
    mean = {name: float(np.nanmean([f[name] for f in folds])) for name in names}
    sd = {name: float(np.nanstd([f[name] for f in folds], ddof=1)) if len(folds) > 1 else math.nan for name in names}
    headline = [{name: f.get(name) for name in names} for f in folds]
    write_json(ensemble.out / "folds.json", {"folds": headline, "mean": mean, "sd": sd, "data": options.describe()})
    return FoldsEvaluation(Path(root), headline, mean, sd, ensemble)
