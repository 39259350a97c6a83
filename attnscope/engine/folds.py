"""Evaluating a cross-validation folder (``train --folds K``): every fold on the held-out test split, their
mean and spread, and the fold ensemble.

Each fold's run is evaluated as any run is (``foldN/evaluation``). The ensemble
averages the folds' calibrated probabilities image by image; its threshold is the
mean of the folds' thresholds in logits (each chosen on its own validation part, so
no image decided the ensemble's threshold and its test score). The folder's
``evaluation/metrics.json`` holds the folds' headline metrics, their mean and
standard deviation, and the ensemble's metrics with their intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from attnscope.engine.calibration import calibration_scores
from attnscope.engine.inference import EvaluateOptions, evaluate, predict_loader
from attnscope.engine.intervals import metric_intervals
from attnscope.engine.metrics import summarize
from attnscope.engine.run import Run
from attnscope.engine.rundir import fold_runs, write_json
from attnscope.errors import DataError
from attnscope.names import HEADLINE_METRICS
from attnscope.outputs import EVALUATION, prepare_output_folder


@dataclass
class FoldsEvaluation:
    """The folds' metrics, their mean and spread, the ensemble's metrics, and where they were written."""

    root: Path
    folds: list[dict]
    mean: dict[str, float]
    sd: dict[str, float]
    ensemble: dict
    out: Path


def _mean_threshold(thresholds: list) -> float | list[float] | None:
    """The mean of the folds' thresholds in logits (per finding for lists)."""
    if thresholds[0] is None:
        return None
    values = np.array(thresholds, dtype=np.float64).reshape(len(thresholds), -1).clip(1e-7, 1 - 1e-7)
    mean = 1 / (1 + np.exp(-np.log(values / (1 - values)).mean(0)))
    return [float(v) for v in mean] if isinstance(thresholds[0], list) else float(mean[0])


def _fold_probabilities(run: Run, options: EvaluateOptions) -> tuple[dict[str, int], torch.Tensor, torch.Tensor, list]:
    """One fold's calibrated probabilities on the selected images: (id -> position, probabilities, labels, groups)."""
    loader = run.loader(options)
    probs, labels, rows = predict_loader(run, loader, "ensemble")
    manifest = loader.decoded.manifest
    groups = [manifest.groups[int(r)] for r in rows] if manifest.groups else []
    return {manifest.ids[int(r)]: i for i, r in enumerate(rows)}, probs, labels, groups


def _ensemble(runs: list[Run], options: EvaluateOptions) -> dict:
    """The folds' averaged probabilities on the selected images, scored like one run's."""
    order, first_probs, labels, groups = _fold_probabilities(runs[0], options)
    ids = sorted(order, key=order.get)  # type: ignore[arg-type]
    stacked = [first_probs]
    for run in runs[1:]:
        where, probs, _, _ = _fold_probabilities(run, options)
        if set(where) != set(order):
            raise DataError(f"{run.root} read other images than {runs[0].root}: the folds must share their test split")
        stacked.append(probs[torch.tensor([where[i] for i in ids])])
    averaged = torch.stack(stacked).mean(0)
    kind, classes = runs[0].kind, runs[0].classes
    threshold = _mean_threshold([run.threshold for run in runs])
    metrics = summarize(averaged, labels, kind, classes, threshold=threshold)
    metrics["calibration"] = calibration_scores(averaged, labels, kind)
    metrics["intervals"] = metric_intervals(averaged.numpy(), labels.numpy(), kind, classes, threshold,
                                            groups or None, options.bootstrap_options())  # fmt: skip
    return metrics


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
        ensemble = _ensemble(runs, options)
    finally:
        for run in runs:
            run.close()
    names = [name for name in HEADLINE_METRICS if all(isinstance(f.get(name), float) for f in folds)]
    mean = {name: float(np.nanmean([f[name] for f in folds])) for name in names}
    sd = {name: float(np.nanstd([f[name] for f in folds], ddof=1)) if len(folds) > 1 else math.nan for name in names}
    out = prepare_output_folder(options.out or Path(root) / "evaluation", EVALUATION)
    headline = [{name: f.get(name) for name in names} for f in folds]
    write_json(out / "metrics.json", {"folds": headline, "mean": mean, "sd": sd, "ensemble": ensemble,
                                      "data": options.describe()})  # fmt: skip
    return FoldsEvaluation(Path(root), headline, mean, sd, ensemble, out)
