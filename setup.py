"""Builds ssrvg_ext._C, the C++/CUDA operator library.

Install with ``pip install -e . --no-build-isolation`` (build isolation would pull a second torch
into the build). Environment switches:

  FORCE_CUDA=1 / FORCE_CUDA=0   build the CUDA kernels / build CPU-only, whatever is found
  CUDA_HOME                     the CUDA toolkit to try first (each candidate is verified, see
                                tools/cuda_toolkit.py; rejected ones are printed with the reason)
  TORCH_CUDA_ARCH_LIST          e.g. "9.0" or "8.0;9.0" (default: the local GPUs, else "9.0")
  MAX_JOBS                      parallel compile jobs (ninja)
  NVCC_FLAGS                    extra nvcc flags, space separated
  DEBUG=1                       -O0 -g (and -G -lineinfo for CUDA)
  DEBUG=asan                    -O1 -g -fsanitize=address,undefined for the C++ kernels (run Python
                                with LD_PRELOAD=$(gcc -print-file-name=libasan.so); `make fuzz`)
"""

import glob
import json
import os
import subprocess
import sys
import sysconfig

from setuptools import setup

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, "tools"))
from cuda_toolkit import cudart_link_dir, find_cuda_home, nvcc_version, report  # noqa: E402


def log(msg):
    print(f"[ssrvg_ext setup] {msg}", flush=True)


def decide_cuda():
    """(toolkit or None, reason, rejected candidates with their reasons)."""
    force = os.environ.get("FORCE_CUDA", "")
    if force == "0":
        return None, "FORCE_CUDA=0: CPU-only build", []
    home, why, rejected = find_cuda_home(torch.version.cuda)
    report(home, why, rejected, log)
    if force == "1":
        if home is None:
            sys.exit(f"FORCE_CUDA=1 but {why}. Set CUDA_HOME to a toolkit matching torch.")
        return home, f"FORCE_CUDA=1: {why}", rejected
    if home is None:
        return None, f"CPU-only build: {why} (set FORCE_CUDA=1 with CUDA_HOME to insist)", rejected
    return home, why, rejected


CUDA_HOME, REASON, REJECTED = decide_cuda()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # read by torch.utils.cpp_extension at import
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

DEBUG = os.environ.get("DEBUG", "0") == "1"
ASAN = os.environ.get("DEBUG", "0") == "asan"
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
log(REASON)


def extension():
    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cpp"), recursive=True))]
    cuda_sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))]
    cxx = ["-O0", "-g"] if DEBUG else (["-O1", "-g"] + SANITIZE if ASAN else ["-O3"])
    cxx += ["-fno-trapping-math", "-fno-math-errno"]  # lets GCC vectorise selects and math (same results)
    cxx += ["-fopenmp"] if sys.platform != "darwin" else []  # torch.utils.cpp_extension picks -std
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc")],
                  extra_link_args=(["-fopenmp"] if sys.platform != "darwin" else []) + (SANITIZE if ASAN else []))
    if not CUDA_HOME:
        return CppExtension("ssrvg_ext._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    nvcc = ["-O0", "-G", "-lineinfo"] if DEBUG else ["-O3", "-lineinfo"]
    nvcc += ["--expt-relaxed-constexpr"]
    nvcc += os.environ.get("NVCC_FLAGS", "").split()
    link_dir = cudart_link_dir(CUDA_HOME, os.path.join(ROOT, "build"))
    if link_dir:
        kwargs["library_dirs"] = [link_dir]
    log(f"CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(local GPUs)')}: {', '.join(cuda_sources)}")
    return CUDAExtension("ssrvg_ext._C", sources + cuda_sources,
                         extra_compile_args={"cxx": cxx + ["-DSSRVG_WITH_CUDA"], "nvcc": nvcc}, **kwargs)


def write_build_info():
    """Facts `python -m ssrvg_ext.info` prints; generated, not tracked."""
    compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    try:
        compiler_version = subprocess.run(compiler.split() + ["--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        compiler_version = compiler
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_build": bool(CUDA_HOME),
        "cuda_home": CUDA_HOME,
        "nvcc": ".".join(map(str, nvcc_version(CUDA_HOME))) if CUDA_HOME else None,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if CUDA_HOME else None,
        "cxx": compiler_version,
        "debug": "asan" if ASAN else DEBUG,
        "decision": REASON,
        "rejected": list(REJECTED),
    }
    with open(os.path.join(ROOT, "ssrvg_ext", "_build_info.json"), "w") as f:
        json.dump(info, f, indent=2)


write_build_info()

# Name, version, dependencies and console scripts: pyproject.toml. This file adds the extension.
setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
