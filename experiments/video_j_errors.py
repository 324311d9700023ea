"""Where does a video model lose region J against boundary F? (embedded video set, or any ytvos-layout set)

Predicts every expression of one split with :class:`ssrvg_ext.VideoPredictor` (once per mask
threshold) and prints, over the frames that show the referred object:

* J at several mask thresholds (is 0, the threshold the library uses, the best one?);
* the frames where the wrong object or nothing was found (J < 0.1) against the rest, and the J and F
  of the rest by the object's area in pixels (is the gap in the finding or in the pixels?);
* the median ratio of predicted to true area where the object was found (too fat or too thin?).

    python experiments/video_j_errors.py --checkpoint runs/tiny_video/best.pth [--split valid]
        [--data data/synthetic_video] [--thresholds -1 -0.5 0 0.5 1]
"""

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image

from ssrvg_ext import VideoPredictor
from ssrvg_ext.evaluation.video_metrics import boundary_f, region_j

AREAS = (0, 100, 200, 400, 800, float("inf"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="data/synthetic_video")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[-1.0, -0.5, 0.0, 0.5, 1.0])
    a = ap.parse_args()
    if 0.0 not in a.thresholds:
        ap.error("--thresholds must include 0 (the library's threshold, used for the breakdown)")
    vp = VideoPredictor(a.checkpoint)
    with open(os.path.join(a.data, "meta_expressions", a.split, "meta_expressions.json")) as f:
        videos = json.load(f)["videos"]
    j = {th: [] for th in a.thresholds}
    f0, area, ratio = [], [], []
    for vid, v in videos.items():
        frames = [os.path.join(a.data, a.split, "JPEGImages", vid, fr + ".jpg") for fr in v["frames"]]
        ann = np.stack([np.array(Image.open(os.path.join(a.data, a.split, "Annotations", vid, fr + ".png")))
                        for fr in v["frames"]])
        for e in v["expressions"].values():
            gt = torch.from_numpy(ann == int(e["obj_id"]))
            shown = gt.flatten(1).sum(1) > 0
            masks = {th: vp.predict(frames, e["exp"], threshold=th)["masks"] > 0 for th in a.thresholds}
            for th, m in masks.items():
                j[th] += region_j(m[shown], gt[shown]).tolist()
            m = masks[0.0][shown]
            f0 += boundary_f(m, gt[shown]).tolist()
            area += gt[shown].flatten(1).sum(1).tolist()
            ratio += (m.flatten(1).sum(1) / gt[shown].flatten(1).sum(1)).tolist()
    area, ratio, f0 = np.array(area), np.array(ratio), np.array(f0)
    print(f"{a.checkpoint}, {a.split}: {len(area)} frames that show the referred object")
    for th in a.thresholds:
        print(f"  threshold {th:+.1f}: J {np.mean(j[th]) * 100:.2f} %")
    j0 = np.array(j[0.0])
    found = j0 >= 0.1
    print(f"  threshold 0: J {j0.mean() * 100:.2f} %, F {f0.mean() * 100:.2f} %; wrong object or nothing (J < 0.1) "
          f"in {(~found).sum()} frames ({(~found).mean() * 100:.1f} %); the rest J {j0[found].mean() * 100:.2f} %, "
          f"F {f0[found].mean() * 100:.2f} %")
    print("  | object area (px) | frames | J < 0.1 | J of the rest | F of the rest | predicted / true area (median) |")
    print("  |---|---:|---:|---:|---:|---:|")
    for lo, hi in zip(AREAS[:-1], AREAS[1:]):
        sel = (area >= lo) & (area < hi)
        ok = sel & found
        if sel.any():
            rest = (f"{j0[ok].mean() * 100:.1f} | {f0[ok].mean() * 100:.1f} | {np.median(ratio[ok]):.2f}"
                    if ok.any() else "- | - | -")
            print(f"  | {lo:g}-{hi:g} | {sel.sum()} | {(sel & ~found).sum()} | {rest} |")


if __name__ == "__main__":
    main()
