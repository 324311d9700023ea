"""Print the metrics table of the eval JSONs in a run folder (written by ssrvg_ext.cli.eval).

    ssrvg-report runs/tiny_synthetic          (or python -m ssrvg_ext.cli.report ...)
"""

import argparse
import glob
import json
import os
import sys

COLS = ["n", "Acc@0.5", "mIoU", "oIoU", "Prec@0.5", "Prec@0.7", "Prec@0.9"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", default="runs/tiny_synthetic", help="a run folder holding eval_*.json")
    run = p.parse_args().run
    files = sorted(glob.glob(os.path.join(run, "eval_*.json")))
    if not files:
        sys.exit(f"no eval_*.json in {run}; run ssrvg-eval --out-dir {run} first")
    print(f"| {'split':22s} | " + " | ".join(f"{c:>8s}" for c in COLS) + " |")
    print("|" + "-" * 24 + "|" + "|".join("-" * 10 for _ in COLS) + "|")
    for f in files:
        with open(f) as fh:
            ev = json.load(fh)
        name = ev["split"] + (" (shuffled text)" if ev.get("shuffle_text") else "")
        m = ev["metrics"]
        vals = [f"{m[c]:8d}" if c == "n" else f"{100 * m[c]:7.2f}%" for c in COLS]
        print(f"| {name:22s} | " + " | ".join(vals) + " |")


if __name__ == "__main__":
    main()
