"""Ground one expression in one image: print the box, write a PNG with the mask and box drawn.

    python -m ssrvg_ext.cli.demo --checkpoint runs/tiny/best.pth --image IMG --text "the small blue triangle" [--out demo.png]
    python -m ssrvg_ext.cli.demo --checkpoint runs/tiny/best.pth --example data/synthetic/example.json
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from ssrvg_ext.data.dataset import read_image
from ssrvg_ext.predictor import Predictor


def ground(ckpt_path: str, image_path: str, text: str):
    if not os.path.isfile(image_path):
        raise FileNotFoundError(f"image {image_path} not found")
    [pred] = Predictor(ckpt_path).predict(image_path, text)
    img = Image.fromarray(read_image(image_path).permute(1, 2, 0).numpy())
    return img, pred


def draw(img: Image.Image, pred: dict, text: str) -> Image.Image:
    m = pred["mask"].numpy().astype(bool)
    arr = np.array(img).astype(np.float32)
    arr[m] = arr[m] * 0.45 + np.array([255, 40, 40]) * 0.55
    out = Image.fromarray(arr.astype(np.uint8))
    d = ImageDraw.Draw(out)
    d.rectangle([float(v) for v in pred["box"]], outline=(40, 255, 40), width=2)
    d.text((4, 4), text, fill=(255, 255, 255))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image")
    p.add_argument("--text")
    p.add_argument("--example", help="JSON with 'image' and 'text' (ssrvg_ext.cli.make_synthetic writes one)")
    p.add_argument("--out", default="demo.png")
    a = p.parse_args()
    if a.example:
        import json

        with open(a.example) as f:
            ex = json.load(f)
        a.image, a.text = a.image or ex["image"], a.text or ex["text"]
    if not (a.image and a.text):
        p.error("give --image and --text, or --example")
    img, pred = ground(a.checkpoint, a.image, a.text)
    x0, y0, x1, y1 = (float(v) for v in pred["box"])
    print(f"box (x0, y0, x1, y1) = ({x0:.1f}, {y0:.1f}, {x1:.1f}, {y1:.1f}); mask pixels = {int(pred['mask'].sum())}; "
          f"score {pred['score']:.3f}")
    draw(img, pred, a.text).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
