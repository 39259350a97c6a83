"""The manifest: the one table every source produces, and the rows it could not take.

A manifest holds, per row, an image (a file path, or an index into an in-memory
uint8 array), a label (an int, or a multi-hot vector), and optionally a mask, a
group (patient id) and a split. Rows a source or the decoder cannot use are kept
as :class:`BadRow` records, so that nothing is silently dropped: by default they
stop the run with one message listing every one of them; with ``skip_bad`` they
are left out and written to ``bad_rows.csv``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from attnscope.errors import DataError
from attnscope.fileio import atomic_write, csv_text, file_problem

MAX_LISTED_BAD_ROWS = 50


def multilabel_text(classes: Sequence[str], row: np.ndarray) -> str:
    """The positive labels of a multi-hot row, ``a|b``; a label left out (NaN: uncertain, ignored) as ``c?``."""
    shown = [
        f"{name}?" if np.isnan(value) else name for name, value in zip(classes, row, strict=True) if not value <= 0.5
    ]
    return "|".join(shown)


@dataclass(frozen=True)
class BadRow:
    """One row that cannot be used: where it came from and why."""

    source: str
    row: int | None
    id: str
    reason: str

    def describe(self) -> str:
        where = f"{self.source} row {self.row}" if self.row is not None else self.source
        return f"{where} ({self.id}): {self.reason}"


class BadRowsError(DataError):
    """Rows that cannot be used, listed one per line."""

    def __init__(self, rows: Sequence[BadRow], hint: str = "fix or remove them, or leave them out with --skip-bad"):
        self.rows = list(rows)
        listed = "\n  ".join(row.describe() for row in self.rows[:MAX_LISTED_BAD_ROWS])
        more = (
            f"\n  ... and {len(self.rows) - MAX_LISTED_BAD_ROWS} more" if len(self.rows) > MAX_LISTED_BAD_ROWS else ""
        )
        super().__init__(f"{len(self.rows)} bad row(s); {hint}:\n  {listed}{more}")


@dataclass
class Manifest:
    """Rows of images with labels; ``paths`` or ``images`` says where the pixels are.

    ``labels``: (N,) int64 class indices, or (N, K) float32 multi-hot vectors.
    ``paths``: image files (file-backed), or ``images``: uint8 (N, H, W[, C]) (array-backed).
    ``mask_paths`` / ``masks``: the same for ground-truth masks (optional).
    ``boxes``: per file-backed row, its boxes ``(x, y, width, height)`` in the stored image's pixels, whose
    union is its mask (an empty tuple: an empty mask); instead of ``mask_paths``.
    ``ids``: what a user calls each row (image id, file name, index), for messages.
    ``rows``: the row of the source file each entry came from, for messages.
    ``rejected``: rows left out so far, with their reasons.
    """

    source: str
    ids: list[str]
    labels: np.ndarray
    classes: list[str]
    paths: list[str] | None = None
    images: np.ndarray | None = None
    mask_paths: list[str | None] | None = None
    masks: np.ndarray | None = None
    boxes: list[tuple[tuple[float, float, float, float], ...]] | None = None
    groups: list[str | None] | None = None
    splits: list[str | None] | None = None
    rows: list[int] | None = None
    rejected: list[BadRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name in ("labels", "paths", "images", "mask_paths", "masks", "boxes", "groups", "splits", "rows"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise DataError(f"{self.source}: manifest column {name!r} has {len(value)} entries for {n} rows")
        if (self.paths is None) == (self.images is None):
            raise DataError(f"{self.source}: a manifest needs image paths or an image array, exactly one")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_masks(self) -> bool:
        return self.mask_paths is not None or self.masks is not None or self.boxes is not None

    def row_of(self, index: int) -> int | None:
        return None if self.rows is None else self.rows[index]

    def bad_row(self, index: int, reason: str) -> BadRow:
        """A BadRow for entry ``index`` of this manifest."""
        return BadRow(self.source, self.row_of(index), self.ids[index], reason)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Manifest:
        """The manifest restricted to ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)

        def pick(values):
            if values is None:
                return None
            if isinstance(values, np.ndarray):
                return values[idx]
            return [values[i] for i in idx]

        return replace(
            self,
            ids=pick(self.ids),
            labels=pick(self.labels),
            paths=pick(self.paths),
            images=pick(self.images),
            mask_paths=pick(self.mask_paths),
            masks=pick(self.masks),
            boxes=pick(self.boxes),
            groups=pick(self.groups),
            splits=pick(self.splits),
            rows=pick(self.rows),
            rejected=list(self.rejected),
        )

    def without(self, bad: dict[int, str]) -> Manifest:
        """The manifest without the entries in ``bad`` (index -> reason), which join ``rejected``."""
        keep = [i for i in range(len(self)) if i not in bad]
        kept = self.subset(keep)
        kept.rejected = list(self.rejected) + [self.bad_row(i, reason) for i, reason in sorted(bad.items())]
        return kept

    def without_unreadable(self) -> Manifest:
        """The manifest without rows whose image (or mask) is missing or not a regular file (a FIFO, a
        device, a folder), which join ``rejected`` with the reason: such a file is never opened, since
        reading a FIFO or a device can block forever or never end."""
        if self.paths is None:
            return self
        bad: dict[int, str] = {}
        for index, path in enumerate(self.paths):
            mask = self.mask_paths[index] if self.mask_paths is not None else None
            for what, candidate in (("image", path), ("mask", mask)):
                problem = None if candidate is None else file_problem(candidate)
                if problem is not None:
                    bad.setdefault(index, f"{what} {candidate}: {problem}")
        return self.without(bad) if bad else self

    def class_counts(self) -> np.ndarray:
        """Rows per class (positives per class when multi-label)."""
        if self.multilabel:  # positives; a label left out (NaN) counts as none
            return np.nansum(self.labels, axis=0).astype(np.int64)
        return np.bincount(self.labels, minlength=self.num_classes)

    def fingerprint(self) -> str:
        """A hash of what the images are: paths, sizes and mtimes of files, or the array's bytes."""
        digest = hashlib.sha256()
        if self.paths is not None:
            for path in self.paths:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        elif self.images is not None:
            digest.update(str(self.images.shape).encode())
            digest.update(np.ascontiguousarray(self.images).data)
        if self.mask_paths is not None:
            for mask_path in self.mask_paths:
                mask_stat = os.stat(mask_path) if mask_path else None
                size, mtime = (mask_stat.st_size, mask_stat.st_mtime_ns) if mask_stat else (None, None)
                digest.update(f"{mask_path}\0{size}\0{mtime}\n".encode())
        elif self.masks is not None:
            digest.update(np.ascontiguousarray(self.masks).data)
        if self.boxes is not None:
            digest.update(repr(self.boxes).encode())
        return digest.hexdigest()

    def label_text(self, index: int) -> str:
        """The label of entry ``index`` as the class names (joined by '|' when multi-label)."""
        if self.multilabel:
            return multilabel_text(self.classes, self.labels[index])
        return self.classes[int(self.labels[index])]

    def write_csv(self, path: str | Path) -> Path:
        """Write the rows (id, path, label, class, group, split) as a CSV, atomically."""
        rows = []
        for i in range(len(self)):
            label = (
                "|".join("?" if np.isnan(v) else str(int(v)) for v in self.labels[i])
                if self.multilabel
                else int(self.labels[i])
            )
            path_cell = self.paths[i] if self.paths else f"#{i}"
            group = self.groups[i] if self.groups else ""
            rows.append(
                [self.ids[i], path_cell, label, self.label_text(i), group, self.splits[i] if self.splits else ""]
            )
        return atomic_write(path, csv_text(["id", "path", "label", "class", "group", "split"], rows))


def write_bad_rows(rows: Sequence[BadRow], path: str | Path) -> Path:
    """Write bad rows (source, row, id, reason) as a CSV, atomically."""
    cells = [[row.source, "" if row.row is None else row.row, row.id, row.reason] for row in rows]
    return atomic_write(path, csv_text(["source", "row", "id", "reason"], cells))


def check_bad_rows(manifest: Manifest, skip_bad: bool) -> Manifest:
    """Stop on rejected rows unless ``skip_bad``; an empty manifest always stops."""
    if manifest.rejected and not skip_bad:
        raise BadRowsError(manifest.rejected)
    if len(manifest) == 0:
        detail = f"; all {len(manifest.rejected)} rows were bad" if manifest.rejected else ""
        raise DataError(f"{manifest.source}: no usable rows{detail}")
    return manifest
