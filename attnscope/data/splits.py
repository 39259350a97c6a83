"""Train/validation/test splits: stratified by label, grouped by patient, or taken as given.

Rows that already carry a split keep it. The others are divided, stratified by
label, with every group (patient) kept whole in one split. A split that a given
column already provides (say the official test set) receives no further rows.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from attnscope.data.manifest import Manifest
from attnscope.errors import ConfigError, DataError
from attnscope.names import SPLITS


def _stratum(manifest: Manifest, rows: list[int]) -> int:
    """The label a unit of rows is stratified by: its majority class (multi-label: any positive)."""
    labels = manifest.labels[rows]
    if manifest.multilabel:  # a label left out (NaN) is not a positive
        return int((np.nan_to_num(labels, nan=0.0) > 0).any(axis=1).mean() >= 0.5)
    return int(np.bincount(labels).argmax())


def assign_splits(
    manifest: Manifest, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> np.ndarray:
    """A split name per row of ``manifest`` (an array of 'train', 'val', 'test')."""
    for option, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{option}={value} must lie in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves no training rows")
    given: list[str | None] = [s or None for s in (manifest.splits or [None] * len(manifest))]
    present = {s for s in given if s}
    fractions = {"val": 0.0 if "val" in present else val_fraction, "test": 0.0 if "test" in present else test_fraction}

    groups = manifest.groups or [f"row{i}" for i in range(len(manifest))]
    units: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        units[group or f"row{i}"].append(i)
    splits = np.empty(len(manifest), dtype=object)
    free_units = []
    for name, members in units.items():
        fixed = {str(given[i]) for i in members if given[i]}
        if len(fixed) > 1:
            raise DataError(
                f"{manifest.source}: group {name!r} is in splits {sorted(fixed)}; a patient must stay in one split"
            )
        if fixed:
            splits[members] = fixed.pop()
        else:
            free_units.append(name)

    rng = np.random.default_rng(seed)
    strata: dict[int, list[str]] = defaultdict(list)
    for name in free_units:
        strata[_stratum(manifest, units[name])].append(name)
    for stratum in sorted(strata):
        names = strata[stratum]
        names = [names[i] for i in rng.permutation(len(names))]
        sizes = np.array([len(units[n]) for n in names])
        cumulative = np.cumsum(sizes) / sizes.sum()
        test_end = fractions["test"]
        val_end = test_end + fractions["val"]
        for name, position in zip(names, cumulative - sizes / sizes.sum() / 2, strict=True):  # each unit's midpoint
            splits[units[name]] = "test" if position < test_end else "val" if position < val_end else "train"
    return splits.astype(str)


UNUSED_SPLIT = "unused"  # a row a sampling before the split left out of every split


def check_splits(manifest: Manifest, splits: np.ndarray, required: tuple[str, ...] = ("train", "val")) -> None:
    """Refuse splits that cannot train or validate: empty, or holding a single class."""
    problems = []
    for split in required:
        rows = np.flatnonzero(splits == split)
        if len(rows) == 0:
            problems.append(f"split {split!r} is empty")
            continue
        counts = (
            np.nansum(manifest.labels[rows], axis=0)
            if manifest.multilabel
            else np.bincount(manifest.labels[rows], minlength=manifest.num_classes)
        )
        present = [manifest.classes[c] for c in np.flatnonzero(counts)]
        if len(present) < 2 and not manifest.multilabel:
            problems.append(f"split {split!r} holds only class {present} ({len(rows)} rows)")
    if problems:
        raise DataError(
            f"{manifest.source}: {'; '.join(problems)}. Use more data, other fractions, "
            "or a split column with both classes in each split"
        )
    unknown = set(np.unique(splits)) - set(SPLITS) - {UNUSED_SPLIT}
    if unknown:
        raise DataError(f"{manifest.source}: unknown split name(s) {sorted(unknown)}")


def groups_per_split(manifest: Manifest, splits: np.ndarray) -> dict[str, set[str]]:
    """The groups each split holds (for checks and reports)."""
    found: dict[str, set[str]] = defaultdict(set)
    for group, split in zip(manifest.groups or [], splits, strict=False):
        if group is not None:
            found[split].add(group)
    return dict(found)


def assign_fold_splits(
    manifest: Manifest, folds: int, fold: int, test_fraction: float = 0.15, seed: int = 0
) -> np.ndarray:
    """K-fold cross-validation's splits for fold ``fold`` (1 to ``folds``): the test split held out as
    :func:`assign_splits` holds it (the same for every fold), the rest cut into ``folds`` parts, stratified by
    label and with every group (patient) whole in one part; part ``fold`` is the validation split."""
    if not (isinstance(folds, int) and folds >= 2) or not (isinstance(fold, int) and 1 <= fold <= folds):
        raise ConfigError(f"data.folds={folds!r}, data.fold={fold!r}: folds must be >= 2 and fold in 1..folds")
    if manifest.splits is not None and any(s == "val" for s in manifest.splits):
        raise DataError(f"{manifest.source}: its split column names a validation split; folds make their own")
    splits = assign_splits(manifest, 0.0, test_fraction, seed)
    groups = manifest.groups or [f"row{i}" for i in range(len(manifest))]
    units: dict[str, list[int]] = defaultdict(list)
    for i, group in enumerate(groups):
        if splits[i] == "train":
            units[group or f"row{i}"].append(i)
    strata: dict[int, list[str]] = defaultdict(list)
    for name, members in units.items():
        strata[_stratum(manifest, members)].append(name)
    rng = np.random.default_rng(seed)
    for stratum in sorted(strata):
        names = [strata[stratum][i] for i in rng.permutation(len(strata[stratum]))]
        sizes = np.array([len(units[n]) for n in names])
        middles = (np.cumsum(sizes) - sizes / 2) / sizes.sum()  # each unit's midpoint in [0, 1]
        for name, middle in zip(names, middles, strict=True):
            if min(int(middle * folds), folds - 1) == fold - 1:
                splits[units[name]] = "val"
    return splits
