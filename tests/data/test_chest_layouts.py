"""The chest X-ray CSV layouts: ChestX-ray14's findings column and CheXpert's label columns with uncertain (-1)
and blank cells, each policy against the values it must give."""

import csv
import math

import numpy as np
import pytest

from attnscope.data.balance import class_weights
from attnscope.data.sources import from_csv
from attnscope.data.sources.files import CHESTXRAY14_FINDINGS, CHEXPERT_LABELS
from attnscope.errors import ConfigError
from tests.data.conftest import write_image


def chexpert_csv(root, cells):
    """A CheXpert-style train.csv under ``root`` with one row per ``cells`` (label -> cell; others blank), and
    the images its paths name, two studies per patient."""
    rows = []
    for number, given in enumerate(cells):
        path = f"CheXpert-v1.0-small/train/patient{number // 2:05d}/study{number % 2 + 1}/view1_frontal.jpg"
        write_image(root / path, seed=number)
        row = {"Path": path, "Sex": "Female", "Age": "60", "Frontal/Lateral": "Frontal", "AP/PA": "AP"}
        rows.append(row | {label: given.get(label, "") for label in CHEXPERT_LABELS})
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "train.csv"


CELLS = [
    {"Cardiomegaly": "1.0", "Edema": "-1.0"},
    {"No Finding": "1.0"},
    {"Cardiomegaly": "0.0", "Edema": "1.0", "Pleural Effusion": "-1.0"},
    {"Cardiomegaly": "-1.0", "Support Devices": "1.0"},
]


def column(manifest, name):
    return manifest.labels[:, manifest.classes.index(name)]


def test_chexpert_layout_ignores_uncertain_labels_and_reads_blanks_as_negative(tmp_path):
    manifest = from_csv(chexpert_csv(tmp_path, CELLS), tmp_path, layout="chexpert")
    assert manifest.classes == list(CHEXPERT_LABELS) and not manifest.rejected
    assert np.array_equal(column(manifest, "Cardiomegaly"), [1, 0, 0, math.nan], equal_nan=True)
    assert np.array_equal(column(manifest, "Edema"), [math.nan, 0, 1, 0], equal_nan=True)
    assert manifest.groups == ["patient00000", "patient00000", "patient00001", "patient00001"]
    assert manifest.label_text(0) == "Cardiomegaly|Edema?"  # in the order of the classes
    assert manifest.class_counts()[manifest.classes.index("Cardiomegaly")] == 1  # the uncertain one is not counted


@pytest.mark.parametrize(
    "uncertain, blank, cardiomegaly, lesion",
    [
        ("ones", "zeros", [1, 0, 0, 1], [0, 0, 0, 0]),
        ("zeros", "ignore", [1, math.nan, 0, 0], [math.nan] * 4),
    ],
)
def test_each_uncertainty_policy_gives_its_values(tmp_path, uncertain, blank, cardiomegaly, lesion):
    manifest = from_csv(chexpert_csv(tmp_path, CELLS), tmp_path, layout="chexpert", uncertain=uncertain, blank=blank)
    assert np.array_equal(column(manifest, "Cardiomegaly"), cardiomegaly, equal_nan=True)
    assert np.array_equal(column(manifest, "Lung Lesion"), lesion, equal_nan=True)


def test_without_a_policy_an_uncertain_label_is_a_bad_row_that_says_how(tmp_path):
    path = chexpert_csv(tmp_path, [{"Cardiomegaly": "1.0", **{label: "0" for label in CHEXPERT_LABELS[3:]}}] * 2)
    manifest = from_csv(path, tmp_path, id_column="Path", label_column=list(CHEXPERT_LABELS))
    assert (
        len(manifest.rejected) == 2 and "set uncertain= and blank= (or layout=chexpert)" in manifest.rejected[0].reason
    )


def test_chestxray14_layout_reads_findings_patients_and_refuses_a_misspelt_finding(tmp_path):
    rows = [
        ("00000001_000.png", "Cardiomegaly|Effusion", "1"),
        ("00000001_001.png", "No Finding", "1"),
        ("00000002_000.png", "Hernia", "2"),
        ("00000003_000.png", "Cardiomegally", "3"),
    ]
    for name, _, _ in rows:
        write_image(tmp_path / "images" / name)
    lines = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age"]
    lines += [f"{name},{findings},0,{patient},58" for name, findings, patient in rows]
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    manifest = from_csv(tmp_path / "Data_Entry_2017.csv", tmp_path / "images", layout="chestxray14")
    assert manifest.classes == list(CHESTXRAY14_FINDINGS) and manifest.groups == ["1", "1", "2"]
    assert manifest.label_text(0) == "Cardiomegaly|Effusion" and manifest.label_text(1) == ""
    assert manifest.labels.sum() == 3
    assert "unknown label(s) ['Cardiomegally']" in manifest.rejected[0].reason


def test_an_unknown_layout_or_policy_is_refused_by_name(tmp_path):
    path = chexpert_csv(tmp_path, CELLS[:2])
    with pytest.raises(ConfigError, match="layout='chexpret' is not one of chestxray14, chexpert"):
        from_csv(path, tmp_path, layout="chexpret")
    with pytest.raises(ConfigError, match="blank='ones' is not one of ignore, zeros"):
        from_csv(path, tmp_path, layout="chexpert", blank="ones")


def test_class_weights_count_only_the_rows_where_a_label_is_known():
    labels = np.array([[1, 0], [math.nan, 1], [0, 0], [0, 1]], dtype=np.float32)
    assert class_weights(labels, np.arange(4), 2).tolist() == [2.0, 1.0]  # label 0: 2 negatives of 3 known
