"""Refreshes constraints.txt, the exact versions `make setup` installs (`make lock` runs this).

Makes a throw-away venv, installs requirements.txt there as the registry serves it today, adds the
pip CUDA compiler packages of that torch's CUDA version (so that `tools/cuda_toolkit.py --install`
is pinned too), and writes `pip freeze` of it, with a header, to constraints.txt. Run the whole
test command on the result before committing it: the lock should only ever hold versions that
`make test` and `make train` have passed with.
"""

import datetime
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ssrvg-lock-") as tmp:
        venv = os.path.join(tmp, "venv")
        sh(sys.executable, "-m", "venv", venv)
        py = os.path.join(venv, "bin", "python")
        sh(py, "-m", "pip", "install", "-q", "--upgrade", "pip")
        sh(py, "-m", "pip", "install", "-q", "-r", os.path.join(ROOT, "requirements.txt"))
        torch_cuda = subprocess.run([py, "-c", "import torch; print(torch.version.cuda or '')"], check=True,
                                    capture_output=True, text=True).stdout.strip()
        if torch_cuda:
            mm = ".".join(torch_cuda.split(".")[:2])
            sh(py, "-m", "pip", "install", "-q", f"nvidia-cuda-nvcc=={mm}.*", f"nvidia-nvvm=={mm}.*",
               f"nvidia-cuda-crt=={mm}.*")
        frozen = subprocess.run([py, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout
    pins = sorted((ln for ln in frozen.splitlines() if ln and not ln.startswith("#")), key=str.lower)
    header = [
        "# The exact versions `make setup` installs (pip -c): tested with `make test` and `make train`.",
        f"# Written by `make lock` (tools/lock.py) on {datetime.date.today()} with Python "
        f"{sys.version_info.major}.{sys.version_info.minor} on {sys.platform}; torch CUDA {torch_cuda or 'none'}.",
        "# Refresh: `make lock`, then `make test` and `make train` on a fresh clone, then commit.",
    ]
    with open(os.path.join(ROOT, "constraints.txt"), "w") as f:
        f.write("\n".join(header + pins) + "\n")
    print(f"wrote constraints.txt: {len(pins)} pins")
    return 0


if __name__ == "__main__":
    sys.exit(main())
