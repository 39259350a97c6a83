import csv
import json

import numpy as np
import pytest
import torch

from attnscope import ConfigError
from attnscope.data import BadRowsError, DataConfig, DataModule, load_source
from attnscope.data.sources import FASHION_MNIST_DIR
from tests.data.conftest import write_image


def test_synthetic_lesions_end_to_end(tmp_path):
    config = DataConfig(
        source="synthetic_lesions",
        source_options={"count": 80, "size": 40},
        image_size=32,
        batch_size=16,
        oversample={"malignant": 2},
        class_weights=True,
        progress=False,
        cache_dir=str(tmp_path / "cache"),
    )
    data = DataModule(config).setup()
    summary = data.summary()
    assert summary["rows"] == 80 and summary["classes"] == ["benign", "malignant"]
    train = data.rows("train")
    assert (
        np.bincount(data.manifest.labels[train])[1]
        == 2 * np.bincount(data.manifest.labels[np.flatnonzero(data.splits == "train")])[1]
    )
    batch = next(iter(data.train_loader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["mask"].shape == (16, 1, 32, 32)
    images, masks = data.transform()(batch["image"], batch["mask"], train=True)
    assert images.dtype == torch.float32 and masks.shape == (16, 1, 32, 32)
    val_batch = next(iter(data.val_loader()))
    normalised, _ = data.transform()(val_batch["image"], train=False)
    assert abs(normalised.mean().item()) < 0.5  # dataset statistics centre the data


def test_kaggle_layout_with_bad_rows_lists_them_or_writes_them(lesion_folder, tmp_path, caplog):
    (lesion_folder / "train" / "ISIC_0003.jpg").write_bytes(b"not a jpeg")
    with open(lesion_folder / "marking.csv", "a") as handle:
        handle.write("ISIC_0404,1,P99\n")
    options = {
        "csv_path": str(lesion_folder / "marking.csv"),
        "image_root": str(lesion_folder / "train"),
        "group_column": "patient_id",
    }
    config = DataConfig(
        source="csv",
        source_options=options,
        image_size=16,
        batch_size=4,
        progress=False,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.3,
        test_fraction=0.0,
        seed=1,
    )
    with pytest.raises(BadRowsError) as error:
        DataModule(config).setup()
    assert "2 bad row(s)" in str(error.value)
    assert "row 14 (ISIC_0404): image file not found" in str(error.value)
    assert "row 5 (ISIC_0003)" in str(error.value) and "not an image Pillow can read" in str(error.value)

    config.skip_bad = True
    with caplog.at_level("WARNING", logger="attnscope.data.module"):
        data = DataModule(config).setup()
    assert "left out 2 bad row(s)" in caplog.text
    written = data.write(tmp_path / "run")
    bad = list(csv.DictReader(open(written["bad_rows"])))
    assert sorted(row["id"] for row in bad) == ["ISIC_0003", "ISIC_0404"]
    split_rows = list(csv.DictReader(open(written["split"])))
    assert len(split_rows) == 11 and {r["split"] for r in split_rows} == {"train", "val"}
    patients = {}
    for row in split_rows:
        assert patients.setdefault(row["group"], row["split"]) == row["split"]  # grouped by patient
    summary = json.loads(written["data"].read_text())
    assert summary["rejected"] == 2 and summary["config"]["source_options"]["group_column"] == "patient_id"


def test_unknown_sources_and_options_are_named():
    with pytest.raises(ConfigError, match="unknown data source 'isic'; known data sources: cluttered, csv"):
        load_source("isic")
    with pytest.raises(ConfigError, match=r"no option\(s\) \['root'\]; its options are: csv_path, image_root"):
        load_source("csv", root="x")
    with pytest.raises(ConfigError, match=r"data config has no option\(s\) \['batchsize'\]"):
        DataConfig.from_dict({"batchsize": 3})
    with pytest.raises(ConfigError, match=r"augment has no option\(s\) \['flip'\]"):
        DataConfig.from_dict({"augment": {"flip": True}})
    assert DataConfig.from_dict({"augment": {"rot90": True}}).augment.rot90


def test_a_single_class_split_stops_before_training(tmp_path):
    for i in range(6):
        write_image(tmp_path / "images" / f"{i}.png", seed=i)
    (tmp_path / "one.csv").write_text("image_id,target\n" + "".join(f"{i},0\n" for i in range(6)))
    config = DataConfig(
        source="csv",
        source_options={"csv_path": str(tmp_path / "one.csv"), "image_root": str(tmp_path / "images")},
        image_size=8,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
    )
    with pytest.raises(Exception, match="holds only class"):
        DataModule(config).setup()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_keeps_its_official_test_set():
    config = DataConfig(source="idx", source_options={"split": "all"}, image_size=28, mode="L", progress=False)
    data = DataModule(config).setup()
    counts = data.summary()["counts"]
    assert counts["test"]["rows"] == 10000 and counts["train"]["rows"] + counts["val"]["rows"] == 60000
    assert counts["val"]["per_class"] == [900] * 10  # stratified: 15% of each class's 6,000
    assert data.mean[0] == pytest.approx(0.286, abs=0.003)  # Fashion-MNIST's published mean intensity


@pytest.mark.parametrize(
    ("source", "options", "message"),
    [
        (
            "folder",
            {"root": 2024},
            r"data option root=2024 does not fit source 'folder': it must be text or a path "
            r"\(YAML read 2024 as a number: quote text, e\.g\. root='2024'\)",
        ),
        ("folder", {"root": "x", "follow_symlinks": "yes"}, r"follow_symlinks='yes' .* must be true or false$"),
        ("synthetic_lesions", {"count": 2.5}, r"count=2\.5 .* must be an integer"),
        ("csv", {"csv_path": "a.csv", "classes": [0, 1]}, r"classes=\[0, 1\] .* must be a list of text or null"),
    ],
)
def test_source_options_of_the_wrong_kind_are_refused_by_name(source, options, message):
    with pytest.raises(ConfigError, match=message):
        load_source(source, **options)
    with pytest.raises(ConfigError, match=message):
        DataConfig.from_dict({"source": source, "source_options": options})


def test_mask_fraction_keeps_the_masks_of_a_seeded_share_of_training_images_only(tmp_path):
    def setup(fraction):
        config = DataConfig(
            source="synthetic_lesions",
            source_options={"count": 80, "size": 40},
            image_size=32,
            batch_size=8,
            oversample={"malignant": 2},  # repeated rows keep or lose their mask together
            mask_fraction=fraction,
            progress=False,
            cache_dir=str(tmp_path / "cache"),
        )
        return DataModule(config).setup()

    data = setup(0.25)
    distinct = np.unique(data.rows("train"))
    kept = data.mask_keep
    assert kept.sum() == round(0.25 * len(distinct)) and set(np.flatnonzero(kept)) <= set(distinct)
    assert np.array_equal(setup(0.25).mask_keep, kept)  # seeded: the same images every time
    decoded = data.decoded
    for batch in data.train_loader():
        for row, mask in zip(batch["row"].tolist(), batch["mask"], strict=True):
            stored = torch.from_numpy(np.asarray(decoded.masks[decoded.index[row]]))
            assert torch.equal(mask[0], stored if kept[row] else torch.zeros_like(stored))
    for batch in data.val_loader():  # validation and test keep every mask: they are what maps are scored on
        stored = np.stack([decoded.masks[decoded.index[row]] for row in batch["row"].tolist()])
        assert torch.equal(batch["mask"][:, 0], torch.from_numpy(stored))
    assert data.summary()["train_rows_with_masks"] == kept.sum()
    assert setup(1.0).mask_keep is None and setup(1.0).summary()["train_rows_with_masks"] is None
    with pytest.raises(ConfigError, match=r"data.mask_fraction=1.5 must lie in \[0, 1\]"):
        setup(1.5)


def test_undersampling_before_the_split_samples_the_whole_set_and_leaves_no_row_unaccounted(tmp_path):
    """The AttnVGG melanoma tutorial samples its benign images before splitting 80/20; the default
    samples the training split only. Sampled-out rows are ``unused`` in split.csv, in no split."""

    def setup(before):
        config = DataConfig(
            source="synthetic_lesions",
            source_options={"count": 120, "size": 40},
            image_size=32,
            val_fraction=0.2,
            test_fraction=0.0,
            undersample={"benign": 40},
            undersample_before_split=before,
            progress=False,
            cache_dir=str(tmp_path / "cache"),
        )
        return DataModule(config).setup()

    after, before = setup(False), setup(True)
    labels = before.manifest.labels
    benign = before.manifest.classes.index("benign")
    names = np.array(before.split_names())
    used = names != "unused"
    assert int((labels[used] == benign).sum()) == 40  # 40 benign in all, across train and val
    assert int((labels[~used] != benign).sum()) == 0  # only benign rows were sampled out
    assert set(before.rows("train")) | set(before.rows("val")) == set(np.flatnonzero(used))
    val_share = len(before.rows("val")) / used.sum()
    assert abs(val_share - 0.2) < 0.05
    assert int((labels[after.rows("train")] == benign).sum()) == 40  # the default: 40 benign in training alone
    assert "unused" not in after.split_names()
    assert np.array_equal(setup(True).split_names(), names)  # seeded
    before.write(tmp_path / "run")
    written = (tmp_path / "run" / "split.csv").read_text()
    assert written.count(",unused") == int((~used).sum())
