"""The RES evaluation metric path on the CPU: ssrvg_ext vs pycocotools (and the installed peers), same run.

What the evaluator does per batch of predictions (GroundingEvaluator): the predicted masks (B, H, W)
uint8 at the original size are kept as RLEs, and each one's intersection and union with its
ground-truth RLE are counted exactly; at the end mIoU, oIoU and Prec@0.5:0.9 come from them.
  ours:        rle.encode(masks) + evaluation.mask_stats_batch(masks, gt_rles, rles) (on the CPU
               from the RLEs, no dense ground truth) + the metrics
  pycocotools: mask.encode(np.asfortranarray(H x W x B)) + per sample area(merge([p, g],
               intersect=True)) and the two areas + the same metrics
  faster-coco-eval / hotcoco: the same calls through their pycocotools-compatible mask modules
The (intersection, union) pairs are checked equal first.

    python benchmarks/bench_metric_path.py [--n 400] [--batch 16] [--size 480 640] [--repeat 5]
"""

import argparse
import importlib

import numpy as np
import torch
from pycocotools import mask as cocomask

from common import alternating, device_name, object_masks
from ssrvg_ext.evaluation import grounding_metrics, mask_stats_batch
from ssrvg_ext.ops import rle


def metrics_of(stats):
    return grounding_metrics([{"box_iou": 1.0, "inter": i, "union": u, "mask_iou": i / u if u else 1.0} for i, u in stats])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=400, help="expressions (a RefCOCO-sized split has ~1500-5000)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=[480, 640])
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    h, w = args.size
    print(f"device: {device_name()}; torch {torch.__version__}; {args.n} expressions of {h}x{w} in batches of {args.batch}")
    preds = object_masks(args.n, h, w, seed=1)
    gts = cocomask.encode(np.asfortranarray(object_masks(args.n, h, w, seed=2).permute(1, 2, 0).numpy()))
    batches = [(preds[i:i + args.batch], gts[i:i + args.batch]) for i in range(0, args.n, args.batch)]

    def ours():
        stats = []
        for m, g in batches:
            rles = rle.encode(m)  # kept by the evaluator, and what the CPU statistics are read from
            stats += mask_stats_batch(list(m), g, rles)
        return stats, metrics_of(stats)

    def peer(mod):
        def run():
            stats = []
            for m, g in batches:
                rles = mod.encode(np.asfortranarray(m.permute(1, 2, 0).numpy()))
                for r, gt in zip(rles, g):
                    inter = int(mod.area(mod.merge([r, gt], intersect=True)))
                    stats.append((inter, int(mod.area(r)) + int(mod.area(gt)) - inter))
            return stats, metrics_of(stats)
        return run

    fns = {"pycocotools": peer(cocomask)}
    for name, path in (("faster-coco-eval", "faster_coco_eval.core.mask"), ("hotcoco", "hotcoco.mask")):
        try:
            fns[name] = peer(importlib.import_module(path))
        except ImportError:
            print(f"skipped {name}: not installed")
    fns["ours"] = ours
    want = fns["pycocotools"]()
    for name, fn in fns.items():
        got = fn()
        assert got[0] == want[0] and got[1] == want[1], f"{name}: intersections / unions differ from pycocotools"
    times = alternating(fns, repeat=args.repeat)
    for name, t in times.items():
        print(f"{name:18s} {t * 1e3:9.1f} ms  {args.n / t:9.0f} expr/s  speed-up vs pycocotools {times['pycocotools'] / t:5.2f}")
    fastest = min((k for k in times if k != "ours"), key=times.get)
    print(f"-> ours {times[fastest] / times['ours']:.2f}x the fastest other ({fastest})")


if __name__ == "__main__":
    main()
