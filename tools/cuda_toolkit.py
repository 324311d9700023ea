"""Finds (and, with --install, installs) a CUDA toolkit matching the installed torch.

setup.py uses :func:`find_cuda_home` to decide whether to build the CUDA kernels. A candidate
folder is accepted only when everything the build will use is really there:

- ``bin/nvcc`` runs and reports a release with torch's CUDA major and a minor not older;
- ``include/cuda_runtime.h`` exists (torch.utils.cpp_extension adds ``<home>/include``);
- ``libcudart`` is in ``lib64/`` or ``lib/`` (``libcudart.so``, or only ``libcudart.so.N`` as in
  the pip toolkits, for which setup.py makes the link name in ``build/``).

Candidates, in order: ``$CUDA_HOME`` / ``$CUDA_PATH``; the toolkit the first ``nvcc`` on PATH
belongs to, found by asking that nvcc itself (``nvcc --dryrun`` prints its ``TOP``), by resolving
symlinks and by reading the target of a wrapper script; the pip ``nvidia/cu<major>`` toolkit;
``/usr/local/cuda`` and ``/usr/local/cuda-<major>.<minor>`` folders. A rejected candidate is kept
with the reason, which setup.py and this script print.

The Makefile runs ``python tools/cuda_toolkit.py --install``: where torch has CUDA but no candidate
passes (a CPU-only laptop or CI with the registry's CUDA torch), it pip-installs the registry's
nvcc, nvvm and crt packages of torch's CUDA version, so the CUDA kernels compile without a GPU.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

_TIMEOUT_S = 60
# Where the pip toolkit (``<PIP_ROOT>/nvidia/cu<major>``) and system toolkits are looked for; tests
# point these at fake toolkits.
PIP_ROOT = sysconfig.get_paths()["purelib"]
SYSTEM_GLOBS = ("/usr/local/cuda", "/usr/local/cuda-{major}.{minor}", "/usr/local/cuda-{major}.*")


def _run(cmd):
    """stdout + stderr of ``cmd``, or None when it cannot run."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout + p.stderr if p.returncode == 0 else None


