import logging

import numpy as np
import pytest

from attnscope import DataError
from attnscope.data.manifest import BadRowsError, check_bad_rows
from attnscope.data.sources import from_csv, from_folder
from tests.data.conftest import write_image


def test_kaggle_layout_loads_with_extensions_found(lesion_folder):
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train", group_column="patient_id")
    assert len(manifest) == 12 and not manifest.rejected
    assert manifest.paths[3].endswith("train/ISIC_0003.jpg")
    assert manifest.labels.tolist() == [int(i % 3 == 0) for i in range(12)]
    assert manifest.classes == ["0", "1"] and manifest.groups[5] == "P2"
    assert manifest.rows[0] == 2  # the file's line numbers, header first


def test_missing_columns_are_listed_with_the_columns_found(lesion_folder):
    with pytest.raises(
        DataError,
        match=r"no column for label_column='diagnosis'; the columns are \['image_id', 'target', 'patient_id'\]",
    ):
        from_csv(lesion_folder / "marking.csv", lesion_folder / "train", label_column="diagnosis")


def test_every_bad_row_is_listed_with_its_reason(lesion_folder):
    (lesion_folder / "train" / "broken.jpg").write_bytes(b"")
    rows = [
        "image_id,target",
        "ISIC_0000,1",  # good
        "ISIC_9999,0",  # missing file
        "../../etc/passwd,0",  # outside the root
        "ISIC_0001,benign",  # non-numeric
        "ISIC_0002,-1",  # out of range
        "ISIC_0003,0.5",  # not an integer
        "ISIC_0000,0",  # duplicate
        ",1",
    ]  # empty id
    (lesion_folder / "bad.csv").write_text("\n".join(rows) + "\n")
    manifest = from_csv(lesion_folder / "bad.csv", lesion_folder / "train")
    reasons = {bad.row: bad.reason for bad in manifest.rejected}
    assert len(manifest) == 1 and sorted(reasons) == [3, 4, 5, 6, 7, 8, 9]
    assert reasons[3].startswith("image file not found") and "ISIC_9999" in reasons[3]
    assert "resolves outside the image root" in reasons[4]
    assert "label 'benign' is not a class index" in reasons[5]
    assert "label -1 is out of range" in reasons[6]
    assert "not an integer" in reasons[7]
    assert reasons[8] == "duplicate id, first seen on row 2"
    assert reasons[9] == "empty 'image_id'"
    with pytest.raises(BadRowsError) as error:
        check_bad_rows(manifest, skip_bad=False)
    message = str(error.value)
    assert message.startswith("7 bad row(s)") and f"{lesion_folder / 'bad.csv'} row 4 (../../etc/passwd)" in message
    assert len(check_bad_rows(manifest, skip_bad=True)) == 1


def test_class_names_map_to_indices_and_range_is_checked(lesion_folder):
    (lesion_folder / "named.csv").write_text("image_id,dx\nISIC_0000,benign\nISIC_0001,malignant\nISIC_0002,2\n")
    manifest = from_csv(
        lesion_folder / "named.csv", lesion_folder / "train", label_column="dx", classes=["benign", "malignant"]
    )
    assert manifest.labels.tolist() == [0, 1]
    assert manifest.rejected[0].reason == "label 2 is out of range (must be below 2)"


def test_multilabel_from_flag_columns_and_from_a_separated_column(lesion_folder):
    (lesion_folder / "flags.csv").write_text("image_id,effusion,mass\nISIC_0000,1,0\nISIC_0001,1,1\nISIC_0002,2,0\n")
    flags = from_csv(lesion_folder / "flags.csv", lesion_folder / "train", label_column=["effusion", "mass"])
    assert flags.multilabel and flags.classes == ["effusion", "mass"]
    assert flags.labels.tolist() == [[1, 0], [1, 1]]
    assert "holds '2'" in flags.rejected[0].reason
    (lesion_folder / "findings.csv").write_text(
        "Image Index,Finding Labels\nISIC_0000,Mass|Effusion\nISIC_0001,No Finding\nISIC_0002,Effusion\n"
    )
    findings = from_csv(
        lesion_folder / "findings.csv",
        lesion_folder / "train",
        id_column="Image Index",
        label_column="Finding Labels",
        multilabel_separator="|",
        none_label="No Finding",
    )
    assert findings.classes == ["Effusion", "Mass"]
    assert findings.labels.tolist() == [[1, 1], [0, 0], [1, 0]]
    assert findings.class_counts().tolist() == [2, 1]


def test_masks_groups_and_splits(lesion_folder):
    write_image(lesion_folder / "masks" / "ISIC_0000_mask.png", mode="L")
    (lesion_folder / "m.csv").write_text(
        "image_id,target,mask,split\nISIC_0000,1,ISIC_0000_mask,train\n"
        "ISIC_0001,0,ISIC_0001_mask,val\nISIC_0002,0,ISIC_0000_mask,holdout\n"
    )
    manifest = from_csv(
        lesion_folder / "m.csv",
        lesion_folder / "train",
        mask_column="mask",
        mask_root=lesion_folder / "masks",
        split_column="split",
    )
    assert manifest.mask_paths[0].endswith("ISIC_0000_mask.png") and manifest.splits == ["train"]
    reasons = sorted(bad.reason for bad in manifest.rejected)
    assert reasons[0].startswith("mask: image file not found") and "holdout" in reasons[1]


def test_folder_of_class_folders(tmp_path, caplog):
    for name, count in (("malignant", 2), ("benign", 3)):
        for i in range(count):
            write_image(tmp_path / name / f"{i}.png", seed=i)
    (tmp_path / "benign" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING):
        manifest = from_folder(tmp_path)
    assert manifest.classes == ["benign", "malignant"]
    assert manifest.labels.tolist() == [0, 0, 0, 1, 1]
    assert "benign/notes.txt" in caplog.text  # reported, not silently lost
    with pytest.raises(DataError, match="one sub-folder per class"):
        from_folder(tmp_path / "benign")


