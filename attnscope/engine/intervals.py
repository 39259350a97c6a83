"""Confidence intervals of the headline metrics: a bootstrap over patients (or images), and DeLong's for AUC.

A test split of a few hundred images knows its AUC to a few hundredths; the
interval says how far. The bootstrap (scipy.stats.bootstrap, percentile by
default, BCa on request) draws the test set again with replacement, ``resamples``
times from a seeded generator, and recomputes each metric at the threshold chosen
on validation (the threshold is never re-chosen on a resample). When the rows
carry groups (patients), whole patients are drawn, since images of one patient
are not independent; the unit is recorded. DeLong et al. (1988) give the AUC's
variance in closed form from the structural components of the Mann-Whitney
statistic; its interval is the normal one around the AUC, clipped to [0, 1].
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import stats

from attnscope.errors import ConfigError

log = logging.getLogger(__name__)

BOOTSTRAP_METHODS = ("percentile", "BCa")
Metric = Callable[[np.ndarray, np.ndarray], float]


def rank_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic (ties count half); NaN without both classes."""
    positives = int(targets.sum())
    negatives = len(targets) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = stats.rankdata(scores)
    return float((ranks[targets == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def structural_components(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components, the means of psi(x, y) (1 if x > y, 1/2 if equal) over the other class:
    each positive's share of negatives scored below it, and each negative's share of positives scored above it.
    ``truth``: booleans, both classes present."""
    positive, negative = scores[truth], scores[~truth]
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    v10 = (ranks[: len(positive)] - stats.rankdata(positive)) / len(negative)
    v01 = 1.0 - (ranks[len(positive) :] - stats.rankdata(negative)) / len(positive)
    return v10, v01


def rates_at(scores: np.ndarray, targets: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) of ``scores >= threshold`` against 0/1 (or boolean) targets; NaN where a class is
    absent."""
    predicted, truth = scores >= threshold, targets == 1
    sensitivity = float(predicted[truth].mean()) if truth.any() else math.nan
    specificity = float((~predicted[~truth]).mean()) if (~truth).any() else math.nan
    return sensitivity, specificity


def delong_interval(scores: np.ndarray, targets: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(AUC, low, high): DeLong's variance of the AUC and the normal interval at ``level``, clipped to [0, 1]."""
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(targets).astype(bool)
    if truth.all() or not truth.any():
        return math.nan, math.nan, math.nan
    v10, v01 = structural_components(scores, truth)
    auc = float(v10.mean())
    variance = (np.var(v10, ddof=1) if len(v10) > 1 else 0.0) / len(v10) + (
        np.var(v01, ddof=1) if len(v01) > 1 else 0.0
    ) / len(v01)
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt(max(float(variance), 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


@dataclass(frozen=True)
class BootstrapOptions:
    """How intervals are drawn: ``resamples`` (0: none), ``level``, ``method`` (percentile or BCa), ``seed``."""

    resamples: int = 1000
    level: float = 0.95
    method: str = "percentile"
    seed: int = 0

    def check(self) -> None:
        if not (isinstance(self.resamples, int) and self.resamples >= 0):
            raise ConfigError(f"bootstrap resamples={self.resamples!r} must be an integer >= 0 (0: no intervals)")
        if not 0.5 <= self.level < 1:
            raise ConfigError(f"confidence level={self.level} must lie in [0.5, 1), e.g. 0.95")
        if self.method not in BOOTSTRAP_METHODS:
            raise ConfigError(f"bootstrap method={self.method!r}: use one of {', '.join(BOOTSTRAP_METHODS)}")


def _units(groups: Sequence[str | None] | None, count: int) -> tuple[list[np.ndarray], str]:
    """The row indices of each resampled unit: a patient's rows when there are groups, else each row."""
    if groups is None or all(group is None for group in groups):
        return [np.array([i]) for i in range(count)], "image"
    found: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        found.setdefault(group if group is not None else f"row{index}", []).append(index)
    return [np.array(rows) for rows in found.values()], "patient"


def bootstrap_intervals(
    metrics: dict[str, Callable[[np.ndarray], float]],
    count: int,
    groups: Sequence[str | None] | None = None,
    options: BootstrapOptions | None = None,
) -> dict:
    """Intervals of ``metrics`` (name -> function of the row indices of a resample) over ``count`` rows, drawing
    whole groups when given; a metric that is undefined on a resample (one class only) gets NaN there, and an
    interval of NaN when most are."""
    options = options or BootstrapOptions()
    options.check()
    units, unit = _units(groups, count)
    described = {"method": f"bootstrap ({options.method})", "level": options.level, "resamples": options.resamples,
                 "seed": options.seed, "unit": unit, "units": len(units)}  # fmt: skip
    if options.resamples == 0 or len(units) < 2:
        return described | {"intervals": {}}

    def statistic(chosen: np.ndarray, axis: int = -1) -> np.ndarray:
        rows = np.concatenate([units[int(i)] for i in chosen])
        return np.array([function(rows) for function in metrics.values()])

    with warnings.catch_warnings(record=True) as caught:  # a metric undefined on some resamples: NaN, said below
        warnings.simplefilter("always")
        result = stats.bootstrap(
            (np.arange(len(units)),), statistic, n_resamples=options.resamples, confidence_level=options.level,
            method=options.method, vectorized=False, random_state=np.random.default_rng(options.seed),
        )  # fmt: skip
    for warning in caught:
        log.debug("bootstrap: %s", warning.message)
    low, high = np.atleast_1d(result.confidence_interval.low), np.atleast_1d(result.confidence_interval.high)
    intervals = {name: [float(a), float(b)] for name, a, b in zip(metrics, low, high, strict=True)}
    return described | {"intervals": intervals}


def _nanmean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return float(np.mean(present)) if present else math.nan


def _binary_metrics(threshold: float) -> dict[str, Metric]:
    return {
        "auc": lambda s, t: rank_auc(s, t),
        "accuracy": lambda s, t: float(((s >= 0.5) == (t == 1)).mean()),
        "sensitivity_at_threshold": lambda s, t: rates_at(s, t, threshold)[0],
        "specificity_at_threshold": lambda s, t: rates_at(s, t, threshold)[1],
    }


def _columns_metric(scores: np.ndarray, targets: np.ndarray, metric: Callable[[np.ndarray, np.ndarray, int], float]):
    """A macro mean over columns, each on its known (non-NaN) rows."""

    def mean(rows: np.ndarray) -> float:
        return _nanmean([metric(scores[rows, c], targets[rows, c], c) for c in range(scores.shape[1])])

    return mean


def _known(function: Callable[[np.ndarray, np.ndarray, int], float]) -> Callable[[np.ndarray, np.ndarray, int], float]:
    """``function`` on the rows whose label is known (not NaN)."""

    def on_known(scores: np.ndarray, targets: np.ndarray, column: int) -> float:
        keep = ~np.isnan(targets)
        return function(scores[keep], targets[keep], column)

    return on_known


def _on_rows(metric: Metric, scores: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> float:
    return metric(scores[rows], targets[rows])


def _column_auc(probs: np.ndarray, labels: np.ndarray, column: int, rows: np.ndarray) -> float:
    """The AUC of one finding over the known labels of ``rows``."""
    scores, targets = probs[rows, column], labels[rows, column]
    keep = ~np.isnan(targets)
    return rank_auc(scores[keep], targets[keep])


def metric_intervals(
    probs: np.ndarray,
    labels: np.ndarray,
    kind: str,
    classes: Sequence[str],
    threshold: float | list[float] | None,
    groups: Sequence[str | None] | None = None,
    options: BootstrapOptions | None = None,
) -> dict:
    """Bootstrap intervals of the headline metrics (binary: AUC, accuracy, sensitivity and specificity at the
    validation threshold; multi-label: their macro means and each finding's AUC; multi-class: macro AUC and
    accuracy), and DeLong's interval of each AUC."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    functions: dict[str, Callable[[np.ndarray], float]] = {}
    delong: dict[str, list[float]] = {}
    level = (options or BootstrapOptions()).level
    if kind == "binary":
        scores = probs.reshape(-1)
        limit = 0.5 if threshold is None else float(threshold)  # type: ignore[arg-type]
        for name, metric in _binary_metrics(limit).items():
            functions[name] = partial(_on_rows, metric, scores, labels)
        delong["auc"] = list(delong_interval(scores, labels, level)[1:])
    elif kind == "multilabel":
        limits = list(threshold) if isinstance(threshold, list) else [0.5] * len(classes)
        functions["auc"] = _columns_metric(probs, labels, _known(lambda s, t, c: rank_auc(s, t)))
        functions["sensitivity_at_threshold"] = _columns_metric(
            probs, labels, _known(lambda s, t, c: rates_at(s, t, limits[c])[0])
        )
        functions["specificity_at_threshold"] = _columns_metric(
            probs, labels, _known(lambda s, t, c: rates_at(s, t, limits[c])[1])
        )
        for c, name in enumerate(classes):
            known = ~np.isnan(labels[:, c])
            functions[f"auc ({name})"] = partial(_column_auc, probs, labels, c)
            delong[f"auc ({name})"] = list(delong_interval(probs[known, c], labels[known, c], level)[1:])
    else:
        onehot = np.eye(len(classes))[labels.astype(int)]
        functions["auc"] = _columns_metric(probs, onehot, lambda s, t, c: rank_auc(s, t))
        functions["accuracy"] = lambda rows: float((probs[rows].argmax(1) == labels[rows]).mean())
    drawn = bootstrap_intervals(functions, len(labels), groups, options)
    return drawn | {"delong": delong}
