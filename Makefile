# Two commands do all set-up on a fresh machine: `make test` and `make demo`.
# The virtual environment is installed once and stamped; it is rebuilt only when
# a dependency file changes, so a second `make test` goes straight to the tests.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch lies in a local wheel folder on the project's machines.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := --disable-pip-version-check -c constraints.txt $(if $(WHEELS),--find-links $(WHEELS),)

# Real data for tests and benchmarks: Fashion-MNIST from Debian's package. Installed
# when missing and this is a root shell with apt (CI, the project's machines);
# elsewhere a note says how, and the tests that need it are skipped.
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: test check demo docs bench lint format clean fashion-mnist chromium

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[test]'
	touch $(STAMP)

fashion-mnist:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "note: Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist);" \
	         "tests that need it are skipped"; \
	  fi; \
	fi

# The report test opens the HTML in a real browser: Debian's chromium and chromedriver,
# installed like the data set above (without them that one test is skipped, saying why).
chromium:
	@if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver"; \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: chromium/chromedriver are not installed (sudo apt-get install chromium chromium-driver);" \
	         "the browser test of the report is skipped"; \
	  fi; \
	fi

# One pytest-xdist worker per core, each on one thread (tests/conftest.py), so that the
# many tests that wait on a process start or a file overlap; `$(PY) -m pytest tests/x.py`
# runs a part serially.
test: $(STAMP) fashion-mnist chromium
	$(PY) -m pytest -q -n auto

# The quick tier, for the edit-test loop: every test but those marked slow (a training, a benchmark's
# test) or e2e (the command line end to end, a second process, a kill, a browser); under 2 minutes on
# 2 cores. The ten slowest it ran are listed, so a test that grew slow is seen and marked.
check: $(STAMP) fashion-mnist
	$(PY) -m pytest -q -n auto -m "not slow and not e2e" --durations=10

# The main job on built-in data: train a small attention VGG on generated lesions,
# evaluate it on the held-out test split, draw its attention; about 2 minutes on 2 cores.
demo: $(STAMP) fashion-mnist
	$(VENV)/bin/attnscope demo --out runs/demo

# The documentation site, from docs/ into site/ (open site/index.html): strict, so a broken link, a page left out
# of the navigation or a failing tutorial cell stops it; the reference pages are generated from the code and
# the tutorial notebook runs (about a minute). The suite builds it too (tests/docs/test_site.py).
MKDOCS_QUIET := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true
docs: $(STAMP)
	$(MKDOCS_QUIET) $(VENV)/bin/mkdocs build --strict --site-dir site

# Lint and types: ruff (rules and format, pyproject.toml's [tool.ruff]) over the package, the
# benchmarks and the tests; mypy over the package at the strictness stated in [tool.mypy].
# CI runs it before the tests; `make format` applies ruff's fixes and formatting.
lint: $(STAMP)
	$(VENV)/bin/ruff check attnscope benchmarks tests docs
	$(VENV)/bin/ruff format --check attnscope benchmarks tests docs
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff check --fix attnscope benchmarks tests docs
	$(VENV)/bin/ruff format attnscope benchmarks tests docs

bench: $(STAMP)
	$(PY) -m benchmarks.layers

clean:
	rm -rf $(VENV) .pytest_cache
