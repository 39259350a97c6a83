"""Windowing high-bit-depth grey values to 8 bits, each method against its formula computed here."""

import tracemalloc

import numpy as np
import pytest

from attnscope.data.window import (
    WindowError,
    linear_window,
    sixteen_to_eight,
    stretch,
    window_values,
)


def reference_stretch(values, low, high):
    return np.rint(np.clip((values.astype(np.float64) - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def test_stretch_maps_low_to_0_and_high_to_255_and_clips():
    values = np.array([-100, 0, 1000, 2047, 4095, 9000], dtype=np.int32)
    assert stretch(values, 0, 4095).tolist() == [0, 0, 62, 127, 255, 255]
    assert np.array_equal(stretch(values, 100, 3000), reference_stretch(values, 100, 3000))
    assert not stretch(values, 5, 5).any()  # an empty window
    floats = np.array([np.nan, -np.inf, 0.5, np.inf], dtype=np.float32)
    assert stretch(floats, 0, 1).tolist() == [0, 0, 128, 255]


def test_a_dicom_linear_window_follows_the_standard():
    values = np.arange(-200, 400, dtype=np.float64)
    center, width = 100.0, 201.0
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2  # PS3.3 C.11.2.1.2.1
    expected = np.where(
        values <= low, 0, np.where(values > high, 255, np.rint(((values - (center - 0.5)) / (width - 1) + 0.5) * 255))
    )
    assert np.abs(linear_window(values, center, width).astype(int) - expected).max() <= 1
    exact = reference_stretch(values, center - width / 2, center + width / 2)
    assert np.array_equal(linear_window(values, center, width, "LINEAR_EXACT"), exact)
    sigmoid = np.rint(255 / (1 + np.exp(-4 * (values - center) / width)))
    assert np.array_equal(linear_window(values, center, width, "sigmoid"), sigmoid.astype(np.uint8))


def test_each_method_against_its_formula():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 3000, (64, 64)).astype(np.uint16)
    values[0, 0] = 4000  # one hot pixel
    low, high = np.percentile(values, (0.5, 99.5))
    assert np.array_equal(window_values(values, "percentile"), reference_stretch(values, low, high))
    assert np.array_equal(window_values(values, "auto"), window_values(values, "percentile"))
    assert np.array_equal(window_values(values, "minmax"), reference_stretch(values, 0, 4000))
    assert np.array_equal(window_values(values, "range"), reference_stretch(values, 0, 4095))  # 12 bits needed
    assert np.array_equal(window_values(values, "range", bits_stored=14), reference_stretch(values, 0, 16383))
    signed = np.array([-2048, 0, 2047], dtype=np.int16)
    assert window_values(signed, "range", bits_stored=12, signed=True).tolist() == [0, 128, 255]
    assert np.array_equal(window_values(values, "divide"), sixteen_to_eight(values))
    floats = rng.normal(size=(8, 8)).astype(np.float32)
    assert np.array_equal(window_values(floats, "divide"), reference_stretch(floats, floats.min(), floats.max()))


def test_a_dicom_window_asked_of_another_image_is_a_window_error():
    with pytest.raises(WindowError, match="VOI LUT"):
        window_values(np.zeros((2, 2), np.uint16), "lut")
    with pytest.raises(WindowError, match="not one of"):
        window_values(np.zeros((2, 2), np.uint16), "gamma")


def test_sixteen_bit_division_is_round_of_value_over_257_for_every_value():
    every = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(sixteen_to_eight(every), np.clip(np.rint(every / 257.0), 0, 255).astype(np.uint8))
    signed = np.array([-40000, -1, 0, 128, 129, 65535, 70000], dtype=np.int32)  # mode I holds any int32
    assert sixteen_to_eight(signed).tolist() == [0, 0, 0, 0, 1, 255, 255]


def test_windowing_keeps_its_memory_to_one_four_byte_copy():
    wide = np.random.default_rng(0).integers(0, 4096, (1000, 1000)).astype(np.uint16)
    for method in ("divide", "minmax", "range", "percentile"):
        tracemalloc.start()
        window_values(wide, method)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 5.5 * wide.size, method  # float64 temporaries took 34 bytes a pixel
