# The two main commands (see README.md):
#   make test    set up .venv, build the extension (CUDA kernels too where torch has CUDA), run the tests
#   make train   arrives with the training issue
# Everything installs into .venv; FORCE_CUDA=0 make test builds CPU-only kernels.

PY      ?= python3
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
PIP     := $(PYTHON) -m pip
PYTEST_ARGS ?=
SOURCES := setup.py tools/cuda_toolkit.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
BUILD_KIND := $(VENV)/.build-$(if $(filter 0,$(FORCE_CUDA)),cpu,auto)

.PHONY: setup build test bench info clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: requirements.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -r requirements.txt
	$(PYTHON) tools/cuda_toolkit.py --install
	touch $@

# First build: the documented editable install. Later builds: incremental ninja rebuild in place.
build: $(BUILD_KIND)

$(BUILD_KIND): $(VENV)/.setup-done $(SOURCES)
	@if [ -f $(VENV)/.installed ]; then \
	  MAX_JOBS=$${MAX_JOBS:-2} $(PYTHON) setup.py -q build_ext --inplace; \
	else \
	  MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -e . --no-build-isolation --no-deps && touch $(VENV)/.installed; \
	fi
	rm -f $(VENV)/.build-*
	touch $@
	$(PYTHON) -m ssrvg_ext.info

test: build
	$(PYTHON) -m pytest python_tests $(PYTEST_ARGS)

bench: build
	$(PYTHON) benchmarks/bench_rle.py

info:
	$(PYTHON) -m ssrvg_ext.info

clean:
	rm -rf build ssrvg_ext/_C*.so ssrvg_ext/_build_info.json $(VENV)/.build-* $(VENV)/.installed
