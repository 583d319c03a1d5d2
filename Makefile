# Two entry points for a fresh clone: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.repdeploy-installed

.PHONY: setup demo demo-qat test lint bench serve-check serving-check clean

setup: $(STAMP)

# torch is pinned here (not in pyproject) to the local CPU build: an unpinned torch pulls a
# multi-GB CUDA build. Installing it first makes the package's wide range a no-op.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# TensorRT's type stubs, which tests/test_trt_stubs.py checks the TensorRT double against. Not
	# in the dev extra: their metadata requires TensorRT itself (GBs of CUDA libraries).
	$(PY) -m pip install -q --no-deps tensorrt-stubs==10.13.0.35.1
	touch $(STAMP)

# One ORT intra-op thread per session, as a service runs one worker per core: with two threads on
# this 2-core machine the timing thread and ORT's pool contend, and a session's level moved 5-12 %
# between fresh sessions (2 of 3 demo runs flagged noisy); with one, 3 of 3 were not
# (docs/benchmarks.md, "make demo").
demo: setup
	$(VENV)/bin/repdeploy pipeline -o runs/demo --threads 1

# The stress pair, where PTQ costs RepVGG points and QAT wins them back (docs/benchmarks.md).
demo-qat: setup
	$(VENV)/bin/repdeploy pipeline --zoo stress --qat -o runs/stress

test: setup
	$(PY) -m pytest -q -n auto

# The layer contract and the dead-code search on their own (make test runs both, in
# tests/test_layering.py and tests/test_dead_code.py): [tool.importlinter] and [tool.vulture] in pyproject.toml.
lint: setup
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/vulture

bench: setup
	$(PY) benchmarks/run_all.py

# A real tritonserver (2.51, from the nvidia-pytriton wheel) serves a repository that
# `repdeploy package` wrote, on 127.0.0.1, and its answers are checked against local ONNX Runtime
# (docs/triton.md). The wheel pins numpy<2, so it gets its own venv; pip's cache is reused.
SERVE_VENV ?= .venv-serve
SERVE_OUT ?= build/serve-check
$(SERVE_VENV)/.installed:
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q 'nvidia-pytriton==0.7.0' 'onnxruntime>=1.18'
	touch $@

serve-check: setup $(SERVE_VENV)/.installed
	$(PY) tools/triton_serve_check.py prepare $(SERVE_OUT)
	$(SERVE_VENV)/bin/python tools/triton_serve_check.py serve $(SERVE_OUT)

# The serving runtime in a venv without torch (numpy, onnxruntime, Pillow, then repdeploy with
# --no-deps: the route docs/serving.md documents), against `repdeploy eval` on the same JPEGs.
# About 25 s of CPU (1.7 min of wall time on the loaded 2-core machine) with pip's cache warm;
# too long for the suite, which runs the
# same check with torch blocked from importing instead (tests/test_serving.py).
SERVING_VENV ?= runs/serving-venv
serving-check: setup
	rm -rf $(SERVING_VENV)
	$(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/python -m pip install -q numpy onnxruntime Pillow
	$(SERVING_VENV)/bin/python -m pip install -q --no-deps .
	@! $(SERVING_VENV)/bin/python -c "import torch" 2>/dev/null || (echo "error: torch is importable in $(SERVING_VENV)"; exit 1)
	$(PY) tools/serving_check.py --serving-python $(SERVING_VENV)/bin/python --work runs/serving-check

clean:
	rm -rf $(VENV) $(SERVE_VENV) runs build *.egg-info
