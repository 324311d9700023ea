# The two main commands (see README.md):
#   make test    set up .venv, build the extension (CUDA kernels too where torch has CUDA), run the tests
#   make train   set up, generate the synthetic dataset, train the default config, evaluate, demo picture
#   make train-video   the same for referring video segmentation on the embedded video set (docs/video.md)
# Everything installs into .venv at the versions pinned in constraints.txt (refresh: make lock);
# FORCE_CUDA=0 make test builds CPU-only kernels.

PY      ?= python3
VENV    ?= .venv
PYTHON  := $(VENV)/bin/python
PIP     := $(PYTHON) -m pip
PYTEST_ARGS ?=
SOURCES := setup.py tools/cuda_toolkit.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' 2>/dev/null)
# A sanitized build (DEBUG=asan) only loads into an uninstrumented python with libasan preloaded.
ASAN_RUN := LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1
RUN_PY := $(if $(filter asan,$(DEBUG)),$(ASAN_RUN) )$(PYTHON)
BUILD_KIND := $(VENV)/.build-$(if $(filter asan,$(DEBUG)),asan,$(if $(filter 0,$(FORCE_CUDA)),cpu,auto))

DATA    ?= data/synthetic
RUN     ?= runs/tiny_synthetic
CONFIG  ?= configs/tiny_synthetic.yaml

VDATA   ?= data/synthetic_video
VRUN    ?= runs/tiny_video
VCONFIG ?= configs/tiny_video.yaml

.PHONY: setup build train-build test fuzz train data video-data train-video export web bench info lock clean

setup: $(VENV)/.setup-done

# A changed lock reinstalls; a toolkit is pip-installed (pinned too) only where no complete one
# matching torch's CUDA exists.
$(VENV)/.setup-done: requirements.txt constraints.txt
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip -c constraints.txt
	$(PIP) install -r requirements.txt -c constraints.txt
	PIP_CONSTRAINT=$(CURDIR)/constraints.txt $(PYTHON) tools/cuda_toolkit.py --install
	touch $@

# Re-resolve requirements.txt against today's registry into constraints.txt (then test, commit).
lock:
	$(PY) tools/lock.py

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
	$(RUN_PY) -m ssrvg_ext.info

test: build
	$(PYTHON) -m pytest python_tests $(PYTEST_ARGS)

# The hostile-input suite against a CPU build with AddressSanitizer + UBSan (python is not
# instrumented, so libasan is preloaded). Leaves the sanitized build in place: the next
# `make test` rebuilds the normal one.
fuzz:
	$(MAKE) --no-print-directory build DEBUG=asan FORCE_CUDA=0
	$(ASAN_RUN) $(PYTHON) -m pytest python_tests/test_fuzz.py python_tests/test_rle.py python_tests/test_mask_loss.py \
	  python_tests/test_ms_deform_attn.py $(PYTEST_ARGS)

data: $(DATA)/instances.json

# Remade when the generator changes (the files are derived from its code).
$(DATA)/instances.json: ssrvg_ext/data/synthetic/images.py ssrvg_ext/cli/make_synthetic.py | setup
	$(PYTHON) -m ssrvg_ext.cli.make_synthetic --out $(DATA)

# Training needs CUDA kernels only where there is a GPU: without one, make train builds the CPU
# kernels alone (about a minute instead of four), unless a CUDA-enabled build is already there.
train-build: setup
	@if [ -z "$(FORCE_CUDA)" ] && [ ! -f $(VENV)/.build-auto ] && \
	  ! $(PYTHON) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
	  $(MAKE) --no-print-directory build FORCE_CUDA=0; \
	else \
	  $(MAKE) --no-print-directory build; \
	fi

# Resumes an interrupted run (--resume auto); delete $(RUN) to start over.
train: train-build data
	$(PYTHON) -m ssrvg_ext.cli.train --config $(CONFIG) --out $(RUN) --resume auto data.ann_dir=$(DATA) data.image_dir=$(DATA)/images
	$(PYTHON) -m ssrvg_ext.cli.eval --checkpoint $(RUN)/best.pth --split val testB --control val --out-dir $(RUN)
	$(PYTHON) -m ssrvg_ext.cli.demo --checkpoint $(RUN)/best.pth --example $(DATA)/example.json --out $(RUN)/demo.png
	$(PYTHON) -m ssrvg_ext.cli.report $(RUN)

# The trained model as a folder to share (model.safetensors, config.json, tokenizer, README.md card),
# and the web demo on it at http://127.0.0.1:7860/ (README: Sharing a model, and the web demo).
MODEL   ?= models/$(notdir $(RUN))
export:
	$(PYTHON) -m ssrvg_ext.cli.export --checkpoint $(RUN)/best.pth --out $(MODEL) --overwrite

web: export
	$(PYTHON) -m ssrvg_ext.cli.demo --web --model $(MODEL)

video-data: $(VDATA)/meta_expressions/train/meta_expressions.json

$(VDATA)/meta_expressions/train/meta_expressions.json: ssrvg_ext/data/synthetic/videos.py ssrvg_ext/cli/make_synthetic_video.py | setup
	$(PYTHON) -m ssrvg_ext.cli.make_synthetic_video --out $(VDATA)

# Trains on clips, evaluates J&F on valid and testB (and valid with shuffled expressions), draws one clip.
train-video: train-build video-data
	$(PYTHON) -m ssrvg_ext.cli.train --config $(VCONFIG) --out $(VRUN) --resume auto data.ann_dir=$(VDATA) data.image_dir=$(VDATA)
	$(PYTHON) -m ssrvg_ext.cli.eval --checkpoint $(VRUN)/best.pth --split valid testB --control valid --out-dir $(VRUN)
	$(PYTHON) -m ssrvg_ext.cli.demo_video --checkpoint $(VRUN)/best.pth --data $(VDATA) --split valid --out $(VRUN)/demo_strip.png
	$(PYTHON) -m ssrvg_ext.cli.report $(VRUN)

bench: build
	$(PYTHON) benchmarks/bench_rle.py
	$(PYTHON) benchmarks/bench_mask_loss.py
	$(PYTHON) benchmarks/bench_ms_deform_attn.py

info:
	$(PYTHON) -m ssrvg_ext.info

clean:
	rm -rf build ssrvg_ext/_C*.so ssrvg_ext/_build_info.json $(VENV)/.build-* $(VENV)/.installed
