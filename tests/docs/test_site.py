"""The documentation site builds strictly, every page is reached from its navigation, the reference pages
hold everything the code defines, the tutorial ran, and the pages render in Chromium."""

import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from attnscope.cli import build_parser
from attnscope.engine.config_keys import config_keys
from attnscope.models import list_models
from tests.browser import browser

WebDriverWait = pytest.importorskip("selenium.webdriver.support.wait").WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def nav_pages(items) -> list[str]:
    """Every page the navigation of mkdocs.yml names, in order."""
    found = []
    for item in items:
        for value in item.values() if isinstance(item, dict) else [item]:
            found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def text_of(page: Path) -> str:
    """The visible text of a built page, roughly: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    built = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=environment)
    assert built.returncode == 0, built.stderr[-3000:]
    return out


def test_every_page_of_the_navigation_is_built_and_every_source_page_is_in_it(site):
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.Loader)
    pages = nav_pages(config["nav"])
    for page in pages:
        assert (site / Path(page).with_suffix(".html")).is_file(), page
    written = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")} | {"tutorial.py"}
    generated = {"reference/config.md", "reference/registries.md", "changelog.md"}
    assert written | generated == set(pages)


def test_the_reference_holds_every_verb_config_key_and_model(site):
    cli = text_of(site / "reference" / "cli.html")
    verbs = next(a for a in build_parser()._actions if a.dest == "verb").choices
    for verb in verbs:
        assert f"attnscope {verb}" in cli and f"usage: attnscope {verb}" in cli, verb
    config = text_of(site / "reference" / "config.html")
    for key in config_keys():
        assert key.key in config, key.key
    registries = text_of(site / "reference" / "registries.html")
    assert all(name in registries for name in list_models())
    api = text_of(site / "reference" / "api.html")
    for name in ("Run", "evaluate", "explain", "build_index", "load_config", "ModelService"):
        assert name in api


def test_the_tutorial_ran_and_its_outputs_are_on_its_page(site):
    page = text_of(site / "tutorial.html")
    assert re.search(r"test AUC 0\.\d{3}, sensitivity \d\.\d\d, specificity \d\.\d\d", page)
    assert re.search(r"\d+ images indexed", page)
    assert "threshold (chosen on validation)" in page
    assert "Traceback (most recent call last)" not in page


def test_no_page_a_user_reads_carries_bookkeeping(site):
    sources = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    for source in sources:
        text = source.read_text(encoding="utf-8")
        assert not re.search(r"\bissue #?\d+|\bgoals? (?:is |are )?(?:not )?met\b|\bNOT met\b", text, re.I), source
    assert "For research use" in text_of(site / "index.html")
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_the_readme_links_point_at_files_of_the_repository():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(((?!https?:)[^)#]+)", readme)
    assert targets
    for target in targets:
        assert (ROOT / target).exists(), target


def test_home_guide_and_reference_render_in_chromium(site, tmp_path):
    spec = importlib.util.spec_from_file_location("screenshots", ROOT / "docs" / "screenshots.py")
    screenshots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshots)
    driver = browser("1280,900")
    try:
        with screenshots.served(site) as base_url:
            taken = screenshots.take_screenshots(driver, base_url, tmp_path)
            errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
            assert errors == []
            assert driver.execute_script("return document.querySelectorAll('nav.md-nav a').length") > 20
            assert "Config keys" in driver.title
            driver.get(base_url + "index.html?q=calibration")  # the search, answered from the built index
            WebDriverWait(driver, 20).until(
                lambda d: d.execute_script("return document.querySelectorAll('.md-search-result__item').length") > 0
            )
    finally:
        driver.quit()
    assert [path.name for path in taken] == list(screenshots.PAGES)
    assert all(path.stat().st_size > 20_000 for path in taken)
