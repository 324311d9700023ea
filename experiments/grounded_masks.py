"""Mask quality where the box is right: splits each evaluated expression by its box (IoU >= 0.5 with the
referent's box: grounded; else not) and reports mIoU and Prec@0.9 of the masks within each part, per run
and paired against a baseline over the seeds. It reads the predictions `ssrvg-eval` writes (every
expression's box IoU and mask IoU), nothing is run again. Tells a worse mask of the right object apart
from a mask of the wrong one (docs/ABLATION.md, the all-on preset).

    python experiments/grounded_masks.py --baseline runs/claims/tiny_synthetic_s{} \
        --variants runs/claims/all_s{} --seeds 0 1 2 \
        [--eval-dir eval+model.mask_refine.enabled-false] [--splits val testA testB]

A run pattern's {} is the seed; --eval-dir is the folder inside each run that holds eval_<split>.json
(default: the run folder itself, where ablate.py's plain evaluations go).
"""

import argparse
import json
import os
import statistics


def parts(preds: list[dict]) -> dict:
    """Accuracy, and mIoU / Prec@0.9 of the masks on the grounded and the other expressions (in %)."""
    hit = [float(p["mask_iou"]) for p in preds if float(p["box_iou"]) >= 0.5]
    miss = [float(p["mask_iou"]) for p in preds if float(p["box_iou"]) < 0.5]

    def mean(xs):
        return 100 * statistics.mean(xs) if xs else float("nan")

    return {"Acc@0.5": 100 * len(hit) / len(preds), "mIoU grounded": mean(hit),
            "Prec@0.9 grounded": mean([x >= 0.9 for x in hit]), "mIoU not grounded": mean(miss)}


def load(pattern: str, seed: int, eval_dir: str, splits: list[str]) -> dict:
    run = pattern.format(seed)
    preds = []
    for s in splits:
        with open(os.path.join(run, eval_dir, f"eval_{s}.json")) as f:
            preds += json.load(f)["predictions"]
    return parts(preds)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True)
    p.add_argument("--variants", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--eval-dir", default=".")
    p.add_argument("--splits", nargs="+", default=["val", "testA", "testB"])
    a = p.parse_args()
    base = {s: load(a.baseline, s, a.eval_dir, a.splits) for s in a.seeds}
    keys = list(next(iter(base.values())))
    print("| run | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for pat in [a.baseline] + a.variants:
        rows = base if pat == a.baseline else {s: load(pat, s, a.eval_dir, a.splits) for s in a.seeds}
        for s in a.seeds:
            print(f"| {pat.format(s)} | " + " | ".join(f"{rows[s][k]:.2f}" for k in keys) + " |")
        if pat == a.baseline or len(a.seeds) < 2:
            continue
        cells = []
        for k in keys:
            d = [rows[s][k] - base[s][k] for s in a.seeds]
            cells.append(f"{statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f}")
        print(f"| {pat} - baseline, paired, mean ± std | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
