import logging
import math

import pytest
import torch

from attnscope.engine.metrics import (
    EpochOutputs,
    choose_threshold,
    head_size,
    parse_policy,
    scalars,
    summarize,
    task_kind,
    youden_threshold,
)
from attnscope.errors import ConfigError


def rank_auc(scores, targets):
    """AUC as the Mann-Whitney probability that a positive outranks a negative (ties count half)."""
    pos = scores[targets == 1]
    neg = scores[targets == 0]
    wins = (pos[:, None] > neg[None, :]).double().sum() + 0.5 * (pos[:, None] == neg[None, :]).double().sum()
    return float(wins / (len(pos) * len(neg)))


def counts(predicted, targets):
    tp = int(((predicted == 1) & (targets == 1)).sum())
    tn = int(((predicted == 0) & (targets == 0)).sum())
    return tp / int((targets == 1).sum()), tn / int((targets == 0).sum())


def test_binary_summary_matches_hand_computation():
    targets = torch.randint(0, 2, (300,))
    probs = torch.sigmoid(torch.randn(300) + 1.5 * targets)
    summary = summarize(probs, targets, "binary", ["benign", "malignant"])
    assert summary["auc"] == pytest.approx(rank_auc(probs, targets), abs=1e-6)
    sens, spec = counts((probs >= 0.5).long(), targets)
    assert (summary["sensitivity"], summary["specificity"]) == (pytest.approx(sens), pytest.approx(spec))
    assert summary["balanced_accuracy"] == pytest.approx((sens + spec) / 2)
    assert summary["accuracy"] == pytest.approx(float(((probs >= 0.5).long() == targets).float().mean()))
    # Youden: no threshold among the scores does better than the chosen one
    best_j = max(sum(counts((probs >= t).long(), targets)) - 1 for t in probs.tolist())
    j = summary["sensitivity_youden"] + summary["specificity_youden"] - 1
    assert j == pytest.approx(best_j, abs=1e-9)
    (tn, fp), (fn, tp) = summary["confusion"]
    assert tn + fp + fn + tp == 300 and tp / (tp + fn) == pytest.approx(sens)


def test_a_given_threshold_is_used_not_rechosen():
    targets = torch.tensor([0, 0, 1, 1])
    probs = torch.tensor([0.1, 0.6, 0.4, 0.9])
    summary = summarize(probs, targets, "binary", ["a", "b"], threshold=0.3)
    assert summary["threshold"] == 0.3
    assert (summary["sensitivity_youden"], summary["specificity_youden"]) == (1.0, 0.5)
    chosen = youden_threshold(probs, targets)
    assert sum(counts((probs >= chosen).long(), targets)) - 1 == pytest.approx(0.5)  # the best J here


def test_one_class_gives_nan_auc_and_a_warning_not_a_crash(caplog):
    with caplog.at_level(logging.WARNING):
        summary = summarize(torch.tensor([0.2, 0.7, 0.9]), torch.tensor([1, 1, 1]), "binary", ["a", "b"], split="val")
    assert math.isnan(summary["auc"]) and math.isnan(summary["specificity"])
    assert summary["sensitivity"] == pytest.approx(2 / 3)
    assert "val: only one class present" in caplog.text


def test_multiclass_macro_auc_is_the_mean_of_one_vs_rest():
    targets = torch.arange(90) % 3
    logits = torch.randn(90, 3) + 2 * torch.nn.functional.one_hot(targets, 3)
    probs = torch.softmax(logits, 1)
    summary = summarize(probs, targets, "multiclass", ["a", "b", "c"])
    per_class = [rank_auc(probs[:, c], (targets == c).long()) for c in range(3)]
    assert summary["auc_per_class"] == pytest.approx(per_class, abs=1e-6)
    assert summary["auc"] == pytest.approx(sum(per_class) / 3, abs=1e-6)
    recall = [float((probs.argmax(1)[targets == c] == c).float().mean()) for c in range(3)]
    assert summary["balanced_accuracy"] == pytest.approx(sum(recall) / 3)
    assert torch.tensor(summary["confusion"]).sum() == 90
    assert torch.tensor(summary["confusion"]).diagonal().sum() / 90 == pytest.approx(summary["accuracy"])


def test_multiclass_with_an_absent_class_averages_the_present_ones():
    targets = torch.tensor([0, 0, 1, 1])
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    summary = summarize(probs, targets, "multiclass", ["a", "b", "c"])
    assert math.isnan(summary["auc_per_class"][2]) and summary["auc"] == 1.0


def test_multilabel_per_label_and_macro():
    targets = torch.randint(0, 2, (200, 3)).float()
    probs = torch.sigmoid(torch.randn(200, 3) + 2 * targets)
    summary = summarize(probs, targets, "multilabel", ["x", "y", "z"])
    per_label = [rank_auc(probs[:, c], targets[:, c].long()) for c in range(3)]
    assert summary["auc_per_class"] == pytest.approx(per_label, abs=1e-6)
    assert summary["auc"] == pytest.approx(sum(per_label) / 3, abs=1e-6)
    assert len(summary["threshold"]) == 3
    values = scalars(summary, "val", ["x", "y", "z"])
    assert values["val/auc_y"] == pytest.approx(per_label[1], abs=1e-6) and values["val/rows"] == 200


