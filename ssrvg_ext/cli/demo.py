"""Ground one expression in one image: print the box, write a PNG with the mask and box drawn; or
serve the web demo, a local page where one uploads a photo, types expressions and sees the answers.

    python -m ssrvg_ext.cli.demo --checkpoint runs/tiny/best.pth --image IMG --text "the small blue triangle" [--out demo.png]
    python -m ssrvg_ext.cli.demo --checkpoint runs/tiny/best.pth --example data/synthetic/example.json
    python -m ssrvg_ext.cli.demo --web --model models/tiny [--port 7860] [--examples a.jpg b.jpg]

--model takes a model folder of ssrvg-export, --checkpoint a training checkpoint. The web demo binds
to 127.0.0.1 (this machine only) unless --host says otherwise; a video model's page takes the frames
of a clip. Upload limits: --max-upload-mb, --max-pixels, --max-side.
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from ssrvg_ext.data.dataset import read_image
from ssrvg_ext.predictor import Predictor


def example_images(model_path: str, given, most: int = 6) -> list[str]:
    """The --examples files, or the first images of the model's own image folder when it is here."""
    if given:
        return list(given)
    from ssrvg_ext import model_folder
    from ssrvg_ext.engine import checkpoint

    try:
        cfg = (model_folder.read_meta(model_path) if os.path.isdir(model_path) else checkpoint.load(model_path))["config"]
    except (OSError, ValueError, RuntimeError):
        return []
    folder = cfg["data"].get("image_dir") or ""
    if not os.path.isdir(folder):
        return []
    from ssrvg_ext.web.server import EXAMPLE_EXT

    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(EXAMPLE_EXT))[:most]
    return [os.path.join(folder, n) for n in names]


def serve(a) -> None:
    from ssrvg_ext.predictor import load_predictor
    from ssrvg_ext.web.server import DemoApp, Limits, make_server

    path = a.model or a.checkpoint
    predictor = load_predictor(path, device=a.device)
    limits = Limits(max_bytes=int(a.max_upload_mb * 2**20), max_pixels=a.max_pixels, max_side=a.max_side)
    app = DemoApp(predictor, example_images(path, a.examples), limits, name=os.path.basename(os.path.normpath(path)))
    server = make_server(app, a.host, a.port)
    host, port = server.server_address[:2]
    if a.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {a.host}: anyone who can reach this machine can use the demo", flush=True)
    print(f"ssrvg-demo: serving {app.name} at http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ "
          "(Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


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
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a best.pth / last.pth of ssrvg-train")
    src.add_argument("--model", help="a model folder of ssrvg-export")
    p.add_argument("--web", action="store_true", help="serve the web demo instead of writing one picture")
    p.add_argument("--host", default="127.0.0.1", help="web: the address to bind (default this machine only)")
    p.add_argument("--port", type=int, default=7860, help="web: the port (0: a free one)")
    p.add_argument("--examples", nargs="*", help="web: example images offered on the page "
                                                  "(default: the first images of the model's image folder, when present)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="web: largest upload (default 10 MiB)")
    p.add_argument("--max-pixels", type=int, default=16 * 2**20, help="web: largest image area (default 16.8 Mpx)")
    p.add_argument("--max-side", type=int, default=8192, help="web: longest image side (default 8192)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU when there is one)")
    p.add_argument("--image")
    p.add_argument("--text")
    p.add_argument("--example", help="JSON with 'image' and 'text' (ssrvg_ext.cli.make_synthetic writes one)")
    p.add_argument("--out", default="demo.png")
    a = p.parse_args()
    if a.web:
        return serve(a)
    a.checkpoint = a.checkpoint or a.model
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
