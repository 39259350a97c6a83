"""Subgroups: the values of a CSV column or DICOM tag per evaluated image, numbers banded at quartiles, and each
subgroup's metrics equal to those computed on its images alone."""

import numpy as np
import pytest
import torch
from PIL import Image

from attnscope.data.sources.registry import load_source
from attnscope.engine.intervals import BootstrapOptions
from attnscope.engine.metrics import summarize
from attnscope.engine.subgroups import MISSING, banded, subgroup_metrics, subgroup_values
from attnscope.errors import ConfigError, DataError


def test_ages_are_cut_into_four_bands_at_their_quartiles_and_categories_stay():
    ages = [str(a) for a in range(20, 100, 5)] + [MISSING]
    bands = banded(ages)
    assert bands[-1] == MISSING and len(set(bands[:-1])) == 4
    assert bands[0] == "[20, 38.75)" and bands[-2] == "[76.25, 95]"
    assert banded(["063Y", "070Y"] * 5) == ["063Y", "070Y"] * 5  # two values: categories, not bands
    assert banded(["north", "south", MISSING]) == ["north", "south", MISSING]


def test_each_subgroups_metrics_are_those_of_its_images_alone():
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.5).astype(np.int64)
    probs = np.clip(0.35 * labels + rng.random(200) * 0.65, 0, 1).astype(np.float32)
    sites = ["a" if i % 3 else "b" for i in range(200)]
    found = subgroup_metrics(probs, labels, "binary", ["n", "p"], 0.5, sites, None, BootstrapOptions(50))
    whole = summarize(torch.from_numpy(probs), torch.from_numpy(labels), "binary", ["n", "p"], threshold=0.5)["auc"]
    for site in ("a", "b"):
        chosen = np.array([s == site for s in sites])
        alone = summarize(torch.from_numpy(probs[chosen]), torch.from_numpy(labels[chosen]), "binary", ["n", "p"],
                          threshold=0.5)  # fmt: skip
        assert found[site]["images"] == chosen.sum() and found[site]["auc"] == pytest.approx(alone["auc"])
        assert found[site]["sensitivity_at_threshold"] == pytest.approx(alone["sensitivity_at_threshold"])
        assert found[site]["auc_gap"] == pytest.approx(alone["auc"] - whole)
        low, high = found[site]["intervals"]["auc"]
        assert low <= high


def test_subgroups_come_from_the_csv_line_of_each_image_or_its_dicom_header(tmp_path):
    from tests.data.dicom_files import write_dicom

    lines = ["image_id,target,site,age"]
    for number in range(6):
        Image.new("L", (8, 8), number * 30).save(tmp_path / f"i{number}.png")
        lines.append(f"i{number}.png,{number % 2},{'north' if number < 3 else 'south'},{30 + number}")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    manifest = load_source("csv", csv_path=str(tmp_path / "data.csv"))
    assert subgroup_values(manifest, [5, 0, 3], "site") == ["south", "north", "south"]
    with pytest.raises(DataError, match=r"no column for by='scanner'.*--by takes one of them"):
        subgroup_values(manifest, [0], "scanner")
    write_dicom(tmp_path / "a.dcm", np.zeros((4, 4), np.uint16), Manufacturer="ACME")
    write_dicom(tmp_path / "b.dcm", np.zeros((4, 4), np.uint16))
    (tmp_path / "d.csv").write_text("image_id,target\na.dcm,0\nb.dcm,1\ni0.png,0\n")
    dicom = load_source("csv", csv_path=str(tmp_path / "d.csv"))
    assert subgroup_values(dicom, [0, 1, 2], "dicom:Manufacturer") == ["ACME", MISSING, MISSING]
    memory = load_source("synthetic_lesions", count=4, size=16)
    with pytest.raises(ConfigError, match="do not come from a CSV"):
        subgroup_values(memory, [0], "site")
