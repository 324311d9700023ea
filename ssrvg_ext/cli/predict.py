"""Ground expressions in images with a trained checkpoint; write the results as JSON.

    ssrvg-predict --checkpoint runs/tiny/best.pth --jsonl queries.jsonl --out results.json
    ssrvg-predict --checkpoint runs/tiny/best.pth --folder photos/ --text "the dog on the left" --out results.json

--jsonl: one {"image": path, "text": expression} per line (paths relative to the JSONL's folder).
--folder: every .jpg / .jpeg / .png / .bmp / .webp in the folder, each with --text. The output is a
list of {"image", "text", "box": [x0, y0, x1, y1] (pixels), "score", "mask": COCO RLE with string
counts}, in input order.
"""

import argparse
import json
import os

from ssrvg_ext.predictor import Predictor

IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_queries(a) -> list[tuple[str, str]]:
    if a.jsonl:
        base, out = os.path.dirname(os.path.abspath(a.jsonl)), []
        with open(a.jsonl) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    q = json.loads(line)
                    out.append((os.path.join(base, q["image"]), q["text"]))
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise SystemExit(f"{a.jsonl}:{n}: expected {{\"image\": path, \"text\": expression}} ({e})")
        return out
    names = sorted(n for n in os.listdir(a.folder) if n.lower().endswith(IMAGE_EXT))
    if not names:
        raise SystemExit(f"no images ({', '.join(IMAGE_EXT)}) in {a.folder}")
    return [(os.path.join(a.folder, n), a.text) for n in names]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--jsonl", help="queries, one JSON object per line")
    src.add_argument("--folder", help="a folder of images (with --text)")
    p.add_argument("--text", help="the expression for every image of --folder")
    p.add_argument("--out", default="predictions.json")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the GPU when there is one)")
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args()
    if a.folder and not a.text:
        p.error("--folder needs --text")
    queries = read_queries(a)
    predictor = Predictor(a.checkpoint, device=a.device, amp=a.amp, batch_size=a.batch_size)
    results = predictor.predict([img for img, _ in queries], [t for _, t in queries], as_rle=True)
    for (img, _), r in zip(queries, results):
        r["image"] = img
        r["mask"] = {"size": r["mask"]["size"], "counts": r["mask"]["counts"].decode("ascii")}
    with open(a.out, "w") as f:
        json.dump(results, f)
    print(f"{len(results)} predictions written to {a.out}")


if __name__ == "__main__":
    main()
