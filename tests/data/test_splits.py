import numpy as np
import pytest

from attnscope import ConfigError, DataError
from attnscope.data.manifest import Manifest
from attnscope.data.splits import assign_splits, check_splits, groups_per_split


def manifest(labels, groups=None, splits=None):
    n = len(labels)
    return Manifest(
        "test.csv",
        [f"r{i}" for i in range(n)],
        np.array(labels),
        ["benign", "malignant"],
        images=np.zeros((n, 2, 2), dtype=np.uint8),
        groups=groups,
        splits=splits,
    )


def test_stratified_fractions_hold_for_each_class():
    rows = manifest([0] * 800 + [1] * 200)
    splits = assign_splits(rows, 0.15, 0.15, seed=0)
    for label, total in ((0, 800), (1, 200)):
        mine = splits[rows.labels == label]
        assert (mine == "test").sum() == round(0.15 * total) and (mine == "val").sum() == round(0.15 * total)
    assert np.array_equal(splits, assign_splits(rows, 0.15, 0.15, seed=0))
    assert not np.array_equal(splits, assign_splits(rows, 0.15, 0.15, seed=1))


def test_no_patient_is_in_two_splits():
    rng = np.random.default_rng(0)
    groups = [f"P{g}" for g in rng.integers(0, 120, 600)]
    labels = [int(g.endswith(("1", "7"))) for g in groups]  # label follows the patient
    rows = manifest(labels, groups=groups)
    splits = assign_splits(rows, 0.2, 0.2, seed=3)
    per_split = groups_per_split(rows, splits)
    assert not (per_split["train"] & per_split["val"]) and not (per_split["train"] & per_split["test"])
    assert not (per_split["val"] & per_split["test"])
    assert 0.12 < (splits == "test").mean() < 0.28
    for split in ("train", "val", "test"):
        assert 0 < rows.labels[splits == split].mean() < 1


def test_given_splits_are_kept_and_the_rest_fill_the_missing_ones():
    given = ["test"] * 20 + [None] * 80
    rows = manifest([0, 1] * 50, splits=given)
    splits = assign_splits(rows, 0.25, 0.15, seed=0)
    assert (splits[:20] == "test").all()
    assert (splits[20:] != "test").all()  # the official test set is not enlarged
    assert (splits[20:] == "val").sum() == 20


def test_a_group_given_two_splits_is_refused():
    rows = manifest([0, 1, 0], groups=["P1", "P1", "P2"], splits=["train", "test", "val"])
    with pytest.raises(DataError, match=r"group 'P1' is in splits \['test', 'train'\]"):
        assign_splits(rows)


def test_a_split_with_one_class_is_refused():
    rows = manifest([0] * 10 + [1] * 2)
    splits = np.array(["train"] * 10 + ["val"] * 2)
    with pytest.raises(DataError, match=r"split 'train' holds only class \['benign'\] \(10 rows\)"):
        check_splits(rows, splits)
    with pytest.raises(DataError, match="split 'val' is empty"):
        check_splits(rows, np.array(["train"] * 12))


def test_folds_validate_each_non_test_row_once_and_hold_out_the_same_test_split():
    from attnscope.data.splits import assign_fold_splits

    labels = np.array([i % 3 == 0 for i in range(90)], dtype=np.int64)
    groups = [f"p{i // 2}" for i in range(90)]  # two images a patient
    manifest = Manifest("m", [str(i) for i in range(90)], labels, ["a", "b"], images=np.zeros((90, 2, 2), np.uint8),
                        groups=groups)  # fmt: skip
    plain = assign_splits(manifest, 0.0, 0.2, seed=3)
    per_fold = [assign_fold_splits(manifest, 3, fold, 0.2, seed=3) for fold in (1, 2, 3)]
    for splits in per_fold:
        assert np.array_equal(splits == "test", plain == "test")  # the same test split in every fold
        assert set(splits) == {"train", "val", "test"} and labels[splits == "val"].any()  # stratified
        for patient in set(groups):
            assert len({splits[i] for i in range(90) if groups[i] == patient}) == 1  # patients whole
    validated = np.sum([splits == "val" for splits in per_fold], axis=0)
    assert np.array_equal(validated, (plain != "test").astype(int))  # each non-test row validates exactly once
    with pytest.raises(ConfigError, match="folds must be >= 2"):
        assign_fold_splits(manifest, 3, 4)
