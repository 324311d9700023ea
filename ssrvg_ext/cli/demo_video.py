"""Segment the object an expression refers to in every frame of a video; write a picture strip.

    python -m ssrvg_ext.cli.demo_video --checkpoint runs/tiny_video/best.pth --frames DIR --text "the circle that stops"
    python -m ssrvg_ext.cli.demo_video --checkpoint runs/tiny_video/best.pth --data data/synthetic_video --split valid

With --data, the expression is one of the split's (--video / --exp-id, default the first motion
expression) and the annotated mask is outlined in green next to the prediction (red).
"""

import argparse
import glob
import os

import numpy as np
from PIL import Image, ImageDraw

from ssrvg_ext.data.dataset import read_image
from ssrvg_ext.data.readers.rvos import load_ytvos, read_palette_mask
from ssrvg_ext.evaluation.video_metrics import seg2bmap
from ssrvg_ext.predictor import VideoPredictor


def strip(frames: list[np.ndarray], masks, text: str, gts=None) -> Image.Image:
    """Frames side by side, the predicted mask tinted red, the annotation's boundary in green."""
    tiles = []
    for t, f in enumerate(frames):
        arr = f.astype(np.float32)
        m = masks[t].numpy().astype(bool)
        arr[m] = arr[m] * 0.45 + np.array([255, 40, 40]) * 0.55
        if gts is not None:
            import torch

            arr[seg2bmap(torch.from_numpy(gts[t])).numpy()] = (40, 255, 40)
        tiles.append(arr.astype(np.uint8))
    h = tiles[0].shape[0]
    out = Image.new("RGB", (sum(x.shape[1] + 2 for x in tiles), h + 16), (0, 0, 0))
    x = 0
    for tile in tiles:
        out.paste(Image.fromarray(tile), (x, 16))
        x += tile.shape[1] + 2
    ImageDraw.Draw(out).text((4, 2), text, fill=(255, 255, 255))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--frames", help="a folder of the video's frames (.jpg / .png, in name order)")
    p.add_argument("--text")
    p.add_argument("--data", help="a dataset in Ref-YouTube-VOS layout (with --split)")
    p.add_argument("--split", default="valid")
    p.add_argument("--video")
    p.add_argument("--exp-id")
    p.add_argument("--out", default="demo_video.png")
    a = p.parse_args()
    gts = None
    if a.data:
        recs = load_ytvos(a.data, a.split, annotated=True)
        pick = [r for r in recs if (a.video is None or r.video == a.video) and (a.exp_id is None or r.exp_id == a.exp_id)]
        if a.video is None and a.exp_id is None:
            pick = [r for r in recs if r.extra.get("kind") == "motion"] or recs
        if not pick:
            p.error(f"no expression {a.video}/{a.exp_id} in {a.data} {a.split}")
        rec = pick[0]
        paths, text = rec.frame_paths, a.text or rec.text
        gts = [read_palette_mask(q, rec.obj_id) for q in rec.anno_paths]
    elif a.frames and a.text:
        paths, text = sorted(glob.glob(os.path.join(a.frames, "*.jpg")) + glob.glob(os.path.join(a.frames, "*.png"))), a.text
        if not paths:
            p.error(f"no .jpg / .png frames in {a.frames}")
    else:
        p.error("give --frames and --text, or --data")
    r = VideoPredictor(a.checkpoint).predict(paths, text)
    frames = [read_image(q).permute(1, 2, 0).numpy() for q in paths]
    print(f'"{text}": mask pixels per frame {[int(m.sum()) for m in r["masks"]]}')
    strip(frames, r["masks"], text, gts).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
