import numpy as np
import pytest

from attnscope import ConfigError
from attnscope.data.balance import class_weights, oversample, undersample

CLASSES = ["benign", "malignant"]


def test_undersample_keeps_the_named_count_seeded():
    labels = np.array([0] * 90 + [1] * 10)
    rows = np.arange(100)
    kept = undersample(labels, rows, {"benign": 30}, CLASSES, seed=42)
    assert np.bincount(labels[kept]).tolist() == [30, 10]
    assert (np.diff(kept) > 0).all()  # order preserved
    assert np.array_equal(kept, undersample(labels, rows, {0: 30}, CLASSES, seed=42))
    assert not np.array_equal(kept, undersample(labels, rows, {0: 30}, CLASSES, seed=1))


def test_oversample_repeats_each_row_of_the_class():
    labels = np.array([0, 0, 1, 0, 1])
    out = oversample(labels, np.arange(5), {"malignant": 4}, CLASSES)
    assert out.tolist() == [0, 1, 2, 2, 2, 2, 3, 4, 4, 4, 4]


def test_class_weights_single_and_multi_label():
    labels = np.array([0, 0, 0, 1])
    np.testing.assert_allclose(class_weights(labels, np.arange(4), 2), [4 / 6, 4 / 2])
    multi = np.array([[1, 0], [1, 1], [0, 0], [1, 0]], dtype=np.float32)
    np.testing.assert_allclose(class_weights(multi, np.arange(4), 2), [1 / 3, 3.0])


def test_bad_balancing_options_are_named():
    labels = np.array([0, 1])
    with pytest.raises(ConfigError, match=r"no class 'nevus'; the classes are \['benign', 'malignant'\]"):
        undersample(labels, np.arange(2), {"nevus": 1}, CLASSES)
    with pytest.raises(ConfigError, match="must be >= 1"):
        oversample(labels, np.arange(2), {"malignant": 0}, CLASSES)
    with pytest.raises(ConfigError, match="no training row"):
        class_weights(np.array([0, 0]), np.arange(2), 2)
