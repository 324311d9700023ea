"""The AVX2 clones of the CPU kernels hold the loops (csrc/cpu_simd.h).

GCC's target_clones compiles only the marked function's own body twice: a loop left in a lambda
given to at::parallel_for, or in a helper that is not inlined into the clone, runs the generic
(SSE2) code on every machine while the build looks fine. Until 2026-12-02 every clone of this
library was such a trampoline. This reads the built library's machine code: each AVX2 clone must
use the 256-bit registers itself.
"""

import platform
import re
import shutil
import subprocess
import sys

import pytest

from ssrvg_ext import extension

pytestmark = [
    pytest.mark.skipif(not extension.AVAILABLE, reason="compiled ops not built"),
    pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64", reason="clones: x86-64 Linux only"),
    pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)"),
]

# The kernels that have AVX2 clones, and the least number of them (per kernel family).
EXPECTED = {"ssrvg::msda::": 5, "ssrvg::mask_loss::": 2}


# Per-element helpers that must be inlined into the kernels' loops: compiled as functions of their
# own, a clone calls them once per pixel or sample (the mask loss's AVX2 clone did so with Pixel on
# 2026-12-02 and ran 6x slower than the generic code).
PER_ELEMENT = ("ssrvg::mask_loss::Pixel<", "FastMath::exp", "FastMath::log1p", "ssrvg::msda::Corners<")


def disassembly():
    from ssrvg_ext import _C

    return subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _C.__file__], check=True,
                          capture_output=True, text=True).stdout


def clone_ymm_counts(text=None):
    text = disassembly() if text is None else text
    counts, name = {}, None
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            # (the ".cold" part of a clone holds its rarely taken paths: error reporting)
            name = head.group(1) if head.group(1).endswith("[clone .avx2]") else None
            if name:
                counts[name] = 0
        elif name and "%ymm" in line:
            counts[name] += 1
    return counts


def test_every_avx2_clone_uses_vector_registers():
    text = disassembly()
    counts = clone_ymm_counts(text)
    for family, least in EXPECTED.items():
        found = {n: c for n, c in counts.items() if n.startswith(family)}
        assert len(found) >= least, f"{family}: {len(found)} AVX2 clones, expected {least}: {sorted(found)}"
    empty = [n for n, c in counts.items() if c < 16]
    assert not empty, f"AVX2 clones without vector code (their loops are compiled elsewhere): {empty}"
    functions = re.findall(r"^[0-9a-f]+ <(.*)>:$", text, flags=re.M)
    outlined = sorted({f for f in functions if any(p in f for p in PER_ELEMENT)})
    assert not outlined, f"per-element helpers compiled as functions (called per element): {outlined}"
