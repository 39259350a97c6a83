"""The viewer page in a real browser (headless Chromium): upload an image, see what predict says."""

import csv
import json
import os
import time
from pathlib import Path

import pytest

from attnscope.engine.inference import PredictOptions, predict
from attnscope.engine.run import Run
from attnscope.serve import ModelService
from attnscope.serve.app import ServeOptions, create_app
from tests.explain.test_report import browser
from tests.serve.server import BackgroundServer

SCREENSHOT = "serve-page.png"


def predicted_with_the_cli_library(run_root: Path, image: Path, out: Path) -> dict:
    with Run.open(run_root, progress=False) as run:
        written = predict(run, PredictOptions(images=(image,), out=out))
    with open(written.out, newline="") as handle:
        return next(csv.DictReader(handle))


def wait_for(driver, script: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"the page never satisfied: {script}")


@pytest.mark.e2e
def test_the_page_shows_the_probability_maps_and_similar_cases_of_an_upload(service, image_files, tmp_path):
    # the maps' sanity checks as explain left them: the page flags the method they flagged
    checked = service.run.root / "explain" / "sanity.json"
    checked.parent.mkdir(exist_ok=True)
    flagged = {"gradcam": {"flag": "this map barely depends on the weights"}, "attention:pool3": {"flag": ""}}
    checked.write_text(json.dumps({"weights_sha256": service.weights_sha256, "methods": flagged}))
    service = ModelService(service.run, service.index)
    driver = browser()
    try:
        with BackgroundServer(create_app(service, ServeOptions())) as url:
            driver.get(url + "/")
            wait_for(driver, "return document.querySelectorAll('#method option').length > 0")
            driver.find_element("id", "file").send_keys(str(image_files[0]))
            state = wait_for(
                driver, "return ['done', 'failed'].includes(document.body.dataset.state) && document.body.dataset.state"
            )
            assert state == "done", driver.find_element("id", "error").text
            shown = driver.find_element("id", "probability")
            driver.execute_script(
                "const slider = document.getElementById('opacity');"
                "slider.value = 70; slider.dispatchEvent(new Event('input'))"
            )
            # the screenshot is the test's artifact: kept in pytest's folder, or where ATTNSCOPE_ARTIFACTS says
            screenshot = Path(os.environ.get("ATTNSCOPE_ARTIFACTS", tmp_path)) / SCREENSHOT
            assert driver.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
            )
            heat = driver.execute_script(
                "return Array.from(document.querySelectorAll('img.heat')).map(i => i.style.opacity)"
            )
            errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
            value, label = float(shown.get_attribute("data-value")), shown.get_attribute("data-class")
            predicted = driver.find_element("id", "predicted").text
            notice = driver.find_element("css selector", "p.research-use").text
            flags = [element.text for element in driver.find_elements("css selector", "#maps p.flag")]
            similar = driver.execute_script("return document.querySelectorAll('#similar figure').length")
            driver.execute_script(  # the map of a chosen class (a finding), not the predicted one
                "const s = document.getElementById('target'); s.value = 'benign'; s.dispatchEvent(new Event('change'))"
            )
            caption = wait_for(
                driver,
                "const c = document.querySelector('#maps figcaption'); return document.body.dataset.state === 'done'"
                " && c.textContent.includes('explained: benign') && c.textContent",
            )
    finally:
        driver.quit()
    row = predicted_with_the_cli_library(service.run.root, image_files[0], tmp_path / "predictions.csv")
    assert value == pytest.approx(float(row[f"prob_{label}"]), abs=1e-6)
    assert predicted.startswith(f"predicted: {row['predicted']} (at the validation threshold")
    assert errors == [] and caption.startswith("input; explained: benign (")
    assert notice.startswith("For research use only, not for diagnosis")
    assert flags == ["(!) this map barely depends on the weights"]  # under gradcam only
    maps = [alt for alt, *_ in images if alt.startswith(("attention:", "gradcam"))]
    assert maps == ["attention:pool3", "attention:pool4", "gradcam"]
    assert heat == ["0.7"] * 3  # the opacity slider moved every heat map
    assert len(images) >= 1 + 2 * 3 + similar and similar == 8
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, alt
