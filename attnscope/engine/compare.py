"""Two runs on the same images: is one better, or is the difference what a test set of this size gives anyway?

``compare_runs(a, b)`` predicts the same images with both runs (matched by image id)
and tests, per finding (one column for a binary run):

- AUC: DeLong's paired test (DeLong et al. 1988): the two AUCs' difference over its
  standard error from the covariance of their structural components, which are
  correlated because the images are the same; a two-sided p-value;
- the decisions at each run's own threshold (chosen on its validation split):
  McNemar's exact test on the images one run gets right and the other wrong;
- the differences in AUC, sensitivity and specificity with paired bootstrap intervals
  (the same images drawn for both runs; patients whole where the rows have groups).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from attnscope.engine.intervals import BootstrapOptions, bootstrap_intervals, rank_auc, rates_at, structural_components
from attnscope.errors import ConfigError, DataError


def paired_delong(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """AUC of A and B on the same cases, their difference, its standard error and DeLong's two-sided p-value."""
    truth = np.asarray(targets).astype(bool)
    if truth.all() or not truth.any():
        return {"auc_a": math.nan, "auc_b": math.nan, "difference": math.nan, "se": math.nan, "p": math.nan}
    a10, a01 = structural_components(np.asarray(scores_a, np.float64), truth)
    b10, b01 = structural_components(np.asarray(scores_b, np.float64), truth)
    s10 = np.cov(np.vstack([a10, b10])) if len(a10) > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack([a01, b01])) if len(a01) > 1 else np.zeros((2, 2))
    contrast = np.array([1.0, -1.0])
    variance = float(contrast @ s10 @ contrast / len(a10) + contrast @ s01 @ contrast / len(a01))
    difference = float(a10.mean() - b10.mean())
    se = math.sqrt(max(variance, 0.0))
    if se == 0.0:
        p = 1.0 if difference == 0.0 else 0.0
    else:
        p = float(2 * stats.norm.sf(abs(difference) / se))
    return {"auc_a": float(a10.mean()), "auc_b": float(b10.mean()), "difference": difference, "se": se, "p": p}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact test: ``only_a`` images A gets right and B wrong, ``only_b`` the reverse; two-sided p of
    a binomial at one half over the discordant images (1 when there are none)."""
    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((~correct_a & correct_b).sum())
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p": p}


@dataclass
class ColumnComparison:
    """One finding (or the positive class) of two runs compared on the same images."""

    name: str
    rows: int
    delong: dict[str, float]
    mcnemar: dict[str, float]
    sensitivity: tuple[float, float]
    specificity: tuple[float, float]
    intervals: dict[str, list[float]] = field(default_factory=dict)


def _rates(scores: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, float, np.ndarray]:
    """Sensitivity, specificity, and which images are decided right, at ``threshold``."""
    return (*rates_at(scores, truth, threshold), (scores >= threshold) == truth)


def compare_column(
    name: str,
    scores: tuple[np.ndarray, np.ndarray],
    targets: np.ndarray,
    thresholds: tuple[float, float],
    groups: Sequence[str | None] | None,
    options: BootstrapOptions,
) -> ColumnComparison:
    """A against B on one column of 0/1 targets (NaN: left out), each at its own threshold."""
    known = ~np.isnan(np.asarray(targets, np.float64))
    a, b = (np.asarray(s, np.float64)[known] for s in scores)
    truth = np.asarray(targets)[known].astype(bool)
    kept = [g for g, k in zip(groups, known, strict=True) if k] if groups is not None else None
    sens_a, spec_a, right_a = _rates(a, truth, thresholds[0])
    sens_b, spec_b, right_b = _rates(b, truth, thresholds[1])

    def rate_difference(rows: np.ndarray, which: int) -> float:
        first, second = _rates(a[rows], truth[rows], thresholds[0]), _rates(b[rows], truth[rows], thresholds[1])
        return float(first[which]) - float(second[which])

    metrics = {
        "auc": lambda rows: rank_auc(a[rows], truth[rows]) - rank_auc(b[rows], truth[rows]),
        "sensitivity": lambda rows: rate_difference(rows, 0),
        "specificity": lambda rows: rate_difference(rows, 1),
    }
    drawn = bootstrap_intervals(metrics, len(truth), kept, options)
    return ColumnComparison(
        name, len(truth), paired_delong(a, b, truth), mcnemar(right_a, right_b), (sens_a, sens_b),
        (spec_a, spec_b), drawn["intervals"],
    )  # fmt: skip


def aligned(ids_a: Sequence[str], ids_b: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ids both runs predicted, in A's order; a DataError when they share none or differ."""
    where_b = {image_id: index for index, image_id in enumerate(ids_b)}
    if set(ids_a) != set(where_b):
        only_a, only_b = sorted(set(ids_a) - set(where_b)), sorted(set(where_b) - set(ids_a))
        raise DataError(
            f"the two runs were given different images ({len(only_a)} only in the first, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in the second, e.g. {only_b[:3]}): compare them on one source with --data"
        )
    return np.arange(len(ids_a)), np.array([where_b[image_id] for image_id in ids_a])


def check_comparable(classes_a: list[str], classes_b: list[str], kind_a: str, kind_b: str) -> None:
    if classes_a != classes_b or kind_a != kind_b:
        raise ConfigError(
            f"the runs answer different questions ({kind_a} {classes_a} against {kind_b} {classes_b}): "
            "only runs with the same classes can be compared"
        )
    if kind_a == "multiclass":
        raise ConfigError("compare tests binary and multi-label runs (AUC and decisions per finding)")


@dataclass(frozen=True)
class CompareOptions:
    """The images both runs predict (default: the first run's test split; ``source`` and ``source_options``:
    another labelled source), the bootstrap of the differences, and the output folder (default
    ``RUN_A/compare-<RUN_B's folder name>``)."""

    split: str = "test"
    source: str | None = None
    source_options: dict = field(default_factory=dict)
    skip_bad: bool = False
    bootstrap: BootstrapOptions = field(default_factory=BootstrapOptions)
    out: str | None = None


@dataclass
class Comparison:
    """Two runs compared: their names, the images, one :class:`ColumnComparison` per finding, and where it went."""

    run_a: str
    run_b: str
    data: str
    images: int
    unit: str
    columns: list[ColumnComparison]
    out: Path | None = None
