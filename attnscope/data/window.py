"""Windowing: grey values of more than 8 bits (12- and 16-bit radiographs, float images) shown in 8.

A radiograph stores 10-16 bits; divided by 257 as if it spanned 0-65535, a 12-bit
image keeps 17 grey levels and looks black. A window maps the values that matter
to 0-255 instead (``data.window``, recorded in the run so that ``predict`` and
``serve`` decode as training did):

- ``auto``: a DICOM file's own VOI LUT, else its first window (Window Center and
  Width), else the percentiles; any other image: the percentiles;
- ``lut`` / ``window``: the DICOM file's VOI LUT / first window (a file without one
  is a bad row that says so);
- ``range``: the stored range, ``BitsStored`` where the file says (DICOM), else the
  bits the image's largest value needs;
- ``minmax``: the image's own minimum to maximum;
- ``percentile``: its 0.5th to 99.5th percentile (robust to a few hot pixels and
  burnt-in labels);
- ``divide``: ``round(value / 257)`` for 16-bit and min-max for float, what runs
  trained before windowing existed used (their decoding is kept that way).
"""

from __future__ import annotations

import numpy as np


class WindowError(ValueError):
    """A window the image cannot have (a VOI LUT or window asked of a file without one)."""


WINDOWS = ("auto", "lut", "window", "range", "minmax", "percentile", "divide")
PERCENTILES = (0.5, 99.5)


def stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` from ``low`` (0) to ``high`` (255) as uint8, clipped, in one float32 copy; all 0 when the
    window is empty."""
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    scaled = values.astype(np.float32)
    scaled -= low
    scaled *= 255.0 / (high - low)
    if values.dtype.kind == "f":
        np.copyto(scaled, 0.0, where=np.isnan(scaled))  # infinities are clipped next
    np.clip(scaled, 0, 255, out=scaled)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.uint8)


def linear_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A DICOM window (PS3.3 C.11.2.1.2) of ``values`` to uint8: ``LINEAR`` (the default), ``LINEAR_EXACT`` or
    ``SIGMOID``, as the file's VOI LUT Function says."""
    function = function.upper()
    if function == "SIGMOID":
        unit = 1.0 / (1.0 + np.exp(-4.0 * (values.astype(np.float64) - center) / width))
        return np.rint(unit * 255).astype(np.uint8)
    if function == "LINEAR_EXACT":
        return stretch(values, center - width / 2, center + width / 2)
    # LINEAR: the window runs from c - 0.5 - (w - 1) / 2 to c - 0.5 + (w - 1) / 2
    width = max(width, 1.0)
    return stretch(values, center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2)


def sixteen_to_eight(wide: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer) pixels as 8 bits, ``round(value / 257)`` clipped to 0-255, computed in place on
    one 4-byte copy: float64 temporaries made a 16-bit image cost 34 bytes per pixel to convert."""
    scaled = wide.astype(np.int32)  # uint16 fits; a copy of int32 pixels (mode I) is clipped in place
    np.clip(scaled, 0, 65535, out=scaled)
    scaled += 128  # (v + 128) // 257 is round(v / 257): v / 257 is never halfway between two integers
    scaled //= 257
    return scaled.astype(np.uint8)


def finite_bounds(values: np.ndarray, percentiles: tuple[float, float] | None) -> tuple[float, float]:
    """The minimum and maximum (or the two percentiles) of the finite values; (0, 0) when there are none."""
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return 0.0, 0.0
    if percentiles is None:
        return float(finite.min()), float(finite.max())
    low, high = np.percentile(finite, percentiles)
    return float(low), float(high)


def stored_range(values: np.ndarray, bits_stored: int | None, signed: bool) -> tuple[float, float]:
    """The values ``bits_stored`` bits can hold (signed or not); without it, the bits the largest value needs
    (at least 8)."""
    if bits_stored is None:
        if values.dtype.kind == "f":
            return finite_bounds(values, None)
        largest = max(abs(int(values.max())), abs(int(values.min()))) if values.size else 0
        bits_stored = max(8, largest.bit_length() + (1 if signed else 0))
    if signed:
        return float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    return 0.0, float(2**bits_stored - 1)


def window_values(values: np.ndarray, method: str, bits_stored: int | None = None, signed: bool = False) -> np.ndarray:
    """Grey ``values`` (any integer or float type) as uint8 by ``method`` (see the module's list); ``lut`` and
    ``window`` need a DICOM file's own (:mod:`attnscope.data.dicom` applies them) and raise WindowError here."""
    if method in ("lut", "window"):
        raise WindowError(f"window={method} needs a DICOM file's own {'VOI LUT' if method == 'lut' else 'window'}")
    if method == "divide":
        return stretch(values, *finite_bounds(values, None)) if values.dtype.kind == "f" else sixteen_to_eight(values)
    if method == "range":
        return stretch(values, *stored_range(values, bits_stored, signed))
    if method == "minmax":
        return stretch(values, *finite_bounds(values, None))
    if method in ("percentile", "auto"):
        return stretch(values, *finite_bounds(values, PERCENTILES))
    raise WindowError(f"window={method!r} is not one of {', '.join(WINDOWS)}")
