"""The op machinery: loading, the loud-but-safe fallback, build info."""

import os
import subprocess
import sys

import pytest
import torch

from ssrvg_ext import extension, info

# Runs in a child process with ssrvg_ext._C made unimportable.
_BLOCK_C = """
import sys, warnings
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "ssrvg_ext._C":
            raise ImportError("blocked by test")
sys.meta_path.insert(0, Block())
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import ssrvg_ext
import torch, numpy as np
from pycocotools import mask as cocomask
from ssrvg_ext.ops import rle
assert not ssrvg_ext.extension.AVAILABLE
msgs = [str(x.message) for x in w if "compiled ops could not be loaded" in str(x.message)]
assert len(msgs) == 1 and "blocked by test" in msgs[0], [str(x.message) for x in w]
m = (torch.rand(4, 9, 7) < 0.5).to(torch.uint8)
ours = rle.encode(m)
ref = cocomask.encode(np.asfortranarray(m.permute(1, 2, 0).numpy()))
assert [r["counts"] for r in ours] == [r["counts"] for r in ref]
assert torch.equal(rle.decode(ours), m)
print("FALLBACK OK")
"""


def _run(env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", _BLOCK_C], capture_output=True, text=True, env=env, timeout=300)


def test_fallback_when_extension_missing():
    r = _run({"SSRVG_REQUIRE_EXT": "0"})
    assert r.returncode == 0, r.stderr
    assert "FALLBACK OK" in r.stdout


def test_require_ext_turns_fallback_into_error():
    r = _run({"SSRVG_REQUIRE_EXT": "1"})
    assert r.returncode != 0
    assert "SSRVG_REQUIRE_EXT=1" in r.stderr


def test_force_reference_switch():
    if not extension.AVAILABLE:
        pytest.skip("compiled ops not built")
    assert extension.use_compiled("rle_encode", "cpu")
    with extension.force_reference():
        assert not extension.use_compiled("rle_encode", "cpu")
    assert extension.use_compiled("rle_encode", "cpu")


def test_force_reference_reaches_ops_called_before(monkeypatch):
    """An op's call path caches the compiled kernel it found: the switch must still take it away."""
    if not extension.AVAILABLE:
        pytest.skip("compiled ops not built")
    from ssrvg_ext.ops import _dispatch, reference

    counts, offsets = torch.tensor([2, 3, 1]), torch.tensor([0, 3])
    assert int(_dispatch.call("rle_area", torch.device("cpu"), counts, offsets)[0]) == 3  # compiled, now cached
    assert ("rle_area", "cpu") in _dispatch._COMPILED
    monkeypatch.setattr(reference, "rle_area", lambda *a: "reference")
    with extension.force_reference():
        assert _dispatch.call("rle_area", "cpu", counts, offsets) == "reference"
    assert int(_dispatch.call("rle_area", "cpu", counts, offsets)[0]) == 3


def test_info_lists_kernels(capsys):
    if not extension.AVAILABLE:
        pytest.skip("compiled ops not built")
    assert info.main() == 0
    out = capsys.readouterr().out
    assert "rle_encode" in out and "torch" in out
    built = info.build_info()
    assert built["torch"].split("+")[0] == torch.__version__.split("+")[0]
    # the CUDA column matches what the build says it compiled
    assert extension.has_kernel("rle_encode", "cuda") == built["cuda_build"]


def test_op_list_matches_the_schemas():
    """extension.OPS (how the router learns which ops exist) names exactly the ops csrc/ops.cpp defines."""
    import os
    import re

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "ops.cpp")) as f:
        defined = re.findall(r'm\.def\(\s*"(\w+)\(', f.read())
    assert sorted(defined) == sorted(extension.OPS)
    assert len(set(defined)) == len(defined)
