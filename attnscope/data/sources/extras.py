"""What a CSV source can take from beside the CSV: box files as masks, official split lists, and the patient
of each DICOM file as its group."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from attnscope.data.boxes import read_boxes_csv
from attnscope.data.dicom import looks_like_dicom, read_dicom_header
from attnscope.data.manifest import Manifest
from attnscope.errors import DataError

log = logging.getLogger(__name__)


def attach_boxes(manifest: Manifest, boxes_csv: str | Path) -> Manifest:
    """``manifest`` with each row's boxes from ``boxes_csv`` as its mask (no box: an empty mask); boxes of ids the
    manifest does not hold are logged, not used."""
    boxes = read_boxes_csv(boxes_csv)
    unknown = sorted(set(boxes) - set(manifest.ids))
    if unknown:
        log.warning("%s: boxes of %d image(s) not in %s, not used: %s", boxes_csv, len(unknown), manifest.source,
                    ", ".join(unknown[:5]))  # fmt: skip
    manifest.boxes = [tuple(boxes.get(image_id, ())) for image_id in manifest.ids]
    return manifest


def read_id_list(path: str | Path, option: str) -> set[str]:
    """The ids of a list file, one per line (ChestX-ray14's ``test_list.txt``)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: the {option} file cannot be read ({error})") from error
    return {line.strip() for line in text.splitlines() if line.strip()}


def apply_split_lists(manifest: Manifest, test_list: str | Path | None, train_list: str | Path | None) -> Manifest:
    """Rows named in ``test_list`` form the test split; with ``train_list`` too, a row in neither list or in both
    is a bad row (the lists are meant to cover the set once)."""
    if manifest.splits is not None:
        raise DataError(f"{manifest.source}: give a split_column or test_list/train_list, not both")
    tests = read_id_list(test_list, "test_list") if test_list is not None else set()
    trains = read_id_list(train_list, "train_list") if train_list is not None else None
    bad: dict[int, str] = {}
    for index, image_id in enumerate(manifest.ids):
        if trains is not None and (image_id in tests) == (image_id in trains):
            where = "both" if image_id in tests else "neither"
            bad[index] = f"in {where} of train_list {train_list} and test_list {test_list}"
    manifest.splits = ["test" if image_id in tests else None for image_id in manifest.ids]
    return manifest.without(bad) if bad else manifest


def patient_group(patient_id: str) -> str:
    """A patient's split group: a hash of the id, so that the id itself is never written (manifests, runs)."""
    return "patient-" + hashlib.sha256(patient_id.encode()).hexdigest()[:16]


def dicom_patient_groups(manifest: Manifest) -> Manifest:
    """``manifest`` grouped by each DICOM file's Patient ID (0010,0020), hashed; a row that is not DICOM or has
    no Patient ID is a bad row (it could not be kept with the patient's other images)."""
    groups: list[str | None] = []
    bad: dict[int, str] = {}
    for index, path in enumerate(manifest.paths or []):
        patient = None
        if looks_like_dicom(path):
            try:
                patient = str(read_dicom_header(path).get("PatientID", "") or "").strip() or None
            except DataError as error:
                bad[index] = str(error)
        if patient is None:
            bad.setdefault(index, f"{path}: no DICOM Patient ID (0010,0020) to group by (dicom_patient_group)")
        groups.append(None if patient is None else patient_group(patient))
    manifest.groups = groups
    return manifest.without(bad) if bad else manifest
