"""Generate the embedded synthetic video dataset in Ref-YouTube-VOS's release format (docs/video.md),
or tiny A2D-Sentences / JHMDB-Sentences sets in theirs (.mp4 clips and .h5 annotations; frame
folders and puppet_mask.mat).

    python -m ssrvg_ext.cli.make_synthetic_video --out data/synthetic_video [--clips 600] [--frames 8] [--seed 0]
    python -m ssrvg_ext.cli.make_synthetic_video --format a2d --out data/tiny_a2d [--clips 40] [--frames 12]
    python -m ssrvg_ext.cli.make_synthetic_video --format jhmdb --out data/tiny_jhmdb [--clips 12] [--frames 10]

ytvos: valid and testB (the rarer motions) get a tenth of the clips each, at most --eval-clips; the
rest is train. a2d: every fourth clip is in test. Writing a2d / jhmdb needs PyAV, h5py and scipy.
"""

import argparse
import time

from tqdm import tqdm

from ssrvg_ext.data.synthetic.videos import generate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--format", default="ytvos", choices=["ytvos", "a2d", "jhmdb"])
    p.add_argument("--clips", type=int, default=None, help="default: 600 (ytvos), 40 (a2d), 12 (jhmdb)")
    p.add_argument("--frames", type=int, default=None, help="default: 8 (ytvos), 12 (a2d), 10 (jhmdb)")
    p.add_argument("--size", type=int, default=128, help="frame side in pixels")
    p.add_argument("--eval-clips", type=int, default=60, help="clips per held-out split, at most")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    t0 = time.perf_counter()
    if a.format != "ytvos":
        from ssrvg_ext.data.synthetic.rvos_sets import generate_a2d, generate_jhmdb

        clips = a.clips or (40 if a.format == "a2d" else 12)
        frames = a.frames or (12 if a.format == "a2d" else 10)
        if a.format == "a2d":
            counts = generate_a2d(a.out, clips=clips, frames=frames, size=a.size, seed=a.seed)
            print(f"wrote a tiny A2D-Sentences ({clips} clips of {frames} frames; expressions: train {counts['train']}, "
                  f"test {counts['test']}) to {a.out} in {time.perf_counter() - t0:.1f} s")
        else:
            n = generate_jhmdb(a.out, clips=clips, frames=frames, size=a.size, seed=a.seed)
            print(f"wrote a tiny JHMDB-Sentences ({n} videos of {frames} frames) to {a.out} in "
                  f"{time.perf_counter() - t0:.1f} s")
        return
    a.clips, a.frames = a.clips or 600, a.frames or 8
    bar = tqdm(total=a.clips, desc="clips", unit="clip", disable=None)
    counts = generate(a.out, clips=a.clips, seed=a.seed, frames=a.frames, size=a.size, eval_clips=a.eval_clips,
                      progress=lambda i, n: bar.update(1))
    bar.close()
    print(f"wrote {a.clips} clips of {a.frames} frames to {a.out} in {time.perf_counter() - t0:.1f} s")
    print("expressions per split and kind: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