def test_an_empty_manifest_stops(lesion_folder):
    (lesion_folder / "empty.csv").write_text("image_id,target\n")
    with pytest.raises(DataError, match="no usable rows"):
        check_bad_rows(from_csv(lesion_folder / "empty.csv", lesion_folder / "train"), skip_bad=True)


def test_subset_and_without_keep_every_column_aligned(lesion_folder):
    manifest = from_csv(lesion_folder / "marking.csv", lesion_folder / "train", group_column="patient_id")
    part = manifest.without({0: "corrupt", 5: "too big"})
    assert len(part) == 10 and part.ids[0] == "ISIC_0001" and part.groups[4] == "P3"
    assert [b.reason for b in part.rejected] == ["corrupt", "too big"] and part.rejected[1].row == 7
    np.testing.assert_array_equal(part.labels, np.delete(manifest.labels, [0, 5]))


def test_a_label_cell_cannot_make_millions_of_classes(lesion_folder):
    """Regression: `2e6` made 2,000,001 classes and `1e30` raised OverflowError."""
    rows = [
        "image_id,target",
        "ISIC_0000,1",
        "ISIC_0001,2e6",
        "ISIC_0002,1e30",
        "ISIC_0003,inf",
        "ISIC_0004,nan",
        "ISIC_0005,10000",
        "ISIC_0006,1.0",
    ]
    (lesion_folder / "huge.csv").write_text("\n".join(rows) + "\n")
    manifest = from_csv(lesion_folder / "huge.csv", lesion_folder / "train")
    reasons = {bad.id: bad.reason for bad in manifest.rejected}
    assert manifest.ids == ["ISIC_0000", "ISIC_0006"] and manifest.labels.tolist() == [1, 1]
    assert manifest.classes == ["0", "1"]
    assert reasons["ISIC_0001"] == "label '2e6' is in exponent notation; write a class index as a plain integer"
    assert reasons["ISIC_0002"] == "label '1e30' is in exponent notation; write a class index as a plain integer"
    assert reasons["ISIC_0003"] == reasons["ISIC_0004"].replace("nan", "inf") == "label 'inf' is not an integer"
    assert reasons["ISIC_0005"] == (
        "label 10000 is out of range (must be non-negative and below 10000; "
        "name the classes with classes=[...] for more)"
    )


def test_an_id_completed_with_an_extension_cannot_reach_outside_through_a_link(tmp_path):
    secret = write_image(tmp_path / "secret" / "s.jpg")
    root = tmp_path / "images"
    write_image(root / "inside.jpg")
    (root / "p1.jpg").symlink_to(secret)  # found by adding .jpg to the id p1
    (root / "sub").symlink_to(secret.parent, target_is_directory=True)
    (root / "alias.jpg").symlink_to(root / "inside.jpg")  # a link that stays inside is fine
    (tmp_path / "list.csv").write_text("image_id,target\np1,0\nsub/s,1\nalias,0\ninside,1\n")
    manifest = from_csv(tmp_path / "list.csv", root)
    assert manifest.ids == ["alias", "inside"]
    reasons = {bad.id: bad.reason for bad in manifest.rejected}
    assert set(reasons) == {"p1", "sub/s"}
    assert all("outside the image root" in reason and "follow_symlinks" in reason for reason in reasons.values())
    trusting = from_csv(tmp_path / "list.csv", root, follow_symlinks=True)
    assert len(trusting) == 4 and trusting.paths[0].endswith("p1.jpg")


def test_a_folder_source_does_not_follow_links_out_of_its_root(tmp_path):
    secret = write_image(tmp_path / "secret" / "s.png")
    root = tmp_path / "data"
    write_image(root / "benign" / "a.png")
    write_image(root / "malignant" / "b.png")
    (root / "malignant" / "leak.png").symlink_to(secret)
    manifest = from_folder(root)
    assert manifest.ids == ["benign/a.png", "malignant/b.png"]
    assert [(bad.id, "outside" in bad.reason) for bad in manifest.rejected] == [("malignant/leak.png", True)]
    with pytest.raises(BadRowsError, match="leak.png"):
        check_bad_rows(manifest, skip_bad=False)
    assert len(from_folder(root, follow_symlinks=True)) == 3


def test_rows_with_missing_or_extra_cells_are_bad_rows_not_crashes(lesion_folder):
    (lesion_folder / "short.csv").write_text("image_id,target\nISIC_0000\nISIC_0001,1,extra\nISIC_0002,0\n")
    manifest = from_csv(lesion_folder / "short.csv", lesion_folder / "train")
    assert manifest.ids == ["ISIC_0002"]
    reasons = {bad.row: bad.reason for bad in manifest.rejected}
    assert reasons == {
        2: "1 cells but the header has 2 (no 'target')",
        3: "3 cells but the header has 2",
    }


def test_an_unreadable_csv_is_one_error_naming_the_file_and_what_to_do(lesion_folder):
    latin = lesion_folder / "latin1.csv"
    latin.write_bytes("image_id,target\nISIC_0000,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv: not UTF-8 text \(it holds the byte 0xe9.*save the CSV as UTF-8"):
        from_csv(latin, lesion_folder / "train")
    huge = lesion_folder / "huge.csv"
    huge.write_text("image_id,target\n" + "x" * 200_000 + ",1\n")
    with pytest.raises(DataError, match=r"huge.csv line \d+: not readable as CSV \(field larger than field limit"):
        from_csv(huge, lesion_folder / "train")
