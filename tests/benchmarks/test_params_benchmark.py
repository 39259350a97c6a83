"""The parameter table script covers every model, checks the papers' counts, and states the point of
Jetley et al. 2018 that VGG's dense layers hold most of its parameters."""

import json

import pytest

import attnscope
from tests.benchmarks import bench, run_in_root

BENCH = bench("params")


@pytest.fixture(scope="module")
def rows():
    result = run_in_root([*BENCH], capture_output=True, text=True, check=True)
    return {row["model"]: row for row in map(json.loads, result.stdout.splitlines())}


def test_one_record_per_model_plus_the_dense_vgg(rows):
    assert set(rows) == set(attnscope.list_models()) | {"vgg16_bn_dense"}
    assert rows["vgg16_bn_dense"]["params"] == 138_365_992  # torchvision's vgg16_bn
    assert rows["vgg16_bn_dense"]["ratio_to_vgg16_bn"] > 9
    assert rows["se_resnet50"]["ratio_to_resnet50"] == round(28_088_024 / 25_557_032, 3)


def test_every_count_a_paper_publishes_is_met_within_one_percent(rows):
    checked = {name: row["ratio_to_published"] for name, row in rows.items() if "published_params" in row}
    assert set(checked) >= {"se_resnet101", "cbam_resnet101", "local_resnet38", "resnet101"}
    assert all(abs(ratio - 1) <= 0.01 for ratio in checked.values()), checked  # papers print 3-4 digits
    assert rows["resnet101"]["params"] == 44_549_160  # torchvision's resnet101


def test_the_markdown_table_has_a_row_per_record(rows):
    # the README's copy is rendered by `python -m benchmarks.params --markdown`; the README test runs it
    from benchmarks.params import markdown

    lines = markdown(list(rows.values())).splitlines()
    assert lines[0].startswith("| model |") and len(lines) == 2 + len(rows)
    assert "| `resnet101` | 44,549,160 |  | 44.55 M (x1.000) |" in "\n".join(lines)
