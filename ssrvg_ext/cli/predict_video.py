"""Segment the object an expression refers to in every frame of a video file or a folder of frames;
write the masks and an overlay video.

    ssrvg-predict-video --checkpoint runs/tiny_video/best.pth --video clip.mp4 --text "the circle that stops" --out out/
    ssrvg-predict-video --model models/tiny_video --video frames_dir/ --text "..." --out out/ --rle

Writes OUT/masks/<frame>.png (mode L, 0 / 255, each frame's size; --rle: OUT/masks.json with COCO
RLEs instead), OUT/boxes.json ([x0, y0, x1, y1] per frame, zeros where nothing was found) and
OUT/overlay.mp4 (the mask tinted and the box drawn on every frame; --no-overlay skips it). Frames
are named 00001, 00002, ... for a video file, by their file names for a folder. Reading and writing
video files needs PyAV (pip install av).
"""

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

from ssrvg_ext.ops import rle
from ssrvg_ext.predictor import VideoPredictor, as_image_tensor, load_frames


def overlay(frame: np.ndarray, mask: np.ndarray, box, text: str) -> np.ndarray:
    arr = frame.astype(np.float32)
    m = mask.astype(bool)
    arr[m] = arr[m] * 0.45 + np.array([255, 40, 40]) * 0.55
    im = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(im)
    if box[2] > box[0] and box[3] > box[1]:
        d.rectangle([float(v) for v in box], outline=(40, 255, 40), width=2)
    d.text((4, 4), text, fill=(255, 255, 255))
    return np.array(im)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a best.pth / last.pth of a video model")
    src.add_argument("--model", help="a model folder of ssrvg-export holding a video model")
    p.add_argument("--video", required=True, help="a video file (.mp4, .avi, ...) or a folder of frames")
    p.add_argument("--text", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rle", action="store_true", help="masks as COCO RLE in masks.json instead of PNGs")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--fps", type=float, default=10.0, help="of overlay.mp4")
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    try:
        frames = load_frames(a.video)
    except (FileNotFoundError, ValueError, ImportError) as e:
        sys.exit(f"ssrvg-predict-video: {e}")
    names = ([os.path.splitext(os.path.basename(f))[0] for f in frames] if os.path.isdir(a.video)
             else [f"{t + 1:05d}" for t in range(len(frames))])
    vp = VideoPredictor(a.checkpoint or a.model, device=a.device)
    r = vp.predict(frames, a.text)
    os.makedirs(a.out, exist_ok=True)
    masks = r["masks"]
    if a.rle:
        enc = rle.encode(masks)
        with open(os.path.join(a.out, "masks.json"), "w") as f:
            json.dump({n: {"size": e["size"], "counts": e["counts"].decode("ascii")} for n, e in zip(names, enc)}, f)
    else:
        os.makedirs(os.path.join(a.out, "masks"), exist_ok=True)
        for n, m in zip(names, masks):
            Image.fromarray(m.numpy() * 255).save(os.path.join(a.out, "masks", n + ".png"))
    boxes = {n: [round(float(v), 2) for v in b] for n, b in zip(names, r["boxes"])}
    with open(os.path.join(a.out, "boxes.json"), "w") as f:
        json.dump({"text": a.text, "boxes": boxes}, f, indent=1)
    if not a.no_overlay:
        from ssrvg_ext.data.video_io import write_video

        pics = [overlay(as_image_tensor(fr).permute(1, 2, 0).numpy(), m.numpy(), b, a.text)
                for fr, m, b in zip(frames, masks, r["boxes"].tolist())]
        write_video(pics, os.path.join(a.out, "overlay.mp4"), fps=a.fps)
    found = int((masks.flatten(1).sum(1) > 0).sum())
    print(f"{len(names)} frames, the object found in {found}; wrote {a.out}/"
          f"{'masks.json' if a.rle else 'masks/'}, boxes.json{'' if a.no_overlay else ', overlay.mp4'}")


if __name__ == "__main__":
    main()
