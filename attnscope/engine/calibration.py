"""Calibrated probabilities: temperature scaling fitted on validation, and the numbers that say how well a
probability means what it says.

Temperature scaling (Guo et al. 2017) divides the logits by one positive number ``T``
(one per finding for a multi-label run) chosen to minimise the negative log-likelihood
on the validation split: the ranking of images, hence AUC and every ROC point, is
unchanged, while a network that says 0.99 too often (or, trained with the focal loss,
0.3 where it is right) is brought to probabilities that match frequencies. The
threshold chosen on validation is carried to the calibrated scale, so every decision
stays the same.

Calibration is measured by:

- ECE, the expected calibration error: the mean over bins of ``|accuracy - confidence|``
  weighted by the share of predictions in the bin, with 15 bins of equal width on
  [0, 1] (Guo et al.'s and torchmetrics' choice) or of equal mass (each bin the same
  number of predictions; steadier on small test sets);
- MCE, the largest of those gaps over the non-empty bins;
- the Brier score, the mean squared difference between probability and outcome.

A binary run is scored on the probability of its positive class; a multi-class run on
its top label (the predicted class's probability against whether it is right) and
class-wise (every class's probability against its one-vs-rest outcome, the mean
over classes); a multi-label run per finding over the known labels, and their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from attnscope.errors import ConfigError

BINS = 15
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def _nll(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean negative log-likelihood per column (multi-label: per finding over its known labels), or one value."""
    if kind == "multiclass":
        return F.cross_entropy(logits, targets.long())
    if kind == "binary":
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), targets.float().reshape(-1))
    known = ~torch.isnan(targets)
    loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(targets, nan=0.0), reduction="none")
    return (loss * known).sum(0) / known.sum(0).clamp_min(1)


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> float | list[float]:
    """The temperature(s) minimising the validation NLL of ``logits / T``: one for binary and multi-class, one per
    finding for multi-label. Fitted in log space (so T stays positive) by L-BFGS, bounded to [0.05, 20]."""
    logits = logits.detach().float()
    if kind == "binary":
        logits = logits.reshape(-1)
    columns = logits.shape[1] if kind == "multilabel" else 1
    log_t = torch.zeros(columns, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        scale = log_t.exp() if kind == "multilabel" else log_t.exp()[0]
        loss = _nll(logits / scale, targets, kind).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    fitted = log_t.detach().exp().clamp(MIN_TEMPERATURE, MAX_TEMPERATURE)
    return [float(t) for t in fitted] if kind == "multilabel" else float(fitted[0])


def scale_logits(logits: torch.Tensor, temperature: float | list[float] | None) -> torch.Tensor:
    """``logits / T`` (per column for a list); unchanged where there is no temperature."""
    if temperature is None:
        return logits
    return logits / torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)


def carry_threshold(threshold: float, temperature: float) -> float:
    """The probability threshold on the calibrated scale that makes the same decisions as ``threshold`` did before:
    ``sigmoid(logit(threshold) / T)``."""
    if threshold <= 0.0 or threshold >= 1.0:
        return threshold
    return 1.0 / (1.0 + math.exp(-math.log(threshold / (1.0 - threshold)) / temperature))


@dataclass(frozen=True)
class CalibrationScores:
    """ECE (equal width and equal mass), MCE and Brier score of one set of probabilities and outcomes."""

    ece: float
    ece_equal_mass: float
    mce: float
    brier: float

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{key}": value for key, value in self.__dict__.items()}


def _bin_gaps(confidence: torch.Tensor, correct: torch.Tensor, edges_index: torch.Tensor) -> tuple[float, float]:
    """(ECE, MCE) given each prediction's bin index."""
    total, ece, mce = len(confidence), 0.0, 0.0
    for index in edges_index.unique():
        members = edges_index == index
        gap = abs(float(correct[members].float().mean()) - float(confidence[members].mean()))
        ece += gap * int(members.sum()) / total
        mce = max(mce, gap)
    return ece, mce


def binned_scores(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> CalibrationScores:
    """Calibration of confidences in [0, 1] against 0/1 outcomes; NaN for no predictions."""
    confidence, correct = confidence.double().reshape(-1), correct.double().reshape(-1)
    if len(confidence) == 0:
        return CalibrationScores(math.nan, math.nan, math.nan, math.nan)
    # equal width: bin b holds (b / bins, (b + 1) / bins], the first also 0 (torchmetrics' bucketize convention)
    width_index = (torch.ceil(confidence * bins) - 1).clamp(0, bins - 1)
    ece, mce = _bin_gaps(confidence, correct, width_index)
    order = torch.argsort(confidence, stable=True)
    mass_index = torch.empty_like(confidence)
    mass_index[order] = torch.div(torch.arange(len(confidence), dtype=torch.float64) * bins, len(confidence),
                                  rounding_mode="floor")  # fmt: skip
    ece_mass, _ = _bin_gaps(confidence, correct, mass_index)
    brier = float(((confidence - correct) ** 2).mean())
    return CalibrationScores(ece, ece_mass, mce, brier)


def calibration_scores(probs: torch.Tensor, targets: torch.Tensor, kind: str, bins: int = BINS) -> dict[str, Any]:
    """The calibration figures of a split (see the module): ``ece``, ``ece_equal_mass``, ``mce``, ``brier``, and
    for multi-class the class-wise ``classwise_ece``."""
    probs, targets = probs.detach().double().cpu(), targets.detach().cpu()
    if kind == "binary":
        return binned_scores(probs.reshape(-1), targets.reshape(-1), bins).as_dict()
    if kind == "multiclass":
        confidence, predicted = probs.max(1)
        scores = binned_scores(confidence, predicted == targets.long(), bins).as_dict()
        onehot = F.one_hot(targets.long(), probs.shape[1])
        classwise = [binned_scores(probs[:, c], onehot[:, c], bins).ece for c in range(probs.shape[1])]
        return scores | {"classwise_ece": sum(classwise) / len(classwise)}
    if kind != "multilabel":
        raise ConfigError(f"kind={kind!r} has no calibration scores")
    columns = []
    for c in range(probs.shape[1]):
        known = ~torch.isnan(targets[:, c].double())
        columns.append(binned_scores(probs[known, c], targets[known, c], bins))
    mean = {key: _nanmean([getattr(s, key) for s in columns]) for key in ("ece", "ece_equal_mass", "mce", "brier")}
    return mean | {"ece_per_class": [s.ece for s in columns], "brier_per_class": [s.brier for s in columns]}


def _nanmean(values: list[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def reliability_curve(
    confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS
) -> list[tuple[float, float, int]]:
    """(mean confidence, observed frequency, count) of each non-empty equal-width bin: the reliability diagram."""
    confidence, correct = confidence.double().reshape(-1), correct.double().reshape(-1)
    index = (torch.ceil(confidence * bins) - 1).clamp(0, bins - 1)
    curve = []
    for b in range(bins):
        members = index == b
        if members.any():
            curve.append((float(confidence[members].mean()), float(correct[members].mean()), int(members.sum())))
    return curve
