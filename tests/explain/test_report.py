"""The HTML report, opened in a real browser: headless Chromium through chromedriver."""

import base64
import html
import re

import pytest

from attnscope.engine.run import Run
from attnscope.explain.report import ReportOptions, write_report
from attnscope.htmlpage import RESEARCH_USE
from tests.browser import browser

SECTIONS = ("config", "metrics", "plots", "calibration", "referral", "curves", "scores", "gallery")


@pytest.fixture(scope="module")
def report(trained_run):
    return write_report(Run.open(trained_run, progress=False), ReportOptions(per_group=2, score_images=6, steps=4)).path


def test_the_report_is_one_self_contained_file(report):
    page = report.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) >= 5 and all(s.startswith("data:image/png;base64,") for s in sources)
    for source in sources:
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("attention:pool3", "attention:pool4", "gradcam", "pointing_game", "deletion_auc"):
        assert name in page
    assert "false positive" in page or "false negative" in page or "true positive" in page
    assert "none: the maps are learned from the labels alone" in page  # the run had no attention supervision
    assert html.escape(RESEARCH_USE) in page
    assert "Temperature scaling (Guo et al. 2017)" in page and "validation, calibrated" in page
    assert "bootstrap (percentile) with 1000 resamples" in page and "<th>DeLong</th>" in page
    assert "<th>sanity</th>" in page and "Adebayo et al." in page  # each method's maps checked and flagged
    assert "<th>coverage</th><th>malignant</th>" in page and "<td>100%</td>" in page  # the referral curve


def test_the_report_says_which_masks_supervised_the_attention():
    from types import SimpleNamespace

    from attnscope.engine.config import load_config
    from attnscope.explain.report import supervision_text

    config = load_config(None, ["supervision.weights={pool3: 0.1}", "supervision.kind=energy"])
    summary = {"counts": {"train": {"rows": 200}}, "train_rows_with_masks": None}
    run = SimpleNamespace(config=config, summary=summary)
    assert supervision_text(run) == (
        "energy loss between the lesion masks and pool3 (weight 0.1), from the masks of every training image (200)"
    )
    run.summary = dict(summary, train_rows_with_masks=20)
    run.config = load_config(None, ["supervision.weights={pool3: 0.1}", "data.mask_fraction=0.1"])
    assert supervision_text(run).endswith("from the masks of 20 of 200 training images (data.mask_fraction 0.1)")
    run.config = load_config(None, ["supervision.consistency={pool3: 1.0}"])
    assert supervision_text(run) == (
        "attention consistency under the training augmentation (Guo et al. 2019) on pool3 (weight 1.0)"
    )
    run.config = load_config(None, ["supervision.weights={pool4: 0.5}", "supervision.kind=self_focal"])
    assert supervision_text(run) == (
        "self-guided focal attention loss on pool4 (weight 0.5) (no masks; threshold 0.5, ignore_th 0.1, gamma 2.0)"
    )


@pytest.mark.e2e
def test_the_report_renders_in_chromium_without_errors(report, tmp_path):
    driver = browser()
    try:
        driver.get(report.resolve().as_uri())
        errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
        assert errors == []
        present = driver.execute_script("return Array.from(document.querySelectorAll('section')).map(s => s.id)")
        assert list(present) == list(SECTIONS)
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert len(images) >= 5
        for alt, complete, width, height in images:
            assert complete and width > 0 and height > 0, alt
        assert driver.execute_script("return document.querySelector('#metrics table').rows.length") > 5
        screenshot = tmp_path / "report.png"
        assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_the_reports_data_row_reads_as_options_not_as_a_python_dict():
    from attnscope.explain.report import data_text

    assert data_text("csv", {"csv_path": "a.csv", "classes": ["A", "B"]}) == "csv: csv_path=a.csv, classes=[A, B]"
    assert data_text("synthetic_lesions", {}) == "synthetic_lesions"