def nvcc_version(cuda_home):
    """(major, minor) that ``<cuda_home>/bin/nvcc --version`` reports, or None."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.isfile(nvcc):
        return None
    out = _run([nvcc, "--version"])
    m = re.search(r"release (\d+)\.(\d+)", out or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def cudart_dir(cuda_home):
    """The folder of ``libcudart.so`` (or ``.so.N``) under lib64/ or lib/, or None."""
    for sub in ("lib64", "lib"):
        d = os.path.join(cuda_home, sub)
        if os.path.exists(os.path.join(d, "libcudart.so")) or glob.glob(os.path.join(d, "libcudart.so.*")):
            return d
    return None


def cudart_link_dir(cuda_home, build_dir):
    """A folder to pass to the linker for ``-lcudart``: the toolkit's own when it has the
    ``libcudart.so`` link name, else ``<build_dir>/cudart_link`` holding a link to its
    ``libcudart.so.N`` (pip toolkits ship no link name). None when there is no libcudart."""
    lib = cudart_dir(cuda_home)
    if lib is None or os.path.exists(os.path.join(lib, "libcudart.so")):
        return lib
    found = sorted(glob.glob(os.path.join(lib, "libcudart.so.*")))
    link_dir = os.path.join(build_dir, "cudart_link")
    os.makedirs(link_dir, exist_ok=True)
    link = os.path.join(link_dir, "libcudart.so")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.realpath(found[0]), link)
    return link_dir


def check_toolkit(home, torch_cuda):
    """(ok, reason): whether ``home`` is a complete toolkit matching torch CUDA ``torch_cuda``."""
    want = tuple(int(v) for v in torch_cuda.split(".")[:2])
    if not os.path.isdir(home):
        return False, "no such folder"
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return False, "no bin/nvcc"
    ver = nvcc_version(home)
    if ver is None:
        return False, "bin/nvcc does not run or prints no release"
    if ver[0] != want[0] or ver[1] < want[1]:
        return False, f"nvcc {ver[0]}.{ver[1]} does not match torch CUDA {torch_cuda} (same major, minor not older)"
    if not os.path.isfile(os.path.join(home, "include", "cuda_runtime.h")):
        return False, f"nvcc {ver[0]}.{ver[1]} but no include/cuda_runtime.h"
    lib = cudart_dir(home)
    if lib is None:
        return False, f"nvcc {ver[0]}.{ver[1]} but no libcudart.so* in lib64/ or lib/"
    return True, f"nvcc {ver[0]}.{ver[1]}, include/cuda_runtime.h, {os.path.relpath(lib, home)}/libcudart"


def _homes_of_nvcc(nvcc):
    """Toolkit folders an ``nvcc`` executable (maybe a link or wrapper script) belongs to."""
    out = _run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull]) or ""
    m = re.search(r"^#\$ TOP=(.+)$", out, re.M)
    if m:
        yield os.path.normpath(m.group(1).strip())
    real = os.path.realpath(nvcc)
    yield os.path.dirname(os.path.dirname(real))
    try:
        with open(real, "rb") as f:
            head = f.read(4096)
    except OSError:
        return
    if head.startswith(b"#!"):  # a wrapper script: every absolute .../bin/nvcc it names
        for target in re.findall(rb"(/[^\s'\"]*/bin/nvcc)\b", head):
            yield os.path.dirname(os.path.dirname(os.path.realpath(target.decode(errors="replace"))))


def candidates(torch_cuda, path=None):
    """(home, where-from) pairs in the order they are tried, duplicates (same real folder) removed."""
    major, minor = torch_cuda.split(".")[:2]
    found = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.append((os.environ[var], f"${var}"))
    nvcc = shutil.which("nvcc", path=path)
    if nvcc:
        found += [(h, f"nvcc on PATH ({nvcc})") for h in _homes_of_nvcc(nvcc)]
    found.append((os.path.join(PIP_ROOT, "nvidia", f"cu{major}"), "pip toolkit"))
    for pattern in SYSTEM_GLOBS:
        found += [(h, "system folder") for h in sorted(glob.glob(pattern.format(major=major, minor=minor)), reverse=True)]
    seen, out = set(), []
    for home, src in found:
        key = os.path.realpath(home)
        if key not in seen:
            seen.add(key)
            out.append((home, src))
    return out


def find_cuda_home(torch_cuda, path=None):
    """(home, reason, rejected): the first candidate that passes :func:`check_toolkit`; ``rejected``
    lists ``"home (from): why"`` for each candidate tried before it (or all, when none passes)."""
    if not torch_cuda:
        return None, "this torch build has no CUDA", []
    rejected = []
    for home, src in candidates(torch_cuda, path):
        ok, why = check_toolkit(home, torch_cuda)
        if ok:
            return home, f"toolkit {home} ({src}) matches torch CUDA {torch_cuda}: {why}", rejected
        rejected.append(f"{home} ({src}): {why}")
    return None, f"no complete CUDA toolkit matching torch CUDA {torch_cuda} was found", rejected


def report(home, why, rejected, log=print):
    for r in rejected:
        log(f"rejected {r}")
    log(f"using {home}: {why}" if home else why)


def main(argv):
    import torch

    log = lambda m: print(f"[cuda_toolkit] {m}", flush=True)  # noqa: E731
    home, why, rejected = find_cuda_home(torch.version.cuda)
    report(home, why, rejected, log)
    if home or not torch.version.cuda or "--install" not in argv:
        return 0
    major, minor = torch.version.cuda.split(".")[:2]
    pkgs = [f"nvidia-cuda-nvcc=={major}.{minor}.*", f"nvidia-nvvm=={major}.{minor}.*", f"nvidia-cuda-crt=={major}.{minor}.*"]
    log(f"installing {' '.join(pkgs)} so the CUDA kernels compile here")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pkgs], check=True)
    home, why, rejected = find_cuda_home(torch.version.cuda)
    report(home, why, rejected, log)
    return 0 if home else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
