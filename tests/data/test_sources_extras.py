"""What a CSV source takes from beside the CSV: official split lists, boxes as masks, and the patient of each
DICOM file as its split group, hashed so that the id itself is never written."""

import numpy as np
import pytest
from PIL import Image

from attnscope.data.manifest import Manifest
from attnscope.data.sources.extras import apply_split_lists, patient_group
from attnscope.data.sources.registry import load_source
from attnscope.errors import ConfigError, DataError
from tests.data.dicom_files import PATIENT_NAME, write_dicom


def _manifest(ids):
    return Manifest("list.csv", list(ids), np.zeros(len(ids), np.int64), ["a"], paths=list(ids))


def test_the_test_list_makes_the_test_split_and_rows_in_neither_list_are_bad(tmp_path):
    (tmp_path / "test_list.txt").write_text("b.png\n\nc.png\n")
    (tmp_path / "train_val_list.txt").write_text("a.png\nc.png\n")
    only_test = apply_split_lists(_manifest(["a.png", "b.png", "d.png"]), tmp_path / "test_list.txt", None)
    assert only_test.splits == [None, "test", None]
    both = apply_split_lists(
        _manifest(["a.png", "b.png", "c.png", "d.png"]), tmp_path / "test_list.txt", tmp_path / "train_val_list.txt"
    )
    assert both.ids == ["a.png", "b.png"] and both.splits == [None, "test"]
    reasons = {row.id: row.reason for row in both.rejected}
    assert reasons["c.png"].startswith("in both") and reasons["d.png"].startswith("in neither")
    with pytest.raises(DataError, match="cannot be read"):
        apply_split_lists(_manifest(["a.png"]), tmp_path / "missing.txt", None)


def _dicom_csv(tmp_path, patients):
    rows = ["image_id,target"]
    for number, patient in enumerate(patients):
        name = f"film{number}.dcm"
        pixels = np.full((8, 8), 100 * number, np.uint16)
        if patient is None:
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"film{number}.png")
            name = f"film{number}.png"
        else:
            write_dicom(tmp_path / name, pixels, bits_stored=12, PatientID=patient)
        rows.append(f"{name},{number % 2}")
    (tmp_path / "films.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "films.csv"


def test_dicom_patients_group_the_rows_by_a_hash_and_the_id_is_never_written(tmp_path):
    csv_path = _dicom_csv(tmp_path, ["P-1", "P-2", "P-1", None])
    manifest = load_source("csv", csv_path=str(csv_path), dicom_patient_group=True)
    assert manifest.groups == [patient_group("P-1"), patient_group("P-2"), patient_group("P-1")]
    assert manifest.groups[0] != manifest.groups[1] and "P-1" not in manifest.groups[0]
    assert [row.id for row in manifest.rejected] == ["film3.png"]
    assert "no DICOM Patient ID" in manifest.rejected[0].reason
    written = manifest.write_csv(tmp_path / "manifest.csv").read_text()
    assert "P-1" not in written and PATIENT_NAME.split("^")[0] not in written


def test_boxes_and_a_mask_column_are_refused_together(tmp_path):
    csv_path = _dicom_csv(tmp_path, ["P-1"])
    (tmp_path / "boxes.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\nfilm0.dcm,Mass,1,1,2,2,,\n")
    manifest = load_source("csv", csv_path=str(csv_path), boxes_csv=str(tmp_path / "boxes.csv"))
    assert manifest.boxes == [((1.0, 1.0, 2.0, 2.0),)] and manifest.has_masks
    with pytest.raises(ConfigError, match="choose one"):
        load_source("csv", csv_path=str(csv_path), boxes_csv=str(tmp_path / "boxes.csv"), mask_column="target")


def test_a_folder_of_dicom_files_groups_by_patient(tmp_path):
    for number, patient in enumerate(["A", "A", "B"]):
        (tmp_path / "root" / f"c{number % 2}").mkdir(parents=True, exist_ok=True)
        write_dicom(
            tmp_path / "root" / f"c{number % 2}" / f"{number}.dcm", np.zeros((4, 4), np.uint16), PatientID=patient
        )
    manifest = load_source("folder", root=str(tmp_path / "root"), dicom_patient_group=True)
    assert sorted(manifest.groups) == sorted([patient_group("A"), patient_group("A"), patient_group("B")])
