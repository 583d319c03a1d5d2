# Two entry points for a fresh clone: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.repdeploy-installed

.PHONY: setup demo demo-qat test bench serving-check clean

setup: $(STAMP)

# torch is pinned here (not in pyproject) to the local CPU build: an unpinned torch pulls a
# multi-GB CUDA build. Installing it first makes the package's wide range a no-op.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/repdeploy pipeline -o runs/demo

# The stress pair, where PTQ costs RepVGG points and QAT wins them back (docs/benchmarks.md).
demo-qat: setup
	$(VENV)/bin/repdeploy pipeline --zoo stress --qat -o runs/stress

test: setup
	$(PY) -m pytest -q -n auto

bench: setup
	$(PY) benchmarks/run_all.py

# The serving runtime in a venv without torch (numpy, onnxruntime, Pillow, then repdeploy with
# --no-deps: the route docs/serving.md documents), against `repdeploy eval` on the same JPEGs.
# About 25 s of CPU (1.7 min of wall time on the loaded 2-core machine) with pip's cache warm;
# too long for the suite, which runs the
# same check with torch blocked from importing instead (tests/test_serving.py).
SERVE_VENV ?= runs/serving-venv
serving-check: setup
	rm -rf $(SERVE_VENV)
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q numpy onnxruntime Pillow
	$(SERVE_VENV)/bin/python -m pip install -q --no-deps .
	@! $(SERVE_VENV)/bin/python -c "import torch" 2>/dev/null || (echo "error: torch is importable in $(SERVE_VENV)"; exit 1)
	$(PY) tools/serving_check.py --serving-python $(SERVE_VENV)/bin/python --work runs/serving-check

clean:
	rm -rf $(VENV) runs build *.egg-info
