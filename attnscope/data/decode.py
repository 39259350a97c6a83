"""Decoding one image file to a square uint8 array of the cache size.

EXIF orientation is applied; grayscale, RGBA, CMYK, palette and 16-bit images
become the requested mode (RGB or L); JPEGs are decoded at a reduced scale when
the target is much smaller (``Image.draft``); then the shorter side is resized to
the target and the centre cropped. Every failure is a DataError naming the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageMode, ImageOps, UnidentifiedImageError

from attnscope.data.dicom import looks_like_dicom, read_dicom, read_dicom_header
from attnscope.data.window import WINDOWS, WindowError, window_values
from attnscope.errors import DataError

log = logging.getLogger(__name__)

MODES = ("RGB", "L")
DEFAULT_PIXEL_LIMIT = 100_000_000  # 10,000 x 10,000; whole-slide images need a higher limit, set on purpose
# the centre crop of a longer side more than 20 times the shorter keeps under 5% of the image, and
# resizing a 1 x 1,000,000 strip to the cache size would need 224 x 224,000,000 pixels
MAX_ASPECT_RATIO = 20
_PILLOW_LIMIT = threading.Lock()
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ORIENTATION_TAG = 0x0112  # EXIF orientation: 5-8 turn the image a quarter


def _to_mode(image: Image.Image, mode: str, window: str) -> Image.Image:
    """Convert any Pillow mode to RGB or L; 16-bit and float grey values are windowed to 8 bits
    (:mod:`attnscope.data.window`), alpha is composited on black."""
    if image.mode in (*SIXTEEN_BIT_MODES, "F"):
        image = Image.fromarray(window_values(np.asarray(image), window), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image if image.mode == mode else image.convert(mode)


@contextlib.contextmanager
def _pillow_pixel_limit(pixel_limit: int) -> Iterator[None]:
    """Let Pillow open what ``pixel_limit`` allows: our limit, checked next, is the one that applies.

    Pillow warns above its own MAX_IMAGE_PIXELS (89.5 M) and refuses above twice
    that; the documented limit of attnscope is ``pixel_limit``, so Pillow's is raised
    to it for the opening (under a lock: it is a module-wide setting).
    """
    with _PILLOW_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max(before or 0, pixel_limit)
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _check_geometry(path: Path | str, size: tuple[int, int], pixel_limit: int) -> None:
    """Refuse an image with too many pixels (a decompression bomb) or an absurd shape, before decoding it."""
    width, height = size
    if width < 1 or height < 1:
        raise DataError(f"{path}: an image of {width} x {height} pixels has nothing to decode")
    if width * height > pixel_limit:
        raise DataError(
            f"{path}: {width} x {height} pixels is above the limit of {pixel_limit:,} (a decompression bomb?); "
            "raise data.pixel_limit if the file is trusted"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise DataError(
            f"{path}: {width} x {height} pixels is a strip, not an image (sides more than {MAX_ASPECT_RATIO}:1); "
            "crop it to the region of interest"
        )


def resize_and_crop(image: Image.Image, size: int, resample: int) -> Image.Image:
    """Resize the shorter side to ``size`` and crop the centre ``size`` x ``size``."""
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new_size != image.size:
        reducing_gap = 2.0 if resample != Image.Resampling.NEAREST else None
        image = image.resize(new_size, resample=resample, reducing_gap=reducing_gap)
    left = (new_size[0] - size) // 2
    top = (new_size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def decoded_bytes(image: Image.Image) -> int:
    """The bytes ``image``'s pixels take once decoded, in its own mode (16-bit and float pixels take 2 and 4
    per band), known from its header alone."""
    described = ImageMode.getmode(image.mode)
    return image.size[0] * image.size[1] * len(described.bands) * np.dtype(described.typestr).itemsize


def _check_bytes(path: Path | str, image: Image.Image, byte_limit: int | None) -> None:
    """Refuse an image whose decoded pixels pass ``byte_limit`` (the pixel limit alone lets a small 16-bit or
    float file decode to gigabytes through the conversions)."""
    if byte_limit is not None and (size := decoded_bytes(image)) > byte_limit:
        raise DataError(
            f"{path}: {image.size[0]} x {image.size[1]} pixels of mode {image.mode} decode to {size / 1e6:,.0f} MB, "
            f"above this server's limit of {byte_limit / 1e6:g} MB (--max-decoded-mb)"
        )


@dataclass(frozen=True)
class _Target:
    """What one decode makes: ``size`` x ``size`` pixels of ``mode``, within the limits, grey values windowed."""

    size: int
    mode: str
    pixel_limit: int
    mask: bool = False
    window: str = "auto"
    byte_limit: int | None = None


def _open(path: Path | str, data: BinaryIO | None, target: _Target) -> Image.Image:
    """The file's image: a DICOM file through pydicom (already windowed to 8 bits), any other through Pillow
    (opened lazily: nothing is decoded yet)."""
    source = data if data is not None else path
    if looks_like_dicom(path, data):
        return read_dicom(source, str(path), target.window, target.pixel_limit, target.byte_limit)
    with _pillow_pixel_limit(target.pixel_limit):
        return Image.open(source)


def _decode(path: Path | str, data: BinaryIO | None, target: _Target) -> np.ndarray:
    """The decoding of :func:`decode_image`, every failure a DataError naming the file (``path``; the
    bytes are read from ``data`` when given, ``path`` then only names them)."""
    size, mode = target.size, ("L" if target.mask else target.mode)
    try:
        with _open(path, data, target) as image:
            _check_geometry(path, image.size, target.pixel_limit)
            _check_bytes(path, image, target.byte_limit)
            if image.format == "JPEG" and not target.mask:
                shorter = min(image.size)
                if shorter > 2 * size:
                    ratio = size / shorter
                    image.draft(mode, (math.ceil(image.size[0] * ratio), math.ceil(image.size[1] * ratio)))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # a copy otherwise, even of an image that needs none
            converted = _to_mode(image, mode, target.window)
            resample = Image.Resampling.NEAREST if target.mask else Image.Resampling.BILINEAR
            return np.asarray(resize_and_crop(converted, size, resample), dtype=np.uint8)
    except DataError:
        raise
    except WindowError as error:
        raise DataError(f"{path}: {error}; choose another data.window, e.g. auto or percentile") from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{path}: too many pixels to decode safely ({error})") from error
    except FileNotFoundError as error:
        raise DataError(f"{path}: file not found") from error
    except UnidentifiedImageError as error:
        raise DataError(f"{path}: not an image Pillow can read (corrupt, or not an image)") from error
    except MemoryError as error:
        raise DataError(f"{path}: not enough memory to decode this image") from error
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"{path}: truncated or corrupt image ({error})") from error


def stored_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as :func:`decode_image` sees it before resizing (EXIF rotation applied),
    read from its header alone; a DataError naming the file when it has none."""
    try:
        if looks_like_dicom(path):
            dataset = read_dicom_header(path)
            return int(dataset.Columns), int(dataset.Rows)
        with _pillow_pixel_limit(DEFAULT_PIXEL_LIMIT), Image.open(path) as image:
            turned = image.getexif().get(ORIENTATION_TAG, 1) in (5, 6, 7, 8)
            return (image.size[1], image.size[0]) if turned else image.size
    except (OSError, ValueError, AttributeError, UnidentifiedImageError) as error:
        raise DataError(f"{path}: the image's size cannot be read ({error})") from error


