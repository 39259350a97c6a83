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

.PHONY: test demo bench clean

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(PIP_FLAGS) -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Until the training verb exists, the demo runs the most complete path there is:
# every attention layer and model listed; every layer run forward and backward, timed.
demo: $(STAMP)
	@echo "attnscope demo: training is not built yet; running the attention-layer tour and benchmark."
	$(VENV)/bin/attnscope layers
	$(VENV)/bin/attnscope models
	$(PY) benchmarks/layers.py --quick --out runs/demo/layers.jsonl > /dev/null
	@echo
	$(PY) benchmarks/table.py runs/demo/layers.jsonl
	@echo "(JSON records: runs/demo/layers.jsonl)"

bench: $(STAMP)
	$(PY) benchmarks/layers.py

clean:
	rm -rf $(VENV) .pytest_cache
