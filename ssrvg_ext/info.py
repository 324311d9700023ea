"""``python -m ssrvg_ext.info``: how this install was built and which kernels it has."""

import json
import os
import sys

import torch

from . import extension


def build_info() -> dict:
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def registered_ops() -> list[str]:
    return sorted({op for op, _ in extension._KERNELS})


def main() -> int:
    print(f"ssrvg_ext {sys.modules['ssrvg_ext'].__version__ if 'ssrvg_ext' in sys.modules else ''}".strip())
    print(f"runtime torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU available: {torch.cuda.is_available()}")
    info = build_info()
    if info:
        print("build:")
        for k, v in info.items():
            print(f"  {k:15s} {v}")
    else:
        print("build: no build record (the extension was not built from this tree)")
    if not extension.AVAILABLE:
        print(f"compiled ops: NOT LOADED ({extension._LOAD_ERROR}); all ops use the references")
        return 1
    print(f"{'op':24s} CPU  CUDA")
    for op in registered_ops():
        cpu = "yes" if extension.has_kernel(op, "cpu") else "-"
        cuda = "yes" if extension.has_kernel(op, "cuda") else "-"
        print(f"{op:24s} {cpu:4s} {cuda}")
    return 0


if __name__ == "__main__":
    import ssrvg_ext  # noqa: F401  (version, and the same import path users take)

    sys.exit(main())
