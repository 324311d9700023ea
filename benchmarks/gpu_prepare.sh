#!/usr/bin/env bash
# Run on the CPU machine before a GPU lease: fetches the wheels the GPU machine lacks into .whl/
# and, given that machine's torch wheel, prebuilds ssrvg_ext/_C for its python + torch into
# .gpu_prebuilt/ (benchmarks/gpu_check.sh then skips its build step). Both folders are ignored by
# git; carry them to the GPU machine.
#
#   benchmarks/gpu_prepare.sh                                   # wheels only
#   TORCH_WHEEL=/path/torch-2.11.0-cp312-...whl GPU_PY=python3.12 benchmarks/gpu_prepare.sh
set -eu
cd "$(dirname "$0")/.."
ROOT=$PWD
PYVER=${PYVER:-3.12}
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pycocotools
ls -la .whl

if [ -n "${TORCH_WHEEL:-}" ]; then
  GPU_PY=${GPU_PY:-python$PYVER}
  VENV=${GPU_VENV:-/tmp/ssrvg_gpu_venv}
  test -x "$VENV/bin/python" || "$GPU_PY" -m venv "$VENV"
  # The torch wheel's CUDA libraries come with it; the lock does not apply to this foreign torch.
  PIP_CONSTRAINT= "$VENV/bin/python" -m pip install -q "$TORCH_WHEEL" ninja numpy pybind11 wheel "setuptools<82"
  SRC=$(mktemp -d)
  git ls-files -z | xargs -0 -I{} cp --parents {} "$SRC"   # the tracked sources, no local build outputs
  (cd "$SRC" && MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1 \
     "$VENV/bin/python" setup.py -q build_ext --inplace)
  mkdir -p .gpu_prebuilt
  rm -f .gpu_prebuilt/*
  cp "$SRC"/ssrvg_ext/_C*.so "$SRC"/ssrvg_ext/_build_info.json .gpu_prebuilt/
  rm -rf "$SRC"
  ls -la .gpu_prebuilt
fi
