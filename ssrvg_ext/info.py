"""``python -m ssrvg_ext.info``: how this install was built and which kernels it has."""

from __future__ import annotations

import json
import os
import platform
import sys

import torch

from . import extension


def build_info() -> dict:
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def lock_drift(path: str | None = None) -> tuple[str | None, list[str]]:
    """(lock file, differences) between the installed packages and the repo's constraints.txt:
    ``"torch: installed 2.15.0, locked 2.14.1"`` lines. (None, []) outside a source checkout."""
    from importlib import metadata

    path = path or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "constraints.txt")
    if not os.path.exists(path):
        return None, []
    diffs = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "==" not in line:
                continue
            name, want = (v.strip() for v in line.split("==", 1))
            try:
                have = metadata.version(name)
            except metadata.PackageNotFoundError:
                continue  # pinned but not needed here (e.g. the pip CUDA compiler on a GPU machine)
            if have != want:
                diffs.append(f"{name}: installed {have}, locked {want}")
    return path, diffs


def registered_ops() -> list[str]:
    return sorted(extension.OPS) if extension.AVAILABLE else []


def main() -> int:
    print(f"ssrvg_ext {sys.modules['ssrvg_ext'].__version__ if 'ssrvg_ext' in sys.modules else ''}".strip())
    print(f"runtime torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"GPU available: {torch.cuda.is_available()}")
    print(f"python {platform.python_version()} on {platform.machine()} {platform.system()}")
    info = build_info()
    if info:
        print("build:")
        for k, v in info.items():
            print(f"  {k:15s} {v}")
        if info.get("torch") and info["torch"] != torch.__version__:
            print(f"WARNING: built against torch {info['torch']} but running {torch.__version__}: rebuild")
    else:
        print("build: no build record (the extension was not built from this tree)")
    lock, drift = lock_drift()
    if lock:
        print(f"environment: {'matches' if not drift else 'DIFFERS from'} {os.path.basename(lock)}"
              + "".join(f"\n  {d}" for d in drift))
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