def test_epoch_outputs_gather_batches_and_weight_the_loss_by_rows():
    outputs = EpochOutputs()
    outputs.update(torch.tensor([0.1, 0.9]), torch.tensor([0, 1]), torch.tensor(1.0))
    outputs.update(torch.tensor([0.4]), torch.tensor([1]), torch.tensor(4.0))
    probs, targets, loss = outputs.compute()
    assert probs.tolist() == pytest.approx([0.1, 0.9, 0.4]) and targets.tolist() == [0, 1, 1]
    assert loss == pytest.approx((1.0 * 2 + 4.0) / 3)


def test_task_kinds_and_head_sizes():
    assert (task_kind(2, False), head_size("binary", 2)) == ("binary", 1)
    assert (task_kind(5, False), head_size("multiclass", 5)) == ("multiclass", 5)
    assert (task_kind(2, True), head_size("multilabel", 2)) == ("multilabel", 2)


def test_multilabel_labels_left_out_are_left_out_of_their_own_metrics_only():
    torch.manual_seed(1)
    probs = torch.rand(40, 3)
    targets = (torch.rand(40, 3) > 0.5).float()
    targets[:10, 0] = math.nan  # uncertain, ignored for label a in ten rows
    summary = summarize(probs, targets, "multilabel", ["a", "b", "c"], threshold=[0.5, 0.5, 0.5])
    reference = summarize(probs[10:, :1], targets[10:, :1], "multilabel", ["a"], threshold=[0.5])
    assert summary["auc_per_class"][0] == pytest.approx(reference["auc_per_class"][0])
    assert summary["confusion_per_class"][0] == reference["confusion_per_class"][0]
    assert sum(map(sum, summary["confusion_per_class"][0])) == 30
    full = summarize(probs[:, 1:], targets[:, 1:], "multilabel", ["b", "c"], threshold=[0.5, 0.5])
    assert summary["auc_per_class"][1:] == pytest.approx(full["auc_per_class"])  # the others use every row
    assert summary["rows_per_class"] == [30, 40, 40] and summary["rows"] == 40


def test_multilabel_operating_point_per_finding_is_at_its_own_threshold():
    torch.manual_seed(2)
    probs = torch.rand(50, 2)
    targets = (torch.rand(50, 2) > 0.6).float()
    targets[:5, 1] = math.nan
    summary = summarize(probs, targets, "multilabel", ["a", "b"], threshold=[0.3, 0.7])
    for column, threshold in enumerate((0.3, 0.7)):
        known = ~torch.isnan(targets[:, column])
        p, t = probs[known, column], targets[known, column].bool()
        predicted = p >= threshold
        assert summary["sensitivity_youden_per_class"][column] == pytest.approx(float((predicted & t).sum() / t.sum()))
        assert summary["specificity_youden_per_class"][column] == pytest.approx(
            float((~predicted & ~t).sum() / (~t).sum())
        )
        assert summary["positives_per_class"][column] == int(t.sum())
    assert summary["threshold_per_class"] == [0.3, 0.7]


@pytest.mark.parametrize(
    ("policy", "check"),
    [
        ("sensitivity>=0.9", lambda sens, spec, t, probs, targets: sens >= 0.9),
        ("specificity>=0.8", lambda sens, spec, t, probs, targets: spec >= 0.8),
        ("fixed:0.3", lambda sens, spec, t, probs, targets: t == 0.3),
    ],
)
def test_a_threshold_policy_meets_its_target_with_the_best_other_rate(policy, check):
    torch.manual_seed(4)
    targets = (torch.rand(300) < 0.4).float()
    probs = torch.sigmoid(torch.randn(300) + 1.5 * targets)
    threshold = choose_threshold(probs, targets, policy)
    predicted = probs >= threshold
    sens = float(predicted[targets == 1].float().mean())
    spec = float((~predicted[targets == 0]).float().mean())
    assert check(sens, spec, threshold, probs, targets)
    if policy.startswith("sensitivity"):  # no higher threshold among the scores keeps the sensitivity
        higher = probs[probs > threshold].min()
        assert float((probs[targets == 1] >= higher).float().mean()) < 0.9
    if policy.startswith("specificity"):  # no lower threshold keeps the specificity
        lower = probs[probs < threshold].max()
        assert float((probs[targets == 0] < lower).float().mean()) < 0.8
    summary = summarize(probs, targets, "binary", ["a", "b"], policy=policy)
    assert summary["threshold"] == pytest.approx(threshold) and summary["sensitivity_at_threshold"] == pytest.approx(
        sens
    )


@pytest.mark.parametrize("policy", ["sensitivity>=1.5", "precision>=0.9", "fixed:x", ""])
def test_a_threshold_policy_that_is_not_one_is_refused(policy):
    with pytest.raises(ConfigError, match="threshold policy"):
        parse_policy(policy)


def test_the_run_config_refuses_a_threshold_policy_that_is_not_one():
    from attnscope.engine.config import load_config

    assert load_config(None, ["trainer.threshold=sensitivity>=0.95"]).trainer.threshold == "sensitivity>=0.95"
    with pytest.raises(ConfigError, match="threshold policy 'precision>=0.9'"):
        load_config(None, ["trainer.threshold=precision>=0.9"])
