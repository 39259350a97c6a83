"""DICOM files (radiographs, CT and MR slices) to 8-bit images, through pydicom (the ``dicom`` extra).

The pixel values become what a radiologist's viewer shows: the Modality LUT first
(Rescale Slope and Intercept: stored values to Hounsfield units or the like), then
the VOI transform that ``data.window`` chooses (:mod:`attnscope.data.window`: by
default the file's own VOI LUT, else its first Window Center and Width, else the
0.5-99.5 percentiles), then MONOCHROME1 inverted (there a high value is dark).
Colour images (RGB, YBR, palette) come out as RGB. Of a multi-frame file the
middle frame is used (the one a volume's slider opens on). Nothing of the header
is kept: the patient's name, identifiers and dates never leave this module.

Compressed transfer syntaxes decode where pydicom has a decoder for them (Pillow
covers JPEG baseline and JPEG 2000; JPEG-LS and others need ``pylibjpeg`` or
``gdcm``); a file that cannot be decoded, has no pixel data or passes the pixel
limit is one DataError that names it and says why, so it becomes a bad row.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from attnscope.data.window import linear_window, stretch, window_values
from attnscope.errors import DataError

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom")
PILLOW_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
PREAMBLE_END = 132  # 128 bytes of preamble, then the magic b"DICM"


def looks_like_dicom(path: Path | str, data: BinaryIO | None = None) -> bool:
    """Whether a file is DICOM: by its extension, or by the ``DICM`` after its 128-byte preamble (the way
    PACS exports without extensions are recognised). A file named as a Pillow image is not opened to look:
    every decode would read it twice."""
    suffix = Path(str(path)).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if data is None and suffix in PILLOW_SUFFIXES:
        return False
    try:
        if data is not None:
            start = data.tell()
            head = data.read(PREAMBLE_END)
            data.seek(start)
        else:
            with open(path, "rb") as handle:
                head = handle.read(PREAMBLE_END)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _pydicom() -> Any:
    try:
        import pydicom
        import pydicom.errors
        import pydicom.pixels
    except ImportError as error:
        raise DataError("DICOM files need pydicom: pip install 'attnscope[dicom]'") from error
    return pydicom


def read_dicom_header(source: Path | str | BinaryIO) -> Any:
    """A DICOM file's header without its pixels (sizes, the patient's id); a DataError naming it when unreadable."""
    pydicom = _pydicom()
    name = str(getattr(source, "name", source))
    try:
        return pydicom.dcmread(source, stop_before_pixels=True, force=Path(name).suffix.lower() in DICOM_SUFFIXES)
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{name}: not a readable DICOM file ({error})") from error


def read_dicom(
    source: Path | str | BinaryIO, name: str, window: str, pixel_limit: int, byte_limit: int | None = None
) -> Image.Image:
    """The 8-bit image (mode L or RGB) of a DICOM file; every failure a DataError naming ``name``."""
    pydicom = _pydicom()
    try:
        dataset = pydicom.dcmread(source, force=Path(name).suffix.lower() in DICOM_SUFFIXES)
    except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{name}: not a readable DICOM file ({error})") from error
    frame = _frame(dataset, name, pixel_limit, byte_limit)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        frame = pydicom.pixels.apply_color_lut(frame, dataset)
    if frame.ndim == 3:  # RGB; pydicom has converted YBR to RGB already
        eight = frame if frame.dtype == np.uint8 else stretch(frame, *_bits_range(dataset, frame))
        return Image.fromarray(np.ascontiguousarray(eight), mode="RGB")
    grey = _voi(pydicom.pixels.apply_modality_lut(frame, dataset), dataset, window, name)
    if photometric == "MONOCHROME1":
        np.subtract(255, grey, out=grey)
    return Image.fromarray(grey, mode="L")


def _frame(dataset: Any, name: str, pixel_limit: int, byte_limit: int | None) -> np.ndarray:
    """The pixel values of the middle frame, once the header shows them within the limits."""
    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = dataset.get("Modality", "") or dataset.get("SOPClassUID", "")
        raise DataError(f"{name}: a DICOM file without pixel data ({kind or 'no image'}); only images can be used")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows * columns > pixel_limit:
        raise DataError(f"{name}: {columns} x {rows} pixels is above the limit of {pixel_limit:,}")
    samples, bits = int(dataset.get("SamplesPerPixel", 1) or 1), int(dataset.get("BitsAllocated", 8) or 8)
    size = rows * columns * samples * max(bits // 8, 1)
    if byte_limit is not None and size > byte_limit:
        raise DataError(
            f"{name}: {columns} x {rows} pixels decode to {size / 1e6:,.0f} MB, above this server's limit of "
            f"{byte_limit / 1e6:g} MB (--max-decoded-mb)"
        )
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    try:
        return _pydicom().pixels.pixel_array(dataset, index=frames // 2 if frames > 1 else None)
    except Exception as error:  # pydicom's decoders raise what their libraries raise: each is this file's fault
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        named = f"{syntax.name} ({syntax})" if syntax is not None else "an unknown transfer syntax"
        raise DataError(
            f"{name}: its pixel data ({named}) cannot be decoded here ({type(error).__name__}: {error}); "
            "a compressed syntax may need pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
        ) from error


def _bits_range(dataset: Any, values: np.ndarray) -> tuple[float, float]:
    bits = int(dataset.get("BitsStored", 0) or 0) or int(values.max()).bit_length()
    return 0.0, float(2**bits - 1)


def _voi(values: np.ndarray, dataset: Any, window: str, name: str) -> np.ndarray:
    """The VOI transform ``window`` chooses, of modality values, to uint8."""
    has_lut, has_window = "VOILUTSequence" in dataset, "WindowCenter" in dataset and "WindowWidth" in dataset
    if window == "auto":
        window = "lut" if has_lut else "window" if has_window else "percentile"
    if window == "lut":
        if not has_lut:
            raise DataError(f"{name}: data.window=lut, but the file has no VOI LUT; use auto, window or percentile")
        return _lut(values, dataset)
    if window == "window":
        if not has_window:
            raise DataError(f"{name}: data.window=window, but the file has no Window Center and Width; use auto")
        center, width = (_first(dataset.WindowCenter), _first(dataset.WindowWidth))
        return linear_window(values, center, width, str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR"))
    if window == "range":
        return _stored_range(values, dataset)
    return window_values(values, "percentile" if window == "divide" else window)


def _lut(values: np.ndarray, dataset: Any) -> np.ndarray:
    """The file's first VOI LUT (PS3.3 C.11.2.1.1: values below the first mapped one take the first entry, above
    the last the last), its output scaled from the LUT's bit depth to 8 bits."""
    item = dataset.VOILUTSequence[0]
    entries, first, bits = (int(value) for value in item.LUTDescriptor)
    raw = item.LUTData
    table = np.frombuffer(raw, "<u2" if bits > 8 else "u1") if isinstance(raw, bytes) else np.asarray(raw)
    table = table[: entries or 65536]  # 0 entries means 65,536
    index = np.rint(values).astype(np.int32) if values.dtype.kind == "f" else values.astype(np.int32)
    index -= first
    np.clip(index, 0, len(table) - 1, out=index)
    return stretch(table[index], 0.0, float(2**bits - 1))


def _stored_range(values: np.ndarray, dataset: Any) -> np.ndarray:
    """The values ``BitsStored`` can hold, through the Modality LUT, to 0-255."""
    bits = int(dataset.get("BitsStored", 16) or 16)
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ends = _pydicom().pixels.apply_modality_lut(np.array([low, high], dtype=np.int64), dataset)
    return stretch(values, float(np.min(ends)), float(np.max(ends)))


def _first(value: Any) -> float:
    """The first of a multi-valued element (several windows), or the value itself."""
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)
