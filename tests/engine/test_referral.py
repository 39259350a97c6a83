"""Referral of uncertain cases: the narrowest band around the threshold that lets the model reach its target
sensitivity on what it decides, found as a brute-force search in the test finds it, and applied unchanged."""

import math
import shutil

import numpy as np
import pytest

from attnscope.engine.inference import EvaluateOptions, evaluate
from attnscope.engine.referral import apply_band, choose_band, coverage_curve, margins, referral_metrics
from attnscope.engine.run import Run


def _data(seed: int, count: int = 300):
    rng = np.random.default_rng(seed)
    truth = rng.random(count) < 0.4
    probs = 1 / (1 + np.exp(-(rng.normal(size=count) * 1.3 + 1.6 * truth - 0.8)))
    return probs, truth.astype(float)


@pytest.mark.parametrize("target", [0.85, 0.9, 0.95])
def test_the_band_is_the_narrowest_that_reaches_the_target_on_the_decided_images(target):
    probs, truth = _data(0)
    band = choose_band(probs, truth, 0.5, target)
    distance = np.abs(np.log(probs / (1 - probs)))  # the threshold 0.5 is logit 0
    best = None
    for margin in np.concatenate([[0.0], np.sort(np.unique(distance))]):  # brute force, written out
        kept = distance >= margin
        if kept.any() and ((probs[kept] >= 0.5) & (truth[kept] == 1)).sum() / (truth[kept] == 1).sum() >= target:
            best = margin
            break
    assert band["met"] and band["margin"] == pytest.approx(best)
    assert band["low"] == pytest.approx(1 / (1 + math.exp(best))) and band["high"] == pytest.approx(
        1 / (1 + math.exp(-best))
    )
    applied = apply_band(probs, truth, 0.5, band["margin"])
    assert applied["referred"] == pytest.approx(band["referred_on_val"]) and applied["sensitivity"] >= target


def test_the_coverage_curve_keeps_the_surest_images():
    probs, truth = _data(1)
    curve = coverage_curve(probs, truth, 0.3)
    whole = (probs >= 0.3)[truth == 1].mean()
    assert curve[0]["coverage"] == 1.0 and curve[0]["sensitivity"] == pytest.approx(whole)
    half = next(point for point in curve if point["coverage"] == 0.5)
    kept = np.argsort(-margins(probs, 0.3), kind="stable")[:150]
    assert half["specificity"] == pytest.approx(
        ((probs[kept] < 0.3) & (truth[kept] == 0)).sum() / (truth[kept] == 0).sum()
    )


def test_multilabel_findings_get_their_own_band_on_their_known_labels():
    probs, truth = _data(2)
    labels = np.stack([truth, truth[::-1].copy()], 1)
    labels[:30, 1] = np.nan
    found = referral_metrics((np.stack([probs, probs[::-1]], 1), labels), (np.stack([probs, probs[::-1]], 1), labels),
                             ["a", "b"], [0.5, 0.4], 0.9)  # fmt: skip
    known = ~np.isnan(labels[:, 1])
    assert found["b"]["band"] == choose_band(probs[::-1][known], labels[known, 1], 0.4, 0.9)


def test_evaluate_reports_the_band_chosen_on_validation(trained_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(trained_run, root, ignore=shutil.ignore_patterns("evaluation*", "explain*", "report*"))
    with Run.open(root, progress=False) as run:
        referral = evaluate(run, EvaluateOptions(out=tmp_path / "ev", bootstrap=0)).metrics["referral"]
    (finding,) = referral["findings"]
    values = referral["findings"][finding]
    assert finding == "malignant" and referral["target_sensitivity"] == 0.95
    assert 0 <= values["test"]["referred"] <= 1 and next(p["coverage"] for p in values["curve"]) == 1.0
