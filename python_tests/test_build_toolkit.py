"""The CUDA toolkit finder (tools/cuda_toolkit.py) on fake toolkits in a temporary folder.

Each fake ``nvcc`` is a shell script that answers ``--version`` (and, where asked, ``--dryrun``
with the ``TOP=`` line a real nvcc prints). Nothing here needs a real toolkit or a GPU.
"""

import os
import stat
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import cuda_toolkit as ct  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fake toolkits are shell scripts")


def _exe(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def fake_toolkit(root, version="13.0", header=True, cudart="libcudart.so", dryrun=True):
    """A toolkit folder with bin/nvcc reporting ``version``; optional header and libcudart."""
    root = str(root)
    top = f'echo "#\\$ TOP={root}/bin/.."' if dryrun else "exit 1"
    _exe(os.path.join(root, "bin", "nvcc"), f"""#!/bin/sh
case "$1" in
  --version) echo "Cuda compilation tools, release {version}, V{version}.88";;
  --dryrun) {top};;
  *) exit 2;;
esac
""")
    if header:
        os.makedirs(os.path.join(root, "include"), exist_ok=True)
        open(os.path.join(root, "include", "cuda_runtime.h"), "w").close()
    if cudart:
        os.makedirs(os.path.join(root, "lib"), exist_ok=True)
        open(os.path.join(root, "lib", cudart), "w").close()
    return root


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No CUDA_HOME, an empty pip root and no system folders: only what a test makes is seen."""
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(ct, "PIP_ROOT", str(tmp_path / "site-packages"))
    monkeypatch.setattr(ct, "SYSTEM_GLOBS", (str(tmp_path / "system" / "cuda-{major}.{minor}"),))
    (tmp_path / "path").mkdir()
    return tmp_path


def find(tmp, torch_cuda="13.0"):
    return ct.find_cuda_home(torch_cuda, path=str(tmp / "path"))


def test_wrapper_script_on_path_resolves_to_the_real_toolkit(isolated):
    real = fake_toolkit(isolated / "opt" / "cuda-13.0")
    _exe(str(isolated / "path" / "nvcc"), f'#!/bin/sh\nexec {real}/bin/nvcc "$@"\n')
    home, why, rejected = find(isolated)
    assert home == real and real in why and rejected == []  # nvcc --dryrun named its TOP


def test_wrapper_script_found_by_its_text_when_nvcc_cannot_say(isolated):
    real = fake_toolkit(isolated / "opt" / "cuda-13.0", dryrun=False)
    _exe(str(isolated / "path" / "nvcc"), f'#!/bin/sh\nexec "{real}/bin/nvcc" "$@"\n')
    home, why, rejected = find(isolated)
    assert home == real
    assert rejected == [f"{isolated} (nvcc on PATH ({isolated / 'path' / 'nvcc'})): no bin/nvcc"]


def test_symlinked_nvcc(isolated):
    real = fake_toolkit(isolated / "opt" / "cuda-13.0", dryrun=False)
    os.symlink(os.path.join(real, "bin", "nvcc"), isolated / "path" / "nvcc")
    home, _, _ = find(isolated)
    assert os.path.realpath(home) == os.path.realpath(real)


def test_toolkit_with_only_versioned_cudart_gets_a_link_dir(isolated):
    pip = fake_toolkit(isolated / "site-packages" / "nvidia" / "cu13", cudart="libcudart.so.13")
    home, _, _ = find(isolated)
    assert home == pip
    link_dir = ct.cudart_link_dir(home, str(isolated / "build"))
    link = os.path.join(link_dir, "libcudart.so")
    assert os.path.islink(link) and os.readlink(link) == os.path.realpath(os.path.join(pip, "lib", "libcudart.so.13"))
    # A toolkit that has the link name is used as it is.
    sys_tk = fake_toolkit(isolated / "system" / "cuda-13.0")
    assert ct.cudart_link_dir(sys_tk, str(isolated / "build")) == os.path.join(sys_tk, "lib")


def test_mismatched_version_is_rejected_with_the_reason(isolated):
    fake_toolkit(isolated / "system" / "cuda-13.0", version="12.8")
    home, why, rejected = find(isolated)
    assert home is None and "13.0" in why
    assert any("nvcc 12.8 does not match torch CUDA 13.0" in r for r in rejected)
    # An older minor than torch's is refused too; a newer minor of the same major is accepted.
    old = fake_toolkit(isolated / "tk-old", version="13.0")
    assert not ct.check_toolkit(old, "13.2")[0]
    assert ct.check_toolkit(old, "13.0")[0] and not ct.check_toolkit(old, "14.0")[0]


def test_incomplete_toolkits_are_rejected(isolated, monkeypatch):
    no_header = fake_toolkit(isolated / "a", header=False)
    no_cudart = fake_toolkit(isolated / "b", cudart=None)
    monkeypatch.setenv("CUDA_HOME", no_header)
    monkeypatch.setenv("CUDA_PATH", no_cudart)
    home, _, rejected = find(isolated)
    assert home is None
    assert any(r.startswith(no_header) and "cuda_runtime.h" in r for r in rejected)
    assert any(r.startswith(no_cudart) and "libcudart" in r for r in rejected)


def test_broken_nvcc_is_rejected(isolated, monkeypatch):
    tk = fake_toolkit(isolated / "tk")
    _exe(os.path.join(tk, "bin", "nvcc"), "#!/bin/sh\nexit 1\n")
    monkeypatch.setenv("CUDA_HOME", tk)
    home, _, rejected = find(isolated)
    assert home is None and any("does not run" in r for r in rejected)


def test_cuda_home_wins_over_path(isolated, monkeypatch):
    on_path = fake_toolkit(isolated / "p")
    os.symlink(os.path.join(on_path, "bin", "nvcc"), isolated / "path" / "nvcc")
    chosen = fake_toolkit(isolated / "chosen")
    monkeypatch.setenv("CUDA_HOME", chosen)
    assert find(isolated)[0] == chosen


def test_nothing_at_all(isolated):
    home, why, rejected = find(isolated)
    assert home is None and "no complete CUDA toolkit" in why
    assert ct.find_cuda_home(None)[0] is None  # a CPU-only torch needs none
