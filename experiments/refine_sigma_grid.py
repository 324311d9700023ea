"""How the bilateral mask upsampling's two widths (model.mask_refine) change J and F on a video split.

Predicts every expression of the first --videos videos of a split with :class:`ssrvg_ext.VideoPredictor`,
once with the checkpoint's own upsampling and once per (sigma_color, sigma_space) pair, and prints mean J,
F and J&F over every frame of every expression. The preset's widths were chosen with it on the embedded
video set's *train* split, so that the reported splits (valid, testB) played no part in the choice:

    python experiments/refine_sigma_grid.py --checkpoint runs/video/tiny_video_s0/last.pth --split train \
        --videos 40 --grid 0.25:1 0.35:1 0.5:1 0.7:1 0.5:1.5 0.35:1.5
"""

import argparse
import json
import os

import numpy as np
import torch
from PIL import Image

from ssrvg_ext import VideoPredictor
from ssrvg_ext.evaluation.video_metrics import boundary_f, region_j
from ssrvg_ext.models.refine import MaskRefiner


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="data/synthetic_video")
    ap.add_argument("--split", default="train")
    ap.add_argument("--videos", type=int, default=40)
    ap.add_argument("--grid", nargs="+", default=["0.25:1", "0.5:1", "0.5:1.5"], help="sigma_color:sigma_space")
    a = ap.parse_args()
    grid = [None] + [tuple(float(v) for v in g.split(":")) for g in a.grid]
    vp = VideoPredictor(a.checkpoint)
    model = vp.image.model
    plain = list(model.hook_parts["refine_masks"])
    with open(os.path.join(a.data, "meta_expressions", a.split, "meta_expressions.json")) as f:
        videos = list(json.load(f)["videos"].items())[:a.videos]
    scores = {g: ([], []) for g in grid}
    for vid, v in videos:
        frames = [os.path.join(a.data, a.split, "JPEGImages", vid, fr + ".jpg") for fr in v["frames"]]
        ann = np.stack([np.array(Image.open(os.path.join(a.data, a.split, "Annotations", vid, fr + ".png")))
                        for fr in v["frames"]])
        for e in v["expressions"].values():
            gt = torch.from_numpy(ann == int(e["obj_id"]))
            for g in grid:
                if g is None:  # the checkpoint's own setting
                    model.hook_parts["refine_masks"] = plain
                else:
                    model.grid_refiner = MaskRefiner(*g)
                    model.hook_parts["refine_masks"] = ["grid_refiner"]
                m = vp.predict(frames, e["exp"])["masks"] > 0
                scores[g][0].extend(region_j(m, gt).tolist())
                scores[g][1].extend(boundary_f(m, gt).tolist())
    print(f"{a.checkpoint}, {a.split}, {len(videos)} videos")
    for g in grid:
        j, f = np.mean(scores[g][0]) * 100, np.mean(scores[g][1]) * 100
        name = "checkpoint's own" if g is None else f"sigma_color {g[0]}, sigma_space {g[1]}"
        print(f"  {name:36s} J {j:.2f}  F {f:.2f}  J&F {(j + f) / 2:.2f}")


if __name__ == "__main__":
    main()
