"""Screenshots of the built documentation site in headless Chromium: the home page, a guide, a reference page.

    make docs && .venv/bin/python docs/screenshots.py site docs/images

The test of the site (tests/docs/test_site.py) takes the same screenshots into a temporary folder; the
committed ones under docs/images/ are this script's, taken when the pages changed.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

PAGES = {
    "site-home.png": "index.html",
    "site-guide.png": "guides/clinical-numbers.html",
    "site-reference.png": "reference/config.html",
}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # one line per file fetched is noise here
        pass


@contextlib.contextmanager
def served(site: Path) -> Iterator[str]:
    """The built ``site`` served over HTTP on a free local port (search needs a server), as its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def take_screenshots(driver, base_url: str, out: Path) -> list[Path]:
    """Each page of ``PAGES`` opened from ``base_url`` by ``driver`` and saved under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    taken = []
    for name, page in PAGES.items():
        driver.get(base_url + page)
        if not driver.save_screenshot(str(out / name)):
            raise RuntimeError(f"Chromium could not save a screenshot of {page}")
        taken.append(out / name)
    return taken


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.browser import browser

    driver = browser("1280,900")
    try:
        with served(Path(sys.argv[1])) as base_url:
            for path in take_screenshots(driver, base_url, Path(sys.argv[2])):
                print(path)
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
