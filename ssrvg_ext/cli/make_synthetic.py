"""Generate the embedded synthetic referring-expression dataset in RefCOCO's release format.

    python -m ssrvg_ext.cli.make_synthetic --out data/synthetic [--images 1500] [--eval-images 100] [--seed 0] [--workers N]

val, testA and testB get 1/15 of the images each, at most --eval-images; the rest is train. Images are
made by --workers processes (default: one per core); the output does not depend on their number.
"""

import argparse
import json
import os
import time

from tqdm import tqdm

from ssrvg_ext.data.synthetic.images import generate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--eval-images", type=int, default=100, help="images per held-out split, at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU core)")
    args = p.parse_args()
    t0 = time.perf_counter()
    bar = tqdm(total=args.images, desc="scenes", unit="img", disable=None)
    stats = generate(args.out, num_images=args.images, seed=args.seed, eval_images=args.eval_images,
                     workers=args.workers, progress=lambda i, n: bar.update(1))
    bar.close()
    print(f"wrote {stats['expressions']} expressions ({stats['refs']} referred objects, {stats['objects']} objects, "
          f"{stats['images']} images) to {args.out} in {time.perf_counter() - t0:.1f} s")
    print("expressions per split: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["per_split"].items())))
    # one validation expression for the demo
    from ssrvg_ext.data import load_refer
    rec = load_refer(args.out, os.path.join(args.out, "images"), splits=["val"])[0]
    with open(os.path.join(args.out, "example.json"), "w") as f:
        json.dump({"image": rec.image_path, "text": rec.text, "box_xyxy": rec.box_xyxy}, f)
    print(f"sample picture: {rec.image_path} (\"{rec.text}\", written to {os.path.join(args.out, 'example.json')})")


if __name__ == "__main__":
    main()
