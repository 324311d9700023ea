"""Finds (and, with --install, installs) a CUDA compiler matching the installed torch.

setup.py uses :func:`find_cuda_home` to decide whether to build the CUDA kernels. The Makefile runs
``python tools/cuda_toolkit.py --install``: on a machine whose torch has CUDA but no matching
``nvcc`` (e.g. a CPU-only laptop or CI with the registry's CUDA torch), it pip-installs the
registry's nvcc, nvvm and crt packages of torch's CUDA version, so that the CUDA kernels still
compile where no GPU exists. CPU-only torch builds need nothing.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig


def nvcc_version(cuda_home):
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _candidates(torch_cuda):
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            yield os.environ[var]
    yield os.path.join(sysconfig.get_paths()["purelib"], "nvidia", f"cu{torch_cuda.split('.')[0]}")
    nvcc = shutil.which("nvcc")
    if nvcc:
        yield os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    yield "/usr/local/cuda"


def find_cuda_home(torch_cuda):
    """(home, reason): the first toolkit whose nvcc has torch's CUDA major and a minor not older."""
    if not torch_cuda:
        return None, "this torch build has no CUDA"
    want = tuple(int(v) for v in torch_cuda.split(".")[:2])
    seen = []
    for home in _candidates(torch_cuda):
        ver = nvcc_version(home)
        if ver is None:
            continue
        seen.append(f"{home} (nvcc {ver[0]}.{ver[1]})")
        if ver[0] == want[0] and ver[1] >= want[1]:
            return home, f"nvcc {ver[0]}.{ver[1]} at {home} matches torch CUDA {torch_cuda}"
    return None, f"no nvcc matching torch CUDA {torch_cuda}; found: {', '.join(seen) or 'none'}"


def main(argv):
    import torch

    home, why = find_cuda_home(torch.version.cuda)
    print(f"[cuda_toolkit] {why}")
    if home or not torch.version.cuda or "--install" not in argv:
        return 0
    major, minor = torch.version.cuda.split(".")[:2]
    pkgs = [f"nvidia-cuda-nvcc=={major}.{minor}.*", f"nvidia-nvvm=={major}.{minor}.*", f"nvidia-cuda-crt=={major}.{minor}.*"]
    print(f"[cuda_toolkit] installing {' '.join(pkgs)} so the CUDA kernels compile here")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pkgs], check=True)
    home, why = find_cuda_home(torch.version.cuda)
    print(f"[cuda_toolkit] {why}")
    return 0 if home else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
