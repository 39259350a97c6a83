"""A multi-label run seen finding by finding: the gallery's picks per finding and the rows of the findings table."""

import math

import torch

from attnscope.explain.findings import finding_gallery_order, finding_metric_rows


def test_the_gallery_picks_per_finding_the_worst_errors_then_the_surest_detections():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.3], [0.1, 0.95], [0.7, 0.2], [0.4, 0.6]])
    labels = torch.tensor([[1, 0], [1, 1], [0, math.nan], [0, 1], [1, 0], [1, 0]])
    picks = finding_gallery_order(probs, labels, [0.5, 0.5], per_group=4)
    first = [(position, group) for position, finding, group in picks if finding == 0]
    # false negatives by rising probability (row 1 at 0.2 before row 5 at 0.4: one kept), the false positive
    # (row 2), then the true positives by falling probability
    assert first == [(1, "false negative"), (2, "false positive"), (0, "true positive"), (4, "true positive")]
    second = [(position, group) for position, finding, group in picks if finding == 1]
    assert second == [(5, "false positive"), (3, "true positive"), (1, "true positive")]  # row 2 is left out


def test_the_findings_table_reads_each_findings_figures_in_order():
    metrics = {
        "rows_per_class": [10, 8],
        "positives_per_class": [3, 4],
        "auc_per_class": [0.9, 0.7],
        "ap_per_class": [0.8, 0.6],
        "threshold_per_class": [0.4, 0.2],
        "sensitivity_youden_per_class": [1.0, 0.5],
        "specificity_youden_per_class": [0.75, 0.25],
    }
    assert finding_metric_rows(["a", "b"], metrics) == [
        ["a", 10, 3, 0.9, 0.8, 0.4, 1.0, 0.75],
        ["b", 8, 4, 0.7, 0.6, 0.2, 0.5, 0.25],
    ]
    assert finding_metric_rows(["a"], {})[0] == ["a", *[None] * 7]  # runs evaluated before these figures existed
