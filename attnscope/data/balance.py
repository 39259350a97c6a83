"""Class balancing of the training rows: undersampling, oversampling, loss weights. All seeded."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from attnscope.errors import ConfigError


def _class_index(key: int | str, classes: list[str], option: str) -> int:
    if isinstance(key, str) and key in classes:
        return classes.index(key)
    if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit()):
        index = int(key)
        if 0 <= index < len(classes):
            return index
    raise ConfigError(f"{option}: no class {key!r}; the classes are {classes}")


def undersample(
    labels: np.ndarray, rows: np.ndarray, keep: Mapping[int | str, int], classes: list[str], seed: int = 42
) -> np.ndarray:
    """Keep at most ``keep[c]`` rows of each named class (the AttnVGG melanoma tutorial keeps 6,000
    benign, random_state 42).

    The kept rows are a seeded random choice; the order of ``rows`` is otherwise preserved.
    """
    if labels.ndim != 1:
        raise ConfigError("undersample needs single-label data; use class weights for multi-label")
    rng = np.random.default_rng(seed)
    selected = np.ones(len(rows), dtype=bool)
    for key, count in keep.items():
        index = _class_index(key, classes, "undersample")
        if count < 1:
            raise ConfigError(f"undersample: keep at least 1 row of {classes[index]!r}, not {count}")
        members = np.flatnonzero(labels[rows] == index)
        if len(members) > count:
            selected[rng.choice(members, size=len(members) - count, replace=False)] = False
    return rows[selected]


def oversample(
    labels: np.ndarray, rows: np.ndarray, factors: Mapping[int | str, int], classes: list[str]
) -> np.ndarray:
    """Repeat each row of the named classes ``factors[c]`` times in all (AttnMel: malignant x4)."""
    if labels.ndim != 1:
        raise ConfigError("oversample needs single-label data; use class weights for multi-label")
    repeats = np.ones(len(rows), dtype=np.int64)
    for key, factor in factors.items():
        index = _class_index(key, classes, "oversample")
        if factor < 1:
            raise ConfigError(f"oversample: the factor of {classes[index]!r} must be >= 1, not {factor}")
        repeats[labels[rows] == index] = factor
    return np.repeat(rows, repeats)


def class_weights(labels: np.ndarray, rows: np.ndarray, num_classes: int) -> np.ndarray:
    """Loss weights from the training rows.

    Single-label: ``N / (K * n_c)`` per class (1 for every class when balanced).
    Multi-label: ``negatives / positives`` per class, BCE's ``pos_weight``.
    A class without rows is an error: its weight would be infinite.
    """
    chosen = labels[rows]
    if chosen.ndim == 2:  # over the rows where each label is known (NaN: left out)
        positives = np.nansum(chosen, axis=0)
        if (positives == 0).any():
            raise ConfigError(f"class weights: classes {np.flatnonzero(positives == 0).tolist()} have no positive row")
        return ((np.sum(~np.isnan(chosen), axis=0) - positives) / positives).astype(np.float32)
    counts = np.bincount(chosen, minlength=num_classes)
    if (counts == 0).any():
        raise ConfigError(f"class weights: classes {np.flatnonzero(counts == 0).tolist()} have no training row")
    return (len(chosen) / (num_classes * counts)).astype(np.float32)


def masked_subset(rows_in_manifest: int, train_rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which manifest rows keep their masks for training when only ``fraction`` of the training images have
    one (a seeded choice among the distinct training rows, the others' masks read as empty): (N,) bool."""
    distinct = np.unique(train_rows)
    keep = np.zeros(rows_in_manifest, dtype=bool)
    chosen = np.random.default_rng((seed, 7)).choice(distinct, size=round(fraction * len(distinct)), replace=False)
    keep[chosen] = True
    return keep
