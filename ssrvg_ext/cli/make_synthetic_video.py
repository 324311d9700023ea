"""Generate the embedded synthetic video dataset in Ref-YouTube-VOS's release format (docs/video.md).

    python -m ssrvg_ext.cli.make_synthetic_video --out data/synthetic_video [--clips 600] [--frames 8] [--seed 0]

valid and testB (the rarer motions) get a tenth of the clips each, at most --eval-clips; the rest is train.
"""

import argparse
import time

from tqdm import tqdm

from ssrvg_ext.data.synthetic.videos import generate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="frame side in pixels")
    p.add_argument("--eval-clips", type=int, default=60, help="clips per held-out split, at most")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    bar = tqdm(total=a.clips, desc="clips", unit="clip", disable=None)
    counts = generate(a.out, clips=a.clips, seed=a.seed, frames=a.frames, size=a.size, eval_clips=a.eval_clips,
                      progress=lambda i, n: bar.update(1))
    bar.close()
    print(f"wrote {a.clips} clips of {a.frames} frames to {a.out} in {time.perf_counter() - t0:.1f} s")
    print("expressions per split and kind: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
