"""A map per finding of a multi-label run (chest X-rays): where each finding's maps point, and which images
show each finding best and worst.

A multi-label image can hold several findings; its top class says nothing about
the others. Here every finding is looked at on its own: its maps are scored on
the images where it is present (its boxes lie there; where an image holds two
findings its mask is the union of both boxes), and the gallery picks, per
finding, the most confident detections and the worst misses and false alarms
at the run's validation threshold of that finding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from attnscope.data.loader import BatchLoader
from attnscope.engine.run import Run
from attnscope.explain.scores import localisation_scores

GalleryPick = tuple[int, int | None, str]  # position in the predictions, the finding whose maps (None: top), group


def finding_gallery_order(
    probs: torch.Tensor, labels: torch.Tensor, thresholds: Sequence[float], per_group: int
) -> list[GalleryPick]:
    """Per finding: the most confident true positives, then the worst false negatives (lowest probability) and
    false positives (highest); ``per_group`` images per finding in all, at least one of each error kind where
    there is one. Labels left out (NaN) are never picked."""
    errors = max(per_group // 4, 1)
    picks: list[GalleryPick] = []
    for finding, threshold in enumerate(thresholds):
        p, truth = probs[:, finding], labels[:, finding].float()
        positive, negative = truth == 1, truth == 0
        groups = (
            ("false negative", positive & (p < threshold), p, errors),
            ("false positive", negative & (p >= threshold), -p, errors),
            ("true positive", positive & (p >= threshold), -p, max(per_group - 2 * errors, 1)),
        )
        for group, members, key, count in groups:
            candidates = torch.nonzero(members).flatten()
            ordered = candidates[torch.argsort(key[candidates], stable=True)][:count]
            picks += [(int(position), finding, group) for position in ordered]
    return picks


def finding_localisation(
    run: Run, loader: BatchLoader, methods: list[str], count: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Finding -> method -> mean localisation score of that finding's maps, over up to ``count`` test images where
    the finding is present and has a box; findings without such an image are left out."""
    from attnscope.explain.explainer import explain_batch

    sums: dict[str, dict[str, dict[str, list[float]]]] = {}
    taken = [0] * len(run.classes)
    for batch in loader:
        if "mask" not in batch or min(taken) >= count:
            break
        boxed = batch["mask"].flatten(1).any(1)
        for finding, name in enumerate(run.classes):
            chosen = torch.nonzero((batch["label"][:, finding] == 1) & boxed).flatten()[: count - taken[finding]]
            if len(chosen) == 0:
                continue
            taken[finding] += len(chosen)
            explanation = explain_batch(run, batch["image"][chosen], methods, target=finding)
            for method, maps in explanation.maps.items():
                scores = localisation_scores(maps, batch["mask"][chosen][:, 0])
                entry = sums.setdefault(name, {}).setdefault(method, {})
                for score, values in scores.items():
                    entry.setdefault(score, []).extend(v for v in values.tolist() if not math.isnan(v))
    return {
        finding: {method: {s: float(np.mean(v)) for s, v in entry.items() if v} for method, entry in methods_.items()}
        for finding, methods_ in sums.items()
    }


def finding_metric_rows(classes: Sequence[str], metrics: dict) -> list[list]:
    """Per finding: labelled rows, positives, AUC, AP, the validation threshold and sensitivity and specificity
    there (the operating point every figure of the run uses)."""
    columns = ("rows_per_class", "positives_per_class", "auc_per_class", "ap_per_class", "threshold_per_class",
               "sensitivity_at_threshold_per_class", "specificity_at_threshold_per_class")  # fmt: skip
    older = {"sensitivity_at_threshold_per_class": "sensitivity_youden_per_class",
             "specificity_at_threshold_per_class": "specificity_youden_per_class"}  # fmt: skip
    values = [metrics.get(column) or metrics.get(older.get(column, "")) or [None] * len(classes) for column in columns]
    return [[name, *(column[index] for column in values)] for index, name in enumerate(classes)]


FINDING_METRIC_HEADER = ["finding", "labelled", "positives", "AUC", "AP", "threshold", "sensitivity", "specificity"]
