"""The numbers a clinician asks for, from a whole split's probabilities.

:class:`EpochOutputs` collects probabilities, targets and the loss of an epoch
as a torchmetrics ``Metric``, so under DDP its ``compute`` gathers every
process's share before anything is calculated: AUC and the Youden threshold
need the whole split, not an average of per-process values. :func:`summarize`
turns them into metrics with torchmetrics' functional API.

Kinds: ``binary`` (one logit; probabilities (N,)), ``multiclass`` (softmax;
(N, C)) and ``multilabel`` (sigmoid per label; (N, C)). A split where a class is
absent has no AUC for it: the value is NaN with a warning, never a crash.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_roc,
    multiclass_confusion_matrix,
)
from torchmetrics.utilities import dim_zero_cat

from attnscope.errors import ConfigError
from attnscope.names import HEADLINE_METRICS

log = logging.getLogger(__name__)

KINDS = ("binary", "multiclass", "multilabel")


def task_kind(num_classes: int, multilabel: bool) -> str:
    """The kind of a classification problem: what head, loss and metrics it takes."""
    if multilabel:
        return "multilabel"
    return "binary" if num_classes == 2 else "multiclass"


def head_size(kind: str, num_classes: int) -> int:
    """Logits a model needs: one for a binary problem (sigmoid), one per class otherwise."""
    return 1 if kind == "binary" else num_classes


def probabilities(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits -> probabilities: (N,) of the positive class for binary, (N, C) otherwise."""
    logits = logits.float()
    if kind == "binary":
        return torch.sigmoid(logits.reshape(-1))
    if kind == "multiclass":
        return torch.softmax(logits, dim=1)
    return torch.sigmoid(logits)