def decode_image(
    path: str | Path,
    size: int,
    mode: str = "RGB",
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    mask: bool = False,
    window: str = "auto",
) -> np.ndarray:
    """Decode ``path`` to uint8 (size, size, 3) for RGB or (size, size) for L; grey values of more than 8 bits
    (16-bit PNG and TIFF, float TIFF, DICOM) are windowed by ``window`` (:mod:`attnscope.data.window`).

    ``mask=True`` decodes a segmentation mask: mode L, nearest-neighbour resizing,
    values above 127 become 1 and the rest 0.
    """
    array = _decode_logged(Path(path), None, _Target(size, mode, pixel_limit, mask, window))
    return (array > 127).astype(np.uint8) if mask else array


def decode_image_bytes(
    data: bytes,
    name: str,
    size: int,
    mode: str = "RGB",
    pixel_limit: int = DEFAULT_PIXEL_LIMIT,
    byte_limit: int | None = None,
    window: str = "auto",
) -> np.ndarray:
    """:func:`decode_image` of an image held in memory (an upload), with the same guards and, where given, a
    limit on the bytes its pixels decode to; errors name ``name``."""
    return _decode_logged(name, io.BytesIO(data), _Target(size, mode, pixel_limit, False, window, byte_limit))


def _decode_logged(path: Path | str, data: BinaryIO | None, target: _Target) -> np.ndarray:
    if target.mode not in MODES:
        raise DataError(f"mode={target.mode!r} is not supported; use one of {list(MODES)}")
    if target.window not in WINDOWS:
        raise DataError(f"window={target.window!r} is not supported; use one of {', '.join(WINDOWS)}")
    # Pillow warns of damage it reads past (corrupt EXIF, short TIFF tags): logged, not printed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        array = _decode(path, data, target)
    for warning in caught:
        log.debug("%s: %s", path, warning.message)
    return array
