"""Bounding boxes as ground-truth masks: NIH ChestX-ray14's ``BBox_List_2017.csv`` and files like it.

A box file lists ``image id, finding, x, y, width, height`` per line (pixels of the
image as stored, x to the right and y down; ChestX-ray14's header reads
``Image Index,Finding Label,Bbox [x,y,w,h]``). An image's mask is the union of its
boxes, drawn on the image after the same resize and centre crop as its pixels; an
image without a box has an empty mask, which the localisation scores leave out.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from attnscope.errors import DataError

Box = tuple[float, float, float, float]  # x, y, width, height in the stored image's pixels


def _parse_box(cells: list[str], path: Path, line: int) -> tuple[str, Box]:
    """(image id, box) of one line of a box file; a DataError naming the line when it is not one."""
    if len(cells) < 6 or not cells[0].strip():
        raise DataError(
            f"{path} line {line}: expected 'image id, finding, x, y, width, height', got {len(cells)} cell(s)"
        )
    try:
        x, y, width, height = (float(cell) for cell in cells[2:6])
    except ValueError as error:
        raise DataError(f"{path} line {line}: the box {cells[2:6]} is not four numbers") from error
    if not all(map(math.isfinite, (x, y, width, height))) or width <= 0 or height <= 0:
        raise DataError(
            f"{path} line {line}: the box {cells[2:6]} needs finite numbers and a positive width and height"
        )
    return cells[0].strip(), (x, y, width, height)


def read_boxes_csv(path: str | Path) -> dict[str, list[Box]]:
    """Image id -> its boxes, from a headered box file; every malformed line a DataError naming it."""
    path = Path(path)
    boxes: dict[str, list[Box]] = defaultdict(list)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            next(reader, None)  # the header: its cells are split oddly ("Bbox [x", "y", "w", "h]")
            for cells in reader:
                if any(cell.strip() for cell in cells):
                    image_id, box = _parse_box(cells, path, reader.line_num)
                    boxes[image_id].append(box)
    except FileNotFoundError as error:
        raise DataError(f"{path}: no such box file (boxes_csv)") from error
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not readable as a CSV of boxes ({error})") from error
    return dict(boxes)


def box_mask(boxes: tuple[Box, ...] | list[Box], image_size: tuple[int, int], size: int) -> np.ndarray:
    """The (size, size) 0/1 uint8 union of ``boxes`` on an image of ``image_size`` (width, height) once its
    shorter side is resized to ``size`` and the centre cropped (:func:`attnscope.data.decode.resize_and_crop`)."""
    width, height = image_size
    scale = size / min(width, height)
    resized = (max(size, round(width * scale)), max(size, round(height * scale)))
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    mask = np.zeros((size, size), np.uint8)
    for x, y, box_width, box_height in boxes:
        x0 = x * resized[0] / width - left
        y0 = y * resized[1] / height - top
        x1 = (x + box_width) * resized[0] / width - left
        y1 = (y + box_height) * resized[1] / height - top
        columns = slice(_inside(math.floor(x0), size), _inside(math.ceil(x1), size))
        rows = slice(_inside(math.floor(y0), size), _inside(math.ceil(y1), size))
        mask[rows, columns] = 1  # a box cropped away is an empty slice: the ends are clamped, never negative
    return mask


def _inside(position: int, size: int) -> int:
    return min(max(position, 0), size)
