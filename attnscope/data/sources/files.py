"""File-backed sources: a headered CSV with an image folder, and a folder of class folders."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnscope.data.manifest import SPLITS, BadRow, Manifest
from attnscope.errors import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def resolve_image(root: Path, name: str, extensions: Sequence[str]) -> tuple[Path | None, str | None]:
    """The file ``name`` names under ``root`` (adding an extension if it has none), or why not.

    A name that leads outside ``root`` (``../../etc/passwd``, an absolute path, a
    symbolic link pointing out) is refused before its existence is looked at.
    """
    root = root.resolve()
    candidate = (root / name).resolve()
    if not candidate.is_relative_to(root):
        return None, f"'{name}' resolves outside the image root {root}"
    if candidate.suffix.lower() in extensions and candidate.is_file():
        return candidate, None
    for extension in extensions:
        for variant in (extension, extension.upper()):
            with_extension = candidate.with_name(candidate.name + variant)
            if with_extension.is_file():
                return with_extension, None
    tried = f" (also tried {', '.join(extensions)})" if candidate.suffix.lower() not in extensions else ""
    return None, f"image file not found: {candidate}{tried}"


def _parse_label(value: str, classes: list[str] | None) -> tuple[int | None, str | None]:
    text = value.strip()
    if classes is not None and text in classes:
        return classes.index(text), None
    try:
        number = float(text)
    except ValueError:
        known = f"; known classes: {classes}" if classes else "; pass classes=[...] to use class names"
        return None, f"label {value!r} is not a class index{known}"
    if not number.is_integer():
        return None, f"label {value!r} is not an integer"
    label = int(number)
    if label < 0 or (classes is not None and label >= len(classes)):
        upper = f"below {len(classes)}" if classes is not None else "non-negative"
        return None, f"label {label} is out of range (must be {upper})"
    return label, None


def _parse_flags(row: dict[str, str], columns: Sequence[str]) -> tuple[list[float] | None, str | None]:
    flags = []
    for column in columns:
        value = row[column].strip()
        if value not in ("0", "1", "0.0", "1.0"):
            return None, f"column {column!r} holds {value!r}; multi-label columns hold 0 or 1"
        flags.append(float(value))
    return flags, None


def from_csv(
    csv_path: str | Path,
    image_root: str | Path | None = None,
    *,
    id_column: str = "image_id",
    label_column: str | Sequence[str] = "target",
    mask_column: str | None = None,
    mask_root: str | Path | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    classes: Sequence[str] | None = None,
    multilabel_separator: str | None = None,
    none_label: str | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> Manifest:
    """A manifest from a headered CSV (the Kaggle/ISIC layout: ``image_id,target``).

    ``image_root`` defaults to the CSV's folder; an id without an extension finds
    its file by trying ``extensions``. Labels: one column of class indices (or of
    class names when ``classes`` is given); several 0/1 columns for multi-label
    (a list for ``label_column``); or one column of names joined by
    ``multilabel_separator`` (``none_label``, e.g. "No Finding", means none).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file")
    root = Path(image_root) if image_root is not None else csv_path.parent
    if not root.is_dir():
        raise DataError(f"image root {root} is not a folder; pass image_root= (--image-root) pointing at the images")
    masks_root = Path(mask_root) if mask_root is not None else root
    label_columns = [label_column] if isinstance(label_column, str) else list(label_column)
    multilabel = len(label_columns) > 1 or multilabel_separator is not None
    class_names = list(classes) if classes is not None else (label_columns if len(label_columns) > 1 else None)
    extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)

    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise DataError(f"{csv_path}: empty file, expected a header row such as 'image_id,target'")
        wanted = {
            "id_column": id_column,
            "mask_column": mask_column,
            "group_column": group_column,
            "split_column": split_column,
        }
        wanted |= {
            f"label_column[{i}]" if len(label_columns) > 1 else "label_column": c for i, c in enumerate(label_columns)
        }
        missing = [
            f"{option}={column!r}"
            for option, column in wanted.items()
            if column is not None and column not in reader.fieldnames
        ]
        if missing:
            raise DataError(f"{csv_path}: no column for {', '.join(missing)}; the columns are {reader.fieldnames}")
        records = [(reader.line_num, row) for row in reader]

    source = str(csv_path)
    ids, paths, labels, mask_paths, groups, splits, rows, rejected = [], [], [], [], [], [], [], []
    seen: dict[str, int] = {}
    tokens_seen: set[str] = set()
    for line, row in records:
        image_id = (row[id_column] or "").strip()
        problem = None
        if not image_id:
            problem = f"empty {id_column!r}"
        elif image_id in seen:
            problem = f"duplicate id, first seen on row {seen[image_id]}"
        if problem is None:
            seen[image_id] = line
            path, problem = resolve_image(root, image_id, extensions)
        label = None
        if problem is None:
            if multilabel_separator is not None:
                tokens = [t.strip() for t in row[label_columns[0]].split(multilabel_separator) if t.strip()]
                tokens = [t for t in tokens if t != none_label]
                unknown = [t for t in tokens if class_names is not None and t not in class_names]
                if unknown:
                    problem = f"unknown label(s) {unknown}; known classes: {class_names}"
                label = tokens
                tokens_seen.update(tokens)
            elif multilabel:
                label, problem = _parse_flags(row, label_columns)
            else:
                label, problem = _parse_label(row[label_columns[0]], class_names)
        mask_path = None
        if problem is None and mask_column is not None:
            mask_path, problem = resolve_image(masks_root, (row[mask_column] or "").strip(), extensions)
            problem = problem and f"mask: {problem}"
        split = (row[split_column] or "").strip().lower() if split_column else None
        if problem is None and split_column and split not in SPLITS:
            problem = f"split {row[split_column]!r} is not one of {list(SPLITS)}"
        if problem is not None:
            rejected.append(BadRow(source, line, image_id or "?", problem))
            continue
        ids.append(image_id)
        paths.append(str(path))
        labels.append(label)
        mask_paths.append(str(mask_path) if mask_path else None)
        groups.append((row[group_column] or "").strip() if group_column else None)
        splits.append(split)
        rows.append(line)

    if multilabel_separator is not None:
        class_names = class_names or sorted(tokens_seen)
        label_array = np.array(
            [[float(c in set(tokens)) for c in class_names] for tokens in labels], dtype=np.float32
        ).reshape(len(labels), len(class_names))
    elif multilabel:
        label_array = np.array(labels, dtype=np.float32).reshape(len(labels), len(label_columns))
    else:
        label_array = np.array(labels, dtype=np.int64)
        if class_names is None:
            class_names = [str(i) for i in range(int(label_array.max()) + 1 if len(label_array) else 0)]
    return Manifest(
        source,
        ids,
        label_array,
        list(class_names),
        paths=paths,
        mask_paths=mask_paths if mask_column else None,
        groups=groups if group_column else None,
        splits=splits if split_column else None,
        rows=rows,
        rejected=rejected,
    )


def from_folder(root: str | Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Manifest:
    """A manifest from ``root/<class name>/**/<image>``; class names sorted give the indices."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: expected one sub-folder per class (e.g. {root}/benign, {root}/malignant), found none")
    extensions = tuple(e.lower() for e in extensions)
    ids, paths, labels, ignored = [], [], [], []
    for index, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in extensions]
        ignored += [p for p in files if p.suffix.lower() not in extensions]
        if not images:
            log.warning("%s: class folder %r holds no images", root, class_dir.name)
        for path in images:
            ids.append(str(path.relative_to(root)))
            paths.append(str(path))
            labels.append(index)
    if ignored:
        log.warning(
            "%s: %d file(s) without an image extension left out: %s",
            root,
            len(ignored),
            ", ".join(str(p.relative_to(root)) for p in ignored[:10]),
        )
    return Manifest(str(root), ids, np.array(labels, dtype=np.int64), [d.name for d in class_dirs], paths=paths)
