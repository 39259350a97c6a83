"""File-backed sources: a headered CSV with an image folder, and a folder of class folders."""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from attnscope.data.dicom import DICOM_SUFFIXES, PILLOW_SUFFIXES, looks_like_dicom
from attnscope.data.manifest import BadRow, Manifest
from attnscope.data.sources.extras import apply_split_lists, attach_boxes, dicom_patient_groups
from attnscope.errors import ConfigError, DataError
from attnscope.names import SPLITS

log = logging.getLogger(__name__)

# class indices without a list of class names: a sane bound, so that one mistyped cell
# cannot turn a task into millions of classes
MAX_CLASSES = 10_000
IMAGE_EXTENSIONS = (*PILLOW_SUFFIXES, *DICOM_SUFFIXES)


def is_image_file(path: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether a regular file is an image by its extension, or a DICOM file without one (a PACS export),
    known by the ``DICM`` after its preamble."""
    if not path.is_file():  # never opened otherwise: a FIFO would block
        return False
    suffix = path.suffix.lower()
    return suffix in extensions or (suffix == "" and looks_like_dicom(path))


CHESTXRAY14_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
# the CSV layouts of public chest X-ray sets, as csv source options (layout=NAME; options beside it win)
LAYOUTS: dict[str, dict[str, Any]] = {
    # NIH ChestX-ray14's Data_Entry_2017.csv: findings joined by "|", "No Finding" for none
    "chestxray14": {
        "id_column": "Image Index",
        "label_column": "Finding Labels",
        "multilabel_separator": "|",
        "none_label": "No Finding",
        "classes": list(CHESTXRAY14_FINDINGS),
        "group_column": "Patient ID",
    },
    # CheXpert's train.csv / valid.csv (and MIMIC-CXR's labels joined to paths): one column per label, 1 / 0 /
    # -1 (uncertain: ignored) / empty (not mentioned: negative), the patient inside the path
    "chexpert": {
        "id_column": "Path",
        "label_column": list(CHEXPERT_LABELS),
        "uncertain": "ignore",
        "blank": "zeros",
        "group_pattern": r"(patient\d+)",
    },
}


class ImageLookup(NamedTuple):
    """What :func:`resolve_image` found: the file, or why not (``outside``: the name leads out of the root)."""

    path: Path | None
    problem: str | None
    outside: bool = False


def resolve_image(root: Path, name: str, extensions: Sequence[str], follow_symlinks: bool = False) -> ImageLookup:
    """The file ``name`` names under ``root`` (adding an extension if it has none), or why not.

    A name that leads outside ``root`` (``../../etc/passwd``, an absolute path, a
    symbolic link pointing out, also one found by adding an extension) is refused
    before its existence is looked at; ``follow_symlinks`` allows links that point
    out (a link farm of a data set kept elsewhere), never ``..`` or absolute names.
    """
    root = root.resolve()
    lexical = Path(os.path.normpath(root / name))
    if not lexical.is_relative_to(root):
        return ImageLookup(None, f"'{name}' resolves outside the image root {root}", outside=True)
    known = lexical.suffix.lower() in extensions or (lexical.suffix == "" and is_image_file(lexical, extensions))
    candidates = [lexical] if known else []
    candidates += [
        lexical.with_name(lexical.name + variant)
        for extension in extensions
        for variant in (extension, extension.upper())
    ]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        if not follow_symlinks and not candidate.resolve().is_relative_to(root):
            reason = (
                f"'{name}' is a link to {candidate.resolve()}, outside the image root {root}; "
                "copy the file in, or set follow_symlinks=true for a link farm you trust"
            )
            return ImageLookup(None, reason, outside=True)
        return ImageLookup(candidate, None)
    tried = f" (also tried {', '.join(extensions)})" if lexical.suffix.lower() not in extensions else ""
    return ImageLookup(None, f"image file not found: {lexical}{tried}")


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
    if "e" in text.lower():  # 2e6 would silently make two million classes
        return None, f"label {value!r} is in exponent notation; write a class index as a plain integer"
    label = int(number)
    if label < 0 or label >= (len(classes) if classes is not None else MAX_CLASSES):
        upper = f"below {len(classes)}" if classes is not None else f"non-negative and below {MAX_CLASSES}"
        more = "" if classes is not None else "; name the classes with classes=[...] for more"
        return None, f"label {label} is out of range (must be {upper}{more})"
    return label, None


POLICY_VALUES = {"ignore": math.nan, "ones": 1.0, "zeros": 0.0}


def _parse_flags(
    row: dict[str, str], columns: Sequence[str], uncertain: str | None, blank: str | None
) -> tuple[list[float] | None, str | None]:
    """0/1 per column; -1 (uncertain) and an empty cell follow ``uncertain`` and ``blank`` (ignore: NaN, left
    out of the loss and of that label's metrics), and are bad rows when no policy is set."""
    flags = []
    for column in columns:
        value = row[column].strip()
        if value in ("0", "1", "0.0", "1.0"):
            flags.append(float(value))
        elif value in ("-1", "-1.0") and uncertain is not None:
            flags.append(POLICY_VALUES[uncertain])
        elif value == "" and blank is not None:
            flags.append(POLICY_VALUES[blank])
        else:
            allowed = "0 or 1" + (", -1" if uncertain else "") + (" or empty" if blank else "")
            hint = "; for CheXpert-style labels set uncertain= and blank= (or layout=chexpert)" if not uncertain else ""
            return None, f"column {column!r} holds {value!r}; multi-label columns hold {allowed}{hint}"
    return flags, None


@dataclass(frozen=True)
class CsvLayout:
    """Which columns of a CSV hold what, and how its labels are written.

    Labels: one column of class indices (or of class names when ``classes`` is
    given); several 0/1 columns for multi-label (a list for ``label_column``); or
    one column of names joined by ``multilabel_separator`` (``none_label``, e.g.
    "No Finding", means none). An id without an extension finds its file by
    trying ``extensions``; masks are found under ``mask_root`` (default: the images').
    Files must lie under their root; ``follow_symlinks`` also takes links that point out.

    CheXpert-style 0/1 columns may hold -1 (uncertain) and empty cells (not mentioned):
    ``uncertain`` and ``blank`` say what they become (``ignore``: left out of the
    loss and of that label's metrics; ``ones``; ``zeros``: Irvin et al. 2019's
    U-Ignore, U-Ones, U-Zeros); unset, such a row is a bad row. ``group_pattern``, a
    regular expression, takes each row's group (its patient) from its id when no
    column holds it (CheXpert's ``patient00001`` inside the path); ``dicom_patient_group`` takes it from each
    DICOM file's Patient ID instead (hashed: the id is never written). ``boxes_csv`` names a file of boxes
    (ChestX-ray14's ``BBox_List_2017.csv``) that become the masks; ``test_list`` the ids of the test split
    (ChestX-ray14's ``test_list.txt``) and ``train_list`` those of the rest (``train_val_list.txt``). ``layout`` fills
    the options of a known layout (:data:`LAYOUTS`); options given beside it win.
    """

    id_column: str = "image_id"
    label_column: str | Sequence[str] = "target"
    mask_column: str | None = None
    mask_root: str | Path | None = None
    group_column: str | None = None
    split_column: str | None = None
    classes: Sequence[str] | None = None
    multilabel_separator: str | None = None
    none_label: str | None = None
    extensions: Sequence[str] = IMAGE_EXTENSIONS
    follow_symlinks: bool = False
    uncertain: str | None = None
    blank: str | None = None
    group_pattern: str | None = None
    dicom_patient_group: bool = False
    boxes_csv: str | Path | None = None
    test_list: str | Path | None = None
    train_list: str | Path | None = None
    layout: str | None = None

    @classmethod
    def from_options(cls, options: dict) -> CsvLayout:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(
                f"data source 'csv' has no option(s) {unknown}; its options are: csv_path, "
                f"image_root, {', '.join(known)}"
            )
        if options.get("layout") is not None:
            if options["layout"] not in LAYOUTS:
                raise ConfigError(f"csv layout={options['layout']!r} is not one of {', '.join(LAYOUTS)}")
            options = {**LAYOUTS[options["layout"]], **options}
        for option in ("uncertain", "blank"):
            allowed = ("ignore", "ones", "zeros") if option == "uncertain" else ("ignore", "zeros")
            if options.get(option) is not None and options[option] not in allowed:
                raise ConfigError(f"csv {option}={options[option]!r} is not one of {', '.join(allowed)}")
        return cls(**options)

    @property
    def label_columns(self) -> list[str]:
        return [self.label_column] if isinstance(self.label_column, str) else list(self.label_column)

    @property
    def multilabel(self) -> bool:
        return len(self.label_columns) > 1 or self.multilabel_separator is not None

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions)

    def wanted_columns(self) -> dict[str, str]:
        """Option name -> column name, for every column this layout reads."""
        wanted = {
            "id_column": self.id_column,
            "mask_column": self.mask_column,
            "group_column": self.group_column,
            "split_column": self.split_column,
        }
        columns = self.label_columns
        wanted |= {f"label_column[{i}]" if len(columns) > 1 else "label_column": c for i, c in enumerate(columns)}
        return {option: column for option, column in wanted.items() if column is not None}


@dataclass
class _CsvRows:
    """The accepted rows of a CSV, column by column, and the rejected ones."""

    ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    labels: list = field(default_factory=list)
    mask_paths: list[str | None] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    rejected: list[BadRow] = field(default_factory=list)
    tokens_seen: set[str] = field(default_factory=set)


def from_csv(csv_path: str | Path, image_root: str | Path | None = None, **options: Any) -> Manifest:
    """A manifest from a headered CSV (the Kaggle/ISIC layout: ``image_id,target``).

    ``image_root`` defaults to the CSV's folder; ``options`` are the fields of
    :class:`CsvLayout` (which column holds what), each refused by name if unknown.
    """
    layout = CsvLayout.from_options(options)
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such CSV file")
    root = Path(image_root) if image_root is not None else csv_path.parent
    if not root.is_dir():
        raise DataError(f"image root {root} is not a folder; pass image_root= (--image-root) pointing at the images")
    masks_root = Path(layout.mask_root) if layout.mask_root is not None else root
    class_names = (
        list(layout.classes)
        if layout.classes is not None
        else (layout.label_columns if len(layout.label_columns) > 1 else None)
    )
    parsed = _CsvRows()
    seen: dict[str, int] = {}
    for line, row in read_csv_rows(csv_path, layout.wanted_columns()):
        image_id = (row[layout.id_column] or "").strip()
        path, label, mask_path, problem = None, None, None, cell_count_problem(row)
        if problem is None:
            path, label, mask_path, problem = _parse_row(
                row, image_id, line, seen, root, masks_root, layout, class_names, parsed.tokens_seen
            )
        split = (row[layout.split_column] or "").strip().lower() if layout.split_column else None
        if problem is None and layout.split_column and split not in SPLITS:
            problem = f"split {row[layout.split_column]!r} is not one of {list(SPLITS)}"
        if problem is not None:
            parsed.rejected.append(BadRow(str(csv_path), line, image_id or "?", problem))
            continue
        parsed.ids.append(image_id)
        parsed.paths.append(str(path))
        parsed.labels.append(label)
        parsed.mask_paths.append(str(mask_path) if mask_path else None)
        parsed.groups.append(_group(row, image_id, layout))
        parsed.splits.append(split)
        parsed.rows.append(line)
    return _with_extras(_csv_manifest(str(csv_path), parsed, layout, class_names), layout)


def _with_extras(manifest: Manifest, layout: CsvLayout) -> Manifest:
    """The manifest with what the layout takes from beside the CSV: patient groups, split lists, boxes."""
    if layout.dicom_patient_group:
        manifest = dicom_patient_groups(manifest)
    if layout.test_list is not None or layout.train_list is not None:
        manifest = apply_split_lists(manifest, layout.test_list, layout.train_list)
    if layout.boxes_csv is not None:
        if layout.mask_column is not None:
            raise ConfigError("csv options boxes_csv and mask_column both give masks; choose one")
        manifest = attach_boxes(manifest, layout.boxes_csv)
    return manifest


def _group(row: dict[str, str], image_id: str, layout: CsvLayout) -> str | None:
    """The row's group: its group column, else what ``group_pattern`` finds in its id (the whole id if not)."""
    if layout.group_column:
        return (row[layout.group_column] or "").strip()
    if layout.group_pattern:
        found = re.search(layout.group_pattern, image_id)
        return (found.group(1) if found.groups() else found.group(0)) if found else image_id
    return None


def read_csv_rows(csv_path: Path, wanted: dict[str, str], hint: str = "") -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every data row of a UTF-8 CSV with the ``wanted`` columns (option -> column).

    Every way a CSV can be unreadable (not UTF-8, a malformed or huge field, a
    missing column) is a DataError naming the file and the line. A row with fewer
    or more cells than the header is returned with ``None`` for its missing cells
    and the extra ones under the key ``None``: the caller makes it a bad row.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            try:
                if not reader.fieldnames:
                    raise DataError(f"{csv_path}: empty file, expected a header row such as 'image_id,target'")
                missing = [
                    f"{option}={column!r}" for option, column in wanted.items() if column not in reader.fieldnames
                ]
                if missing:
                    raise DataError(
                        f"{csv_path}: no column for {', '.join(missing)}; the columns are {reader.fieldnames}{hint}"
                    )
                return [(reader.line_num, row) for row in reader]
            except csv.Error as error:
                raise DataError(f"{csv_path} line {reader.line_num}: not readable as CSV ({error})") from error
    except UnicodeDecodeError as error:
        raise DataError(
            f"{csv_path}: not UTF-8 text (it holds the byte {error.object[error.start]:#04x}, as Latin-1 or "
            "Windows-1252 files do); save the CSV as UTF-8"
        ) from error
    except OSError as error:
        raise DataError(f"{csv_path}: cannot be read ({error.strerror or error})") from error


def cell_count_problem(row: dict) -> str | None:
    """Why a row from :func:`read_csv_rows` has the wrong number of cells, or None."""
    if None in row:
        return f"{len(row) - 1 + len(row[None])} cells but the header has {len(row) - 1}"
    empty = [column for column, value in row.items() if value is None]
    if empty:
        return f"{len(row) - len(empty)} cells but the header has {len(row)} (no {', '.join(map(repr, empty))})"
    return None


def _parse_row(
    row: dict[str, str],
    image_id: str,
    line: int,
    seen: dict[str, int],
    root: Path,
    masks_root: Path,
    layout: CsvLayout,
    class_names: list[str] | None,
    tokens_seen: set[str],
) -> tuple[Path | None, Any, Path | None, str | None]:
    """(image path, label, mask path, problem) of one row; ``problem`` is None when the row is good."""
    if not image_id:
        return None, None, None, f"empty {layout.id_column!r}"
    if image_id in seen:
        return None, None, None, f"duplicate id, first seen on row {seen[image_id]}"
    seen[image_id] = line
    path, problem, _ = resolve_image(root, image_id, layout.suffixes, layout.follow_symlinks)
    if problem is not None:
        return None, None, None, problem
    label, problem = _parse_row_label(row, layout, class_names, tokens_seen)
    if problem is not None or layout.mask_column is None:
        return path, label, None, problem
    mask_name = (row[layout.mask_column] or "").strip()
    mask_path, problem, _ = resolve_image(masks_root, mask_name, layout.suffixes, layout.follow_symlinks)
    return path, label, mask_path, problem and f"mask: {problem}"


def _parse_row_label(
    row: dict[str, str], layout: CsvLayout, class_names: list[str] | None, tokens_seen: set[str]
) -> tuple[Any, str | None]:
    columns = layout.label_columns
    if layout.multilabel_separator is None:
        if layout.multilabel:
            return _parse_flags(row, columns, layout.uncertain, layout.blank)
        return _parse_label(row[columns[0]], class_names)
    tokens = [t.strip() for t in row[columns[0]].split(layout.multilabel_separator) if t.strip()]
    tokens = [t for t in tokens if t != layout.none_label]
    tokens_seen.update(tokens)
    unknown = [t for t in tokens if class_names is not None and t not in class_names]
    if unknown:
        return tokens, f"unknown label(s) {unknown}; known classes: {class_names}"
    return tokens, None


def _csv_manifest(source: str, parsed: _CsvRows, layout: CsvLayout, class_names: list[str] | None) -> Manifest:
    """The manifest of the accepted rows, with labels as an array: integers, or 0/1 per class (multi-label)."""
    labels = parsed.labels
    if layout.multilabel_separator is not None:
        class_names = class_names or sorted(parsed.tokens_seen)
        label_array = np.array(
            [[float(c in set(tokens)) for c in class_names] for tokens in labels], dtype=np.float32
        ).reshape(len(labels), len(class_names))
    elif layout.multilabel:
        label_array = np.array(labels, dtype=np.float32).reshape(len(labels), len(layout.label_columns))
    else:
        label_array = np.array(labels, dtype=np.int64)
        if class_names is None:
            class_names = [str(i) for i in range(int(label_array.max()) + 1 if len(label_array) else 0)]
    return Manifest(
        source,
        parsed.ids,
        label_array,
        list(class_names or []),
        paths=parsed.paths,
        mask_paths=parsed.mask_paths if layout.mask_column else None,
        groups=parsed.groups if layout.group_column or layout.group_pattern else None,
        splits=parsed.splits if layout.split_column else None,
        rows=parsed.rows,
        rejected=parsed.rejected,
    )


def from_folder(
    root: str | Path,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    follow_symlinks: bool = False,
    dicom_patient_group: bool = False,
) -> Manifest:
    """A manifest from ``root/<class name>/**/<image>``; class names sorted give the indices.

    A file (or class folder) that is a link leading outside ``root`` is a bad row
    unless ``follow_symlinks``: its pixels would otherwise end up in shared thumbnails.
    ``dicom_patient_group`` keeps each patient's images in one split, by the DICOM
    files' Patient ID (hashed: the id is never written).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: expected one sub-folder per class (e.g. {root}/benign, {root}/malignant), found none")
    extensions = tuple(e.lower() for e in extensions)
    inside = root.resolve()
    ids, paths, labels, ignored, rejected = [], [], [], [], []
    for index, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if is_image_file(p, extensions)]
        ignored += [p for p in files if not is_image_file(p, extensions)]
        if not images:
            log.warning("%s: class folder %r holds no images", root, class_dir.name)
        for path in images:
            name = str(path.relative_to(root))
            if not follow_symlinks and not path.resolve().is_relative_to(inside):
                reason = (
                    f"a link to {path.resolve()}, outside {inside}; copy the file in, "
                    "or set follow_symlinks=true for a link farm you trust"
                )
                rejected.append(BadRow(str(root), None, name, reason))
                continue
            ids.append(name)
            paths.append(str(path))
            labels.append(index)
    if ignored:
        log.warning(
            "%s: %d file(s) without an image extension left out: %s",
            root,
            len(ignored),
            ", ".join(str(p.relative_to(root)) for p in ignored[:10]),
        )
    classes = [d.name for d in class_dirs]
    manifest = Manifest(str(root), ids, np.array(labels, dtype=np.int64), classes, paths=paths, rejected=rejected)
    return dicom_patient_groups(manifest) if dicom_patient_group else manifest
