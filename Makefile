# One command each: `make test`, `make bench`. Both set up .venv on first use
# (only python3 needed) and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# CI pins these (ruff too: its formatting changes between releases); the package
# itself supports torch >= 2.6 and triton >= 3.3.
PINS   := torch==2.13.0 triton==3.9.0 ruff==0.17.6

.PHONY: setup test lint format bench bench-full demo clean gpu-check test-cuda-dry-run

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PINS)
	$(PY) -m pip install --quiet -e '.[dev,deploy]' $(PINS)
	touch $(STAMP)

# The Triton kernels run on CPU tensors through the interpreter here. The second run
# is the CUDA tier's dry run (its test code on CPU, tiny shapes, ~1 min), so the tier a
# lent GPU runs keeps working as the kernels change.
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q
	$(MAKE) --no-print-directory test-cuda-dry-run

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	$(PY) examples/demo.py

# Benchmarks (the `bench` extra: pandas, matplotlib, tqdm): `make bench` runs --quick (a few
# minutes on 2 CPU cores) into bench/results/cpu/; `make bench-full` or `make bench
# BENCH=--full` the whole sweep. Without a GPU the bench switches the Triton interpreter on
# itself, for parity checks only, never for timings.
BENCH ?= --quick

bench: $(STAMP)
	$(PY) -m ddsm_triton.bench $(BENCH)

bench-full: $(STAMP)
	$(PY) -m ddsm_triton.bench --full

# On a machine with a CUDA GPU whose $(PYTHON) already holds torch, triton, pytest, pandas,
# matplotlib and tqdm: no venv, no pins, no registry. Installs this checkout editable, then
# runs the CUDA tier and the GPU profile, each under a time limit (the whole check ends
# within ~10 minutes), into bench/results/<card>/ (see bench/gpu_check.py).
# GPU_CHECK_ARGS=--dry-run checks the plumbing on CPU with toy shapes.
GPU_CHECK_ARGS ?=

gpu-check:
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PYTHON) -m ddsm_triton.bench.gpu_check $(GPU_CHECK_ARGS)

# The CUDA tier's test code on CPU: interpreted kernels, tiny shapes (~3 min on 2 cores).
test-cuda-dry-run: $(STAMP)
	DDSM_CUDA_DRY_RUN=1 $(PY) -m pytest -q -m cuda -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
