"""Confidence intervals: the AUC as Mann-Whitney, DeLong's interval against the written-out structural components,
and a bootstrap that is seeded, draws whole patients, and narrows with more data."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchmetrics.functional.classification import binary_auroc

from attnscope.engine.intervals import BootstrapOptions, delong_interval, metric_intervals, rank_auc
from attnscope.errors import ConfigError


def _scores(seed: int, count: int = 200, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    targets = (rng.random(count) < 0.4).astype(float)
    scores = 1 / (1 + np.exp(-(rng.normal(size=count) + shift * targets)))
    return np.round(scores, 2), targets  # rounded: ties too


@pytest.mark.parametrize("seed", [0, 1])
def test_the_rank_auc_is_torchmetrics_auroc_ties_included(seed):
    scores, targets = _scores(seed)
    expected = binary_auroc(torch.tensor(scores), torch.tensor(targets).long())
    assert rank_auc(scores, targets) == pytest.approx(float(expected), abs=1e-6)
    assert math.isnan(rank_auc(scores, np.zeros_like(targets)))


def test_delong_is_the_variance_of_the_structural_components_written_out():
    scores, targets = _scores(2, count=60)
    positive, negative = scores[targets == 1], scores[targets == 0]
    psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    se = math.sqrt(v10.var(ddof=1) / len(v10) + v01.var(ddof=1) / len(v01))
    found, low, high = delong_interval(scores, targets, level=0.9)
    z = stats.norm.ppf(0.95)
    assert found == pytest.approx(auc) and low == pytest.approx(auc - z * se) and high == pytest.approx(auc + z * se)


def test_the_bootstrap_is_seeded_and_narrows_with_more_images():
    small, small_targets = _scores(3, count=100)
    large, large_targets = _scores(4, count=1600)
    options = BootstrapOptions(resamples=300, seed=5)
    first = metric_intervals(small, small_targets, "binary", ["a", "b"], 0.5, None, options)
    again = metric_intervals(small, small_targets, "binary", ["a", "b"], 0.5, None, options)
    other = metric_intervals(small, small_targets, "binary", ["a", "b"], 0.5, None, BootstrapOptions(300, seed=6))
    assert first == again and first["intervals"] != other["intervals"]
    wide = np.diff(first["intervals"]["auc"])[0]
    narrow = np.diff(
        metric_intervals(large, large_targets, "binary", ["a", "b"], 0.5, None, options)["intervals"]["auc"]
    )[0]
    assert narrow < wide / 2.5  # sixteen times the images: about a quarter of the width
    low, high = first["intervals"]["auc"]
    assert low < rank_auc(small, small_targets) < high and first["unit"] == "image"


def test_patients_are_drawn_whole_so_copies_of_an_image_add_no_certainty():
    scores, targets = _scores(7, count=80)
    options = BootstrapOptions(resamples=200, seed=1)
    alone = metric_intervals(scores, targets, "binary", ["a", "b"], 0.4, None, options)
    copies = np.repeat(scores, 4), np.repeat(targets, 4)
    patients = [f"p{i}" for i in range(80) for _ in range(4)]
    grouped = metric_intervals(*copies, "binary", ["a", "b"], 0.4, patients, options)
    assert grouped["unit"] == "patient" and grouped["units"] == 80
    for name in ("auc", "sensitivity_at_threshold", "specificity_at_threshold", "accuracy"):
        assert grouped["intervals"][name] == pytest.approx(alone["intervals"][name])
    by_image = metric_intervals(*copies, "binary", ["a", "b"], 0.4, None, options)
    assert np.diff(by_image["intervals"]["auc"])[0] < 0.7 * np.diff(alone["intervals"]["auc"])[0]


def test_multilabel_intervals_use_each_findings_known_labels():
    rng = np.random.default_rng(0)
    targets = (rng.random((120, 2)) < 0.5).astype(float)
    probs = np.clip(targets * 0.3 + rng.random((120, 2)) * 0.7, 0, 1)
    targets[:20, 1] = np.nan
    found = metric_intervals(probs, targets, "multilabel", ["x", "y"], [0.5, 0.5], None, BootstrapOptions(100))
    assert set(found["intervals"]) == {
        "auc",
        "sensitivity_at_threshold",
        "specificity_at_threshold",
        "auc (x)",
        "auc (y)",
    }
    known = ~np.isnan(targets[:, 1])
    assert found["delong"]["auc (y)"] == pytest.approx(list(delong_interval(probs[known, 1], targets[known, 1])[1:]))
    assert all(not math.isnan(v) for v in found["intervals"]["auc (y)"])


def test_bad_bootstrap_options_are_refused():
    with pytest.raises(ConfigError, match="level"):
        metric_intervals(*_scores(0), "binary", ["a", "b"], 0.5, None, BootstrapOptions(level=1.5))
    with pytest.raises(ConfigError, match="method"):
        metric_intervals(*_scores(0), "binary", ["a", "b"], 0.5, None, BootstrapOptions(method="basic"))
    assert metric_intervals(*_scores(0), "binary", ["a", "b"], 0.5, None, BootstrapOptions(0))["intervals"] == {}
