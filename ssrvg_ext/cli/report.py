"""Print the metrics table of the eval JSONs in a run folder (written by ssrvg_ext.cli.eval).

    ssrvg-report runs/tiny_synthetic          (or python -m ssrvg_ext.cli.report ...)
"""

import argparse
import glob
import json
import os
import sys

COLS = ["n", "Acc@0.5", "mIoU", "oIoU", "Prec@0.5", "Prec@0.7", "Prec@0.9"]
VIDEO_COLS = ["n", "J&F", "J", "F", "J&F[motion]", "J&F[appearance]"]
ANNOTATED_COLS = ["n", "oIoU", "mIoU", "mAP", "AP@0.5", "AP@0.75", "Prec@0.5", "Prec@0.7", "Prec@0.9"]  # A2D / JHMDB


def table(rows) -> str:
    """A markdown table, one row per (split, shuffled text, metrics), with Acc@0.5 per expression
    kind when the data names kinds (the embedded set: attr, rel, ordinal); A2D / JHMDB columns (oIoU,
    mIoU, mAP, Prec@K) for annotated-frame metrics; else video columns (J&F, J, F, per expression kind)."""
    if any("Acc@0.5" in m for _, _, m in rows):
        cols = COLS + sorted({k for _, _, m in rows for k in m if k.startswith("Acc@0.5[")})
    elif any("mAP" in m for _, _, m in rows):
        cols = ANNOTATED_COLS
    else:
        cols = VIDEO_COLS
    w = {c: max(8, len(c)) for c in cols}
    lines = [f"| {'split':22s} | " + " | ".join(f"{c:>{w[c]}s}" for c in cols) + " |",
             "|" + "-" * 24 + "|" + "|".join("-" * (w[c] + 2) for c in cols) + "|"]
    for split, shuffled, m in rows:
        name = split + (" (shuffled text)" if shuffled else "")
        vals = [f"{m[c]:{w[c]}d}" if c == "n" else f"{100 * m[c]:{w[c] - 1}.2f}%" if c in m else f"{'-':>{w[c]}s}"
                for c in cols]
        lines.append(f"| {name:22s} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", default="runs/tiny_synthetic", help="a run folder holding eval_*.json")
    run = p.parse_args().run
    files = sorted(glob.glob(os.path.join(run, "eval_*.json")))
    if not files:
        sys.exit(f"no eval_*.json in {run}; run ssrvg-eval --out-dir {run} first")
    rows = []
    for f in files:
        with open(f) as fh:
            ev = json.load(fh)
        rows.append((ev["split"], ev.get("shuffle_text", False), ev["metrics"]))
    print(table(rows))

if __name__ == "__main__":
    main()
