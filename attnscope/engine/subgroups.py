"""Performance per subgroup (site, sex, age band, device): does the model work as well for everyone?

``evaluate --by COLUMN`` takes each evaluated image's value of a column of the source
CSV (matched by the CSV line the image came from), or of a DICOM tag
(``dicom:Manufacturer``, ``dicom:PatientSex``: read from the file's header, never
written except as the subgroup's name), and computes each subgroup's metrics at the
run's threshold with their bootstrap intervals, and the gap of its AUC to the whole
test set's. A numeric column with more than eight distinct values (an age) is cut
into four bands at its quartiles, named by their ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnscope.data.dicom import looks_like_dicom, read_dicom_header
from attnscope.data.manifest import Manifest
from attnscope.data.sources.files import read_csv_rows
from attnscope.engine.intervals import BootstrapOptions, metric_intervals
from attnscope.engine.metrics import summarize
from attnscope.errors import ConfigError, DataError

DICOM_PREFIX = "dicom:"
MAX_CATEGORIES = 8
MISSING = "(missing)"


def _csv_values(manifest: Manifest, rows: Sequence[int], column: str) -> list[str]:
    """Each row's cell of ``column`` in the CSV the manifest was read from, found by its line."""
    path = Path(manifest.source)
    if manifest.rows is None or path.suffix.lower() != ".csv" or not path.is_file():
        raise ConfigError(
            f"--by {column}: the evaluated images do not come from a CSV ({manifest.source}); subgroups come from a "
            "column of the source CSV, or from a DICOM tag (--by dicom:Manufacturer)"
        )
    hint = " (--by takes one of them, or a DICOM tag as dicom:Keyword)"
    cells = {line: (row[column] or "").strip() for line, row in read_csv_rows(path, {"by": column}, hint)}
    return [cells.get(manifest.rows[r], "") or MISSING for r in rows]


def _dicom_values(manifest: Manifest, rows: Sequence[int], keyword: str) -> list[str]:
    """Each row's DICOM tag ``keyword`` (a non-DICOM file or a missing tag: missing)."""
    values = []
    for r in rows:
        path = manifest.paths[r] if manifest.paths else None
        value = None
        if path is not None and looks_like_dicom(path):
            try:
                value = read_dicom_header(path).get(keyword)
            except DataError:
                value = None
        values.append(str(value).strip() if value not in (None, "") else MISSING)
    return values


def banded(values: list[str]) -> list[str]:
    """Numeric values with more than eight distinct ones, cut at their quartiles into four named bands; any other
    values as they are."""
    present = [v for v in values if v != MISSING]
    try:
        numbers = np.array([float(v.rstrip("Yy")) for v in present])  # DICOM ages read like 063Y
    except ValueError:
        return values
    if len(set(numbers.tolist())) <= MAX_CATEGORIES:
        return values
    edges = np.unique(np.quantile(numbers, [0, 0.25, 0.5, 0.75, 1.0]))

    def band(value: str) -> str:
        if value == MISSING:
            return value
        number = float(value.rstrip("Yy"))
        index = min(int(np.searchsorted(edges, number, side="right")) - 1, len(edges) - 2)
        closing = "]" if index == len(edges) - 2 else ")"
        return f"[{edges[index]:g}, {edges[index + 1]:g}{closing}"

    return [band(v) for v in values]


def subgroup_values(manifest: Manifest, rows: Sequence[int], by: str) -> list[str]:
    """The subgroup of each evaluated row by ``by`` (a CSV column, or ``dicom:Keyword``), banded if numeric."""
    if by.startswith(DICOM_PREFIX):
        return banded(_dicom_values(manifest, rows, by[len(DICOM_PREFIX) :]))
    return banded(_csv_values(manifest, rows, by))


def subgroup_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    kind: str,
    classes: list[str],
    threshold: float | list[float] | None,
    values: list[str],
    groups: Sequence[str | None] | None = None,
    options: BootstrapOptions | None = None,
) -> dict[str, dict]:
    """Subgroup -> images, AUC, sensitivity and specificity at the threshold (intervals where it has enough
    images), and the gap of its AUC to the whole set's."""
    whole = summarize(_tensor(probs), _tensor(labels), kind, classes, threshold=threshold)["auc"]
    found = {}
    for name in sorted(set(values), key=lambda v: (v == MISSING, v)):
        chosen = np.array([v == name for v in values])
        part = summarize(_tensor(probs[chosen]), _tensor(labels[chosen]), kind, classes, threshold=threshold)
        members = [g for g, c in zip(groups, chosen, strict=True) if c] if groups is not None else None
        drawn = metric_intervals(probs[chosen], labels[chosen], kind, classes, threshold, members, options)
        found[name] = {
            "images": int(chosen.sum()),
            "auc": part["auc"],
            "sensitivity_at_threshold": part.get("sensitivity_at_threshold", math.nan),
            "specificity_at_threshold": part.get("specificity_at_threshold", math.nan),
            "auc_gap": part["auc"] - whole if not math.isnan(part["auc"]) else math.nan,
            "intervals": drawn["intervals"],
        }
    return found


def _tensor(values: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(values))
