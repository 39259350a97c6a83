"""Calibration: ECE, MCE and Brier against torchmetrics and the formula, temperature scaling that finds a known
temperature, and a threshold carried to the calibrated scale that keeps every decision."""

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from attnscope.engine.calibration import (
    binned_scores,
    calibration_scores,
    carry_threshold,
    fit_temperature,
    reliability_curve,
    scale_logits,
)


def _binary(seed: int, count: int = 400):
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(count, generator=generator)
    outcomes = (torch.rand(count, generator=generator) < probs**1.5).long()  # over-confident at the top
    return probs, outcomes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_ece_and_mce_are_torchmetrics_with_fifteen_equal_width_bins(seed):
    probs, outcomes = _binary(seed)
    scores = calibration_scores(probs, outcomes, "binary")
    assert scores["ece"] == pytest.approx(float(binary_calibration_error(probs, outcomes, n_bins=15)), abs=1e-6)
    assert scores["mce"] == pytest.approx(
        float(binary_calibration_error(probs, outcomes, n_bins=15, norm="max")), abs=1e-6
    )
    assert scores["brier"] == pytest.approx(float(((probs - outcomes) ** 2).mean()), abs=1e-7)


def test_multiclass_top_label_ece_is_torchmetrics_and_classwise_is_the_mean_over_classes():
    generator = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(300, 4, generator=generator) * 2, dim=1)
    targets = torch.multinomial(probs**0.5, 1, generator=generator).reshape(-1)
    scores = calibration_scores(probs, targets, "multiclass")
    expected = multiclass_calibration_error(probs, targets, num_classes=4, n_bins=15)
    assert scores["ece"] == pytest.approx(float(expected), abs=1e-6)
    classwise = [binned_scores(probs[:, c], (targets == c).long()).ece for c in range(4)]
    assert scores["classwise_ece"] == pytest.approx(sum(classwise) / 4)


def test_equal_mass_bins_hold_the_same_number_of_predictions():
    probs = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8, 0.9])
    outcomes = torch.tensor([0, 0, 1, 0, 1, 1, 1, 0])
    scores = binned_scores(probs, outcomes, bins=2)
    # two bins of four: mean confidences 0.1625 and 0.75, frequencies 0.25 and 0.75
    assert scores.ece_equal_mass == pytest.approx(0.5 * abs(0.25 - 0.1625) + 0.5 * abs(0.75 - 0.75))


def test_multilabel_scores_each_finding_on_its_known_labels():
    probs = torch.tensor([[0.9, 0.2], [0.8, 0.3], [0.1, 0.9], [0.2, 0.6]])
    targets = torch.tensor([[1.0, 0.0], [math.nan, 0.0], [0.0, 1.0], [0.0, math.nan]])
    scores = calibration_scores(probs, targets, "multilabel", bins=15)
    first = binned_scores(torch.tensor([0.9, 0.1, 0.2]), torch.tensor([1, 0, 0]), bins=15)
    second = binned_scores(torch.tensor([0.2, 0.3, 0.9]), torch.tensor([0, 0, 1]), bins=15)
    assert scores["ece_per_class"] == pytest.approx([first.ece, second.ece])
    assert scores["brier"] == pytest.approx((first.brier + second.brier) / 2)


@pytest.mark.parametrize(("kind", "true_t"), [("binary", 2.5), ("binary", 0.5), ("multiclass", 3.0)])
def test_temperature_scaling_finds_the_temperature_that_made_the_logits(kind, true_t):
    generator = torch.Generator().manual_seed(7)
    if kind == "binary":
        calibrated = torch.randn(4000, generator=generator) * 2
        labels = (torch.rand(4000, generator=generator) < torch.sigmoid(calibrated)).float()
    else:
        calibrated = torch.randn(4000, 5, generator=generator) * 2
        labels = torch.multinomial(torch.softmax(calibrated, 1), 1, generator=generator).reshape(-1)
    fitted = fit_temperature(calibrated * true_t, labels, kind)
    assert fitted == pytest.approx(true_t, rel=0.1)


def test_multilabel_temperatures_are_fitted_per_finding_over_known_labels():
    generator = torch.Generator().manual_seed(8)
    calibrated = torch.randn(4000, 2, generator=generator) * 2
    labels = (torch.rand(4000, 2, generator=generator) < torch.sigmoid(calibrated)).float()
    labels[:500, 1] = math.nan
    fitted = fit_temperature(calibrated * torch.tensor([0.5, 3.0]), labels, "multilabel")
    assert fitted == pytest.approx([0.5, 3.0], rel=0.1)
    before = calibration_scores(torch.sigmoid(calibrated * torch.tensor([0.5, 3.0])), labels, "multilabel")
    after = calibration_scores(torch.sigmoid(scale_logits(calibrated * torch.tensor([0.5, 3.0]), fitted)), labels,
                               "multilabel")  # fmt: skip
    assert after["ece"] < before["ece"]


@pytest.mark.parametrize("temperature", [0.4, 1.0, 2.7])
def test_a_carried_threshold_makes_the_same_decisions_on_the_calibrated_scale(temperature):
    logits = torch.linspace(-8, 8, 1601, dtype=torch.float64)
    for threshold in (0.1, 0.37, 0.5, 0.92):
        before = torch.sigmoid(logits) >= threshold
        after = torch.sigmoid(logits / temperature) >= carry_threshold(threshold, temperature) - 1e-12
        assert torch.equal(before, after)


def test_the_reliability_curve_gives_each_bins_confidence_frequency_and_count():
    probs = torch.tensor([0.05, 0.06, 0.95, 0.97, 0.99])
    outcomes = torch.tensor([0, 1, 1, 1, 0])
    curve = reliability_curve(probs, outcomes, bins=10)
    assert [count for *_, count in curve] == [2, 3]
    assert curve[0][:2] == pytest.approx((0.055, 0.5)) and curve[1][:2] == pytest.approx((0.97, 2 / 3))