def class_probabilities(probs: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, C) per-class probabilities; binary becomes (1 - p, p)."""
    return torch.stack([1 - probs, probs], dim=1) if kind == "binary" else probs


class EpochOutputs(Metric):
    """Probabilities, targets and summed loss of one split over an epoch, gathered across processes."""

    full_state_update = False
    probs: list[torch.Tensor]
    targets: list[torch.Tensor]
    loss_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("loss_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        self.probs.append(probs.detach().float())
        self.targets.append(targets.detach())
        self.loss_sum += loss.detach().double() * len(targets)
        self.count += len(targets)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        if isinstance(self.probs, list) and not self.probs:  # after a DDP sync the state is one tensor
            return torch.empty(0), torch.empty(0), math.nan
        return dim_zero_cat(self.probs), dim_zero_cat(self.targets), float(self.loss_sum / self.count.clamp_min(1))


def _binary_scores(probs: torch.Tensor, targets: torch.Tensor, what: str) -> tuple[float, float]:
    """(AUC, AP) of one binary column; NaN with a warning when a class is absent."""
    positives = int(targets.sum())
    if positives == 0 or positives == len(targets):
        log.warning(
            "%s: only one class present (%d of %d positive); AUC and AP are undefined (NaN)",
            what,
            positives,
            len(targets),
        )
        return math.nan, math.nan
    targets = targets.long()
    return float(binary_auroc(probs, targets)), float(binary_average_precision(probs, targets))


def youden_threshold(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """The threshold maximising sensitivity + specificity - 1 (Youden's J); 0.5 when undefined."""
    return choose_threshold(probs, targets, "youden")


def parse_policy(policy: str) -> tuple[str, float | None]:
    """``youden``, ``sensitivity>=X``, ``specificity>=X`` or ``fixed:X`` as (kind, X); a ConfigError otherwise."""
    text = str(policy).replace(" ", "")
    if text == "youden":
        return "youden", None
    for kind, marker in (("sensitivity", "sensitivity>="), ("specificity", "specificity>="), ("fixed", "fixed:")):
        if text.startswith(marker):
            try:
                value = float(text[len(marker) :])
            except ValueError:
                break
            if 0.0 <= value <= 1.0:
                return kind, value
    raise ConfigError(
        f"threshold policy {policy!r}: use youden, sensitivity>=X, specificity>=X or fixed:X with X in [0, 1] "
        "(e.g. sensitivity>=0.95 for a screening test)"
    )


def choose_threshold(probs: torch.Tensor, targets: torch.Tensor, policy: str = "youden") -> float:
    """The operating threshold ``policy`` picks on these data: Youden's J at its best; the highest threshold whose
    sensitivity reaches X (the fewest false alarms for that sensitivity); the lowest whose specificity reaches X
    (the most found for that specificity); or X itself. 0.5 where the data hold one class only."""
    kind, given = parse_policy(policy)
    value = 0.0 if given is None else given
    if kind == "fixed":
        return value
    positives = int(targets.sum())
    if positives == 0 or positives == len(targets):
        return 0.5
    fpr, tpr, thresholds = binary_roc(probs, targets.long())  # thresholds falling, tpr and fpr rising
    if kind == "youden":
        best = int(torch.argmax(tpr - fpr))
    elif kind == "sensitivity":
        best = int(torch.nonzero(tpr >= value - 1e-12)[0])
    else:
        best = int(torch.nonzero(1 - fpr >= value - 1e-12)[-1])
    return min(float(thresholds[best]), 1.0)


def _rates(predicted: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Sensitivity, specificity and the 2x2 confusion [[TN, FP], [FN, TP]] of 0/1 predictions."""
    targets = targets.bool()
    tp = int((predicted & targets).sum())
    tn = int((~predicted & ~targets).sum())
    fp = int((predicted & ~targets).sum())
    fn = int((~predicted & targets).sum())
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "confusion": [[tn, fp], [fn, tp]],
    }


def _binary_column(
    probs: torch.Tensor, targets: torch.Tensor, threshold: float | None, what: str, policy: str = "youden"
) -> dict:
    auc, ap = _binary_scores(probs, targets, what)
    chosen = choose_threshold(probs, targets, policy) if threshold is None else float(threshold)
    at_half = _rates(probs >= 0.5, targets)
    at_chosen = _rates(probs >= chosen, targets)
    return {
        "auc": auc,
        "ap": ap,
        "accuracy": float(((probs >= 0.5) == targets.bool()).float().mean()),
        "balanced_accuracy": _mean([at_half["sensitivity"], at_half["specificity"]]),
        "sensitivity": at_half["sensitivity"],
        "specificity": at_half["specificity"],
        "threshold": chosen,
        # at the operating threshold (chosen on validation by the run's policy); "_youden" names the same values for
        # readers written when Youden's J was the only policy
        "sensitivity_at_threshold": at_chosen["sensitivity"],
        "specificity_at_threshold": at_chosen["specificity"],
        "sensitivity_youden": at_chosen["sensitivity"],
        "specificity_youden": at_chosen["specificity"],
        "confusion": at_half["confusion"],
        "confusion_at_threshold": at_chosen["confusion"],
        "confusion_youden": at_chosen["confusion"],
    }


def _mean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def summarize(
    probs: torch.Tensor,
    targets: torch.Tensor,
    kind: str,
    classes: list[str],
    threshold: float | list[float] | None = None,
    split: str = "split",
    policy: str = "youden",
) -> dict:
    """Every metric of one split: scalars, plus per-class lists and confusion matrices.

    ``threshold``: the operating point for the ``*_at_threshold`` values, chosen on the
    validation split (pass it when summarising the test split); None chooses it
    on these data by ``policy`` (:func:`choose_threshold`). Multi-class has no threshold; its sensitivity and
    specificity are per class (one-vs-rest at the arg-max) and macro-averaged.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: use one of {KINDS}")
    if len(targets) == 0:
        raise ValueError(f"{split}: no rows to compute metrics on")
    probs = probs.float().cpu()
    targets = targets.cpu()
    if kind == "binary":
        if isinstance(threshold, list):
            raise ValueError(f"{split}: a binary problem has one threshold, got {threshold}")
        result = _binary_column(probs, targets, threshold, f"{split}", policy)
        result["rows"] = len(targets)
        return result
    if kind == "multilabel":
        thresholds = threshold if isinstance(threshold, (list, tuple)) else [threshold] * len(classes)
        return _multilabel_summary(probs, targets, classes, list(thresholds), split, policy)
    return _multiclass_summary(probs, targets.long(), classes, split)


MEAN_KEYS = (*HEADLINE_METRICS, "sensitivity_youden", "specificity_youden")
PER_CLASS_KEYS = (
    "auc",
    "ap",
    "sensitivity",
    "specificity",
    "threshold",
    "sensitivity_at_threshold",
    "specificity_at_threshold",
    "sensitivity_youden",
    "specificity_youden",
    "confusion_at_threshold",
)


def _multilabel_summary(
    probs: torch.Tensor,
    targets: torch.Tensor,
    classes: list[str],
    thresholds: list[float | None],
    split: str,
    policy: str = "youden",
) -> dict:
    """Each label as a binary problem over the rows where it is known (NaN: uncertain and ignored, left out of
    that label's figures only); the scalars are the macro means over labels."""
    known = ~torch.isnan(targets.float())
    columns = [
        _binary_column(
            probs[known[:, c], c], targets[known[:, c], c], thresholds[c], f"{split}, label {name!r}", policy
        )
        for c, name in enumerate(classes)
    ]
    result: dict[str, Any] = {key: _mean([column[key] for column in columns]) for key in MEAN_KEYS}
    for key in PER_CLASS_KEYS:
        result[f"{key}_per_class"] = [column[key] for column in columns]
    result["threshold"] = [column["threshold"] for column in columns]
    result["confusion_per_class"] = [column["confusion"] for column in columns]
    result["rows"] = len(targets)
    result["rows_per_class"] = known.sum(dim=0).tolist()
    result["positives_per_class"] = torch.nan_to_num(targets.float(), nan=0.0).sum(dim=0).int().tolist()
    return result


def _multiclass_summary(probs: torch.Tensor, targets: torch.Tensor, classes: list[str], split: str) -> dict:
    """Arg-max predictions; AUC/AP one-vs-rest per class; sensitivity and specificity macro-averaged."""
    count = len(classes)
    predicted = probs.argmax(dim=1)
    confusion = multiclass_confusion_matrix(predicted, targets, num_classes=count)
    scores = [
        _binary_scores(probs[:, c], (targets == c).long(), f"{split}, class {name!r} vs rest")
        for c, name in enumerate(classes)
    ]
    rates = [_rates(predicted == c, targets == c) for c in range(count)]
    sensitivity = [r["sensitivity"] for r in rates]
    specificity = [r["specificity"] for r in rates]
    return {
        "auc": _mean([s[0] for s in scores]),
        "ap": _mean([s[1] for s in scores]),
        "accuracy": float((predicted == targets).float().mean()),
        "balanced_accuracy": _mean(sensitivity),
        "sensitivity": _mean(sensitivity),
        "specificity": _mean(specificity),
        "auc_per_class": [s[0] for s in scores],
        "ap_per_class": [s[1] for s in scores],
        "sensitivity_per_class": sensitivity,
        "specificity_per_class": specificity,
        "confusion": confusion.tolist(),
        "rows": len(targets),
    }


def scalars(summary: dict, prefix: str, classes: list[str]) -> dict[str, float]:
    """The loggable numbers of a summary: scalars as ``prefix/name`` (``rows``: how many images, all
    processes together), per-class AUCs as ``prefix/auc_<class>``."""
    values = {f"{prefix}/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float))}
    for name, auc in zip(classes, summary.get("auc_per_class", []), strict=False):
        values[f"{prefix}/auc_{name}"] = float(auc)
    return values
