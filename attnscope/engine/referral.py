"""Refer the uncertain cases to a clinician: a band of probabilities around the threshold, chosen on validation.

A model is least sure near its threshold. Referring the images whose probability
falls in a band around it, and deciding the rest, trades coverage (the share the
model decides) for accuracy on what it decides. The band is measured in logits, the
same distance on either side of the threshold (``m``: the images with
``|logit(p) - logit(threshold)| < m`` are referred), and chosen on the validation
split as the narrowest that brings the sensitivity among the decided images to the
target (0.95 by default); evaluation then reports, on the test split, the share
referred and the sensitivity and specificity among the rest, with the curve of
coverage against both.
"""

from __future__ import annotations

import math

import numpy as np

from attnscope.engine.intervals import rates_at

COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5)


def _logit(values: np.ndarray | float) -> np.ndarray:
    clipped = np.clip(np.asarray(values, np.float64), 1e-7, 1 - 1e-7)
    return np.log(clipped / (1 - clipped))


def margins(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Each image's distance to the threshold in logits: how sure the decision is."""
    return np.abs(_logit(probs) - _logit(threshold))


def choose_band(probs: np.ndarray, targets: np.ndarray, threshold: float, sensitivity: float = 0.95) -> dict:
    """The narrowest band (margin in logits) whose decided images reach ``sensitivity``, on these (validation)
    data; the band's probability ends, and the share it refers here. A margin of 0 refers nothing; where no band
    reaches the target while deciding some images, the widest that decides any is returned, marked unmet."""
    probs, truth = np.asarray(probs, np.float64), np.asarray(targets).astype(bool)
    distance = margins(probs, threshold)
    candidates = np.concatenate([[0.0], np.unique(distance)])
    chosen, met = candidates[-1], False
    for margin in candidates:
        kept = distance >= margin
        if not kept.any():
            break
        if rates_at(probs[kept], truth[kept], threshold)[0] >= sensitivity:
            chosen, met = float(margin), True
            break
    centre = float(_logit(threshold))
    low, high = 1 / (1 + math.exp(-(centre - chosen))), 1 / (1 + math.exp(-(centre + chosen)))
    return {"margin": float(chosen), "low": low, "high": high, "target_sensitivity": sensitivity, "met": met,
            "referred_on_val": float((distance < chosen).mean())}  # fmt: skip


def apply_band(probs: np.ndarray, targets: np.ndarray, threshold: float, margin: float) -> dict:
    """On these (test) data: the share referred by the band, and the sensitivity and specificity among the rest."""
    probs, truth = np.asarray(probs, np.float64), np.asarray(targets).astype(bool)
    kept = margins(probs, threshold) >= margin
    sensitivity, specificity = rates_at(probs[kept], truth[kept], threshold) if kept.any() else (math.nan, math.nan)
    return {"referred": float(1 - kept.mean()), "sensitivity": sensitivity, "specificity": specificity}


def coverage_curve(probs: np.ndarray, targets: np.ndarray, threshold: float) -> list[dict]:
    """Sensitivity and specificity among the decided images when the least sure are referred, at the coverages
    of :data:`COVERAGES` (the share decided)."""
    probs, truth = np.asarray(probs, np.float64), np.asarray(targets).astype(bool)
    order = np.argsort(-margins(probs, threshold), kind="stable")  # the surest first
    curve = []
    for coverage in COVERAGES:
        kept = order[: max(1, round(coverage * len(probs)))]
        sensitivity, specificity = rates_at(probs[kept], truth[kept], threshold)
        curve.append({"coverage": coverage, "sensitivity": sensitivity, "specificity": specificity})
    return curve


def referral_metrics(
    validation: tuple[np.ndarray, np.ndarray],
    tested: tuple[np.ndarray, np.ndarray],
    names: list[str],
    thresholds: list[float],
    sensitivity: float = 0.95,
) -> dict[str, dict]:
    """Per finding (one column for a binary run): the band chosen on ``validation`` (probabilities, labels), and on
    ``tested`` the share it refers, the sensitivity and specificity among the rest, and the coverage curve. Labels
    left out (NaN) are left out of their finding."""
    found = {}
    bands = choose_bands(validation, thresholds, sensitivity)
    for column, (name, threshold, band) in enumerate(zip(names, thresholds, bands, strict=True)):
        probs, labels = known_column(*tested, column)
        found[name] = {"band": band, "test": apply_band(probs, labels, threshold, band["margin"]),
                       "curve": coverage_curve(probs, labels, threshold)}  # fmt: skip
    return found


def known_column(probs: np.ndarray, labels: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
    """One finding's probabilities and labels (one column for a binary run) on the rows where its label is known."""
    p, t = probs.reshape(len(probs), -1)[:, column], labels.reshape(len(labels), -1)[:, column].astype(float)
    known = ~np.isnan(t)
    return p[known], t[known]


def choose_bands(validation: tuple[np.ndarray, np.ndarray], thresholds: list[float], sensitivity: float) -> list[dict]:
    """Each finding's band (:func:`choose_band`) on the validation probabilities and labels."""
    return [choose_band(*known_column(*validation, c), limit, sensitivity) for c, limit in enumerate(thresholds)]
