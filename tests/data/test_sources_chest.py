"""The generated chest X-rays: the same film whatever the count, findings where their boxes say, uncertain labels
left out, written as NIH ChestX-ray14's and CheXpert's layouts read them."""

import csv

import numpy as np
import pytest
from PIL import Image

from attnscope.data.boxes import read_boxes_csv
from attnscope.data.sources.chest import (
    FINDING_DRAWERS,
    FINDINGS,
    MAX_VALUE,
    _anatomy,
    chest_xray_items,
    image_name,
    synthetic_chest_xrays,
)
from attnscope.data.sources.registry import load_source
from attnscope.errors import DataError

pydicom = pytest.importorskip("pydicom")
from attnscope.data.sources.chest_files import dicom_path, write_chest_xray_set  # noqa: E402


def test_a_film_is_the_same_whatever_the_count_and_stays_in_twelve_bits():
    few, more = chest_xray_items(3, 64, seed=5), chest_xray_items(6, 64, seed=5)
    for a, b in zip(few, more, strict=False):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert a.boxes == b.boxes
    assert all(item.pixels.dtype == np.uint16 and item.pixels.max() <= MAX_VALUE for item in more)
    assert not np.array_equal(few[0].pixels, chest_xray_items(1, 64, seed=6)[0].pixels)


def test_boxes_lie_where_the_findings_change_the_film():
    items = chest_xray_items(40, 96, seed=0)
    assert {name for item in items for name in item.boxes} == set(FINDINGS)
    for item in items:
        assert set(item.boxes) == {f for f, present in zip(FINDINGS, item.present, strict=True) if present}
        for x, y, width, height in item.boxes.values():
            assert 0 <= x and 0 <= y and x + width <= 96.01 and y + height <= 96.01 and width > 0 and height > 0
        expected = np.zeros((96, 96), np.uint8)
        for x, y, width, height in item.boxes.values():
            expected[int(y) : int(np.ceil(y + height)), int(x) : int(np.ceil(x + width))] = 1
        np.testing.assert_array_equal(item.mask(), expected)


@pytest.mark.parametrize("name", sorted(FINDING_DRAWERS))
def test_what_a_finding_adds_to_the_film_lies_in_its_box(name):
    size = 96
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    for seed in range(5):
        rng = np.random.default_rng(seed)
        added, (x, y, width, height) = FINDING_DRAWERS[name](rng, yy, xx, _anatomy(rng, 0.0), 1.0, size)
        inside = added[int(y) : int(np.ceil(y + height)), int(x) : int(np.ceil(x + width))].sum()
        assert added.min() >= 0 and inside >= 0.85 * added.sum(), f"{name}, seed {seed}"


def test_the_in_memory_source_leaves_uncertain_labels_out_and_groups_a_patients_films():
    manifest = synthetic_chest_xrays(count=30, size=48, seed=1)
    items = chest_xray_items(30, 48, seed=1)
    uncertain = np.stack([item.uncertain for item in items])
    assert uncertain.any()
    assert np.isnan(manifest.labels[uncertain]).all() and not np.isnan(manifest.labels[~uncertain]).any()
    np.testing.assert_array_equal(manifest.labels[~uncertain], np.stack([i.present for i in items])[~uncertain])
    assert manifest.groups[:4] == ["00000001", "00000001", "00000002", "00000002"]
    assert manifest.ids[3] == image_name(3) == "00000002_001.png"
    assert manifest.images.dtype == np.uint8 and manifest.masks.shape == (30, 48, 48)
    assert load_source("synthetic_chest_xrays", count=2, size=32).classes == list(FINDINGS)


def test_bad_counts_and_fractions_are_refused():
    with pytest.raises(DataError, match="count >= 1"):
        chest_xray_items(0, 64, 0)
    with pytest.raises(DataError, match="uncertain_fraction"):
        chest_xray_items(2, 64, 0, uncertain_fraction=1.5)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generated") / "chest"
    write_chest_xray_set(folder, count=20, size=64, seed=3)
    return folder


def test_the_written_films_hold_the_generated_values_as_png_and_dicom(written):
    items = chest_xray_items(20, 64, seed=3)
    for index in (0, 4):  # item 4 is written as MONOCHROME1: stored inverted
        png = np.asarray(Image.open(written / "images" / image_name(index)))
        np.testing.assert_array_equal(png, items[index].pixels)
        dataset = pydicom.dcmread(written / dicom_path(index))
        assert dataset.BitsStored == 12 and dataset.PatientID == f"{items[index].patient:08d}"
        stored = dataset.pixel_array
        expected = MAX_VALUE - items[index].pixels if index == 4 else items[index].pixels
        assert dataset.PhotometricInterpretation == ("MONOCHROME1" if index == 4 else "MONOCHROME2")
        np.testing.assert_array_equal(stored, expected)


def test_the_written_tables_say_what_the_films_hold(written):
    items = chest_xray_items(20, 64, seed=3)
    with open(written / "Data_Entry_2017.csv", newline="") as handle:
        entries = list(csv.DictReader(handle))
    for item, entry in zip(items, entries, strict=True):
        found = {f for f, present in zip(FINDINGS, item.present, strict=True) if present}
        assert set(entry["Finding Labels"].split("|")) == (found or {"No Finding"})
    boxes = read_boxes_csv(written / "BBox_List_2017.csv")
    assert boxes == {image_name(i): list(item.boxes.values()) for i, item in enumerate(items) if item.boxes}
    tests = set((written / "test_list.txt").read_text().split())
    trains = set((written / "train_val_list.txt").read_text().split())
    assert tests.isdisjoint(trains) and tests | trains == {image_name(i) for i in range(20)}
    assert {name[:8] for name in tests}.isdisjoint({name[:8] for name in trains})  # patients kept whole


def test_both_layouts_read_the_written_set(written):
    classes = list(FINDINGS)
    nih = load_source(
        "csv", csv_path=str(written / "Data_Entry_2017.csv"), image_root=str(written / "images"),
        layout="chestxray14", classes=classes, boxes_csv=str(written / "BBox_List_2017.csv"),
        test_list=str(written / "test_list.txt"), train_list=str(written / "train_val_list.txt"),
    )  # fmt: skip
    items = chest_xray_items(20, 64, seed=3)
    np.testing.assert_array_equal(nih.labels, np.stack([item.present for item in items]))
    assert nih.boxes[1] == tuple(items[1].boxes.values())
    assert {nih.ids[i] for i, split in enumerate(nih.splits) if split == "test"} == set(
        (written / "test_list.txt").read_text().split()
    )
    chexpert_names = ["Cardiomegaly", "Pleural Effusion", "Lung Lesion", "Consolidation"]
    chexpert = load_source("csv", csv_path=str(written / "train.csv"), layout="chexpert", label_column=chexpert_names)
    uncertain = np.stack([item.uncertain for item in items])
    assert np.isnan(chexpert.labels[uncertain]).all()
    np.testing.assert_array_equal(chexpert.labels[~uncertain], nih.labels[~uncertain])
    assert chexpert.groups[0] == "patient00001" == chexpert.groups[1]


def test_a_folder_that_is_not_a_generated_set_is_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="never replaces"):
        write_chest_xray_set(tmp_path / "mine", count=2, size=32, replace=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    write_chest_xray_set(tmp_path / "set", count=2, size=32)
    write_chest_xray_set(tmp_path / "set", count=4, size=32, replace=True)
    assert len(list((tmp_path / "set" / "images").iterdir())) == 4
