# One command each: `make test`, `make bench`. Both set up .venv on first use
# (only python3 needed) and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# CI pins these (ruff too: its formatting changes between releases); the package
# itself supports torch >= 2.8 and triton >= 3.4 (pyproject.toml), which test-compat checks.
PINS   := torch==2.13.0 triton==3.9.0 ruff==0.17.6
# The package's extras every venv here installs (test-compat's too).
EXTRAS := dev,deploy

.PHONY: setup test lint format bench bench-full demo clean gpu-check test-cuda-dry-run \
	test-compat test-compat-oldest test-compat-gpu compat-venvs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PINS)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]' $(PINS)
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

# Compat job: two more version pairs, each in its own venv under .venv-compat/ (CUDA
# builds of torch from the registry, a few GB each; they run on CPU). numpy < 2.4: the
# interpreter of triton < 3.7 fails with newer numpy (ddsm_triton._backend says so).
#   oldest: the floors of pyproject.toml. The reference, grid_sample, module and compile
#           tests, and the interpreted kernels at their tiny shapes (a subset, for time).
#   gpu:    the GPU machine's pair. The whole suite, and the static kernel report.
COMPAT        := .venv-compat
OLDEST_PAIR   := torch==2.8.0 triton==3.4.0
GPU_PAIR      := torch==2.11.0 triton==3.6.0
OLDEST_VENV   := $(COMPAT)/torch2.8-triton3.4
GPU_VENV      := $(COMPAT)/torch2.11-triton3.6
# By pattern, so that split or renamed test files stay in; the kernel report is left to
# the GPU pair (it is per triton version).
OLDEST_TESTS  := $(wildcard \
	tests/test_reference*.py tests/test_torch_backend*.py tests/test_module*.py \
	tests/test_validation*.py tests/test_interpreter*.py tests/test_integration_compile*.py \
	tests/test_kernels_*.py)
VERSIONS      := import numpy, torch, triton; \
	print(f'torch {torch.__version__}, triton {triton.__version__}, numpy {numpy.__version__}')

# $(call compat_venv,DIR,PINS): DIR holds a venv with PINS, numpy < 2.4 and this package.
define compat_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -e '.[$(EXTRAS)]' $(2) 'numpy<2.4'
	touch $(1)/.installed-stamp
endef

$(OLDEST_VENV)/.installed-stamp: pyproject.toml Makefile
	$(call compat_venv,$(OLDEST_VENV),$(OLDEST_PAIR))

$(GPU_VENV)/.installed-stamp: pyproject.toml Makefile
	$(call compat_venv,$(GPU_VENV),$(GPU_PAIR))

# Both venvs (downloads, mostly): .ci/run builds them while the main suite runs.
compat-venvs: $(OLDEST_VENV)/.installed-stamp $(GPU_VENV)/.installed-stamp

test-compat: test-compat-oldest test-compat-gpu

test-compat-oldest: $(OLDEST_VENV)/.installed-stamp
	$(OLDEST_VENV)/bin/python -c "$(VERSIONS)"
	TRITON_INTERPRET=1 $(OLDEST_VENV)/bin/python -m pytest -q -p no:cacheprovider --continue-on-collection-errors --durations=5 $(OLDEST_TESTS)

test-compat-gpu: $(GPU_VENV)/.installed-stamp
	$(GPU_VENV)/bin/python -c "$(VERSIONS)"
	$(GPU_VENV)/bin/python -m ddsm_triton.bench.kernel_report --arch 90
	$(GPU_VENV)/bin/python -m ddsm_triton.bench.kernel_report --arch 80
	TRITON_INTERPRET=1 $(GPU_VENV)/bin/python -m pytest -q -p no:cacheprovider --continue-on-collection-errors --durations=5

clean:
	rm -rf $(VENV) $(COMPAT) build *.egg-info .pytest_cache .ruff_cache .hypothesis
