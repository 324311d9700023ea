"""Hostile inputs against every public op, in child processes (python_tests/fuzz_cases.py).

A crash (signal) or a hang (timeout) of the child is reported as such, naming the case, instead
of killing the test run; the remaining cases then run in a fresh child. Every case must be
rejected with a ValueError / TypeError, on the compiled kernels and on the references.
Under ``make fuzz`` the same cases run against an AddressSanitizer + UBSan build.
"""

import os
import subprocess
import sys

import pytest

from ssrvg_ext import extension

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import fuzz_cases  # noqa: E402

CASE_TIMEOUT_S = float(os.environ.get("SSRVG_FUZZ_TIMEOUT", "60"))


def run_all(mode: str) -> dict[int, str]:
    """case index -> verdict, restarting the child after a crash or hang."""
    verdicts: dict[int, str] = {}
    start = 0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    while start < len(fuzz_cases.CASES):
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fuzz_cases.py"), mode, str(start)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            out, err = proc.communicate(timeout=CASE_TIMEOUT_S * 2 + 30)
            hung = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            hung = True
        current = None
        for line in out.splitlines():
            kind, _, rest = line.partition(" ")
            if kind == "START":
                current = int(rest)
            elif kind == "RESULT":
                i, _, verdict = rest.partition(" ")
                verdicts[int(i)] = verdict
                current = None
        if current is None:
            if proc.returncode != 0:
                raise RuntimeError(f"fuzz child failed outside any case (rc {proc.returncode}): {err[-2000:]}")
            break
        why = "HUNG" if hung else f"CRASHED (rc {proc.returncode}): {err.strip().splitlines()[-1] if err.strip() else ''}"
        verdicts[current] = why
        start = current + 1
    return verdicts


@pytest.mark.parametrize("mode", ["compiled", "reference"])
def test_every_hostile_input_is_rejected(mode):
    if mode == "compiled" and not extension.AVAILABLE:
        pytest.skip("compiled library not built")
    verdicts = run_all(mode)
    assert len(verdicts) == len(fuzz_cases.CASES)
    bad = [f"{fuzz_cases.CASES[i][0]}: {v}" for i, v in sorted(verdicts.items()) if v not in ("REJECTED", "SKIPPED")]
    assert not bad, f"{len(bad)} of {len(verdicts)} hostile inputs not rejected ({mode}):\n" + "\n".join(bad)
