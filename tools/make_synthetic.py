"""Generate the embedded synthetic referring-expression dataset in RefCOCO's release format.

    python tools/make_synthetic.py --out data/synthetic [--images 1500] [--seed 0]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from ssrvg_ext.data.synthetic import generate  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    t0 = time.perf_counter()
    bar = tqdm(total=args.images, desc="scenes", unit="img", disable=None)
    stats = generate(args.out, num_images=args.images, seed=args.seed, progress=lambda i, n: bar.update(1))
    bar.close()
    print(f"wrote {stats['expressions']} expressions ({stats['refs']} referred objects, {stats['objects']} objects, "
          f"{stats['images']} images) to {args.out} in {time.perf_counter() - t0:.1f} s")
    print("expressions per split: " + ", ".join(f"{k} {v}" for k, v in sorted(stats["per_split"].items())))
    print(f"sample picture: {os.path.join(args.out, 'images', 'synth_000001.jpg')}")


if __name__ == "__main__":
    main()
