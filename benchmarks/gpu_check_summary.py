"""Gathers the logs of benchmarks/gpu_check.sh into LOG/results.json and prints the verdicts.

    python benchmarks/gpu_check_summary.py LOG
"""

import collections
import json
import os
import re
import sys


def summary(log: str) -> dict:
    res = {"steps": {}}
    status = os.path.join(log, "steps.tsv")
    if os.path.exists(status):
        for line in open(status):
            name, rc, sec = line.rstrip("\n").split("\t")
            res["steps"][name] = {"rc": rc, "seconds": int(sec)}
    for tool in ("memcheck", "racecheck", "initcheck"):
        p = os.path.join(log, tool + ".log")
        if os.path.exists(p):
            text = open(p, errors="replace").read()
            m = re.search(r"ERROR SUMMARY: (\d+) error", text)
            where = collections.Counter(re.findall(r"^=+\s+at (.+?)\(", text, flags=re.M))  # kernels of printed errors
            res[tool] = {"errors": int(m.group(1)) if m else None, "all kernels ran": "all kernels ran" in text,
                         "printed errors by kernel": dict(where)}
    p = os.path.join(log, "tests.log")
    if os.path.exists(p):
        lines = [l for l in open(p, errors="replace").read().splitlines() if re.search(r"\d+ (passed|failed|error)", l)]
        res["tests"] = lines[-1] if lines else None
    for name in ("sync_graph", "bench_rle", "bench_mask_loss", "bench_msda", "bench_model"):
        p = os.path.join(log, name + ".json")
        if os.path.exists(p):
            with open(p) as f:
                res[name] = json.load(f)
    p = os.path.join(log, "machine.log")
    if os.path.exists(p):
        res["machine"] = open(p, errors="replace").read()
    return res


def main():
    log = sys.argv[1]
    res = summary(log)
    tmp = os.path.join(log, f"results.{os.getpid()}.tmp")  # steps in the background write it too
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2)
    os.replace(tmp, os.path.join(log, "results.json"))
    print(json.dumps({k: v for k, v in res.items() if k in ("steps", "memcheck", "racecheck", "initcheck", "tests")},
                     indent=1))


if __name__ == "__main__":
    main()
