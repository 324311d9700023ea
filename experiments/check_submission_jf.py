"""J&F recomputed from a written submission's PNGs, apart from the library's metric code.

Reads ``SUBMISSION/Annotations/<video>/<exp_id>/<frame>.png`` (as ``ssrvg-eval --submission`` writes
them) and the split's ground truth ``<data>/<split>/Annotations/<video>/<frame>.png`` (object ids)
with PIL and numpy only, and computes the DAVIS measures as the DAVIS 2017 toolkit defines them
(davis2017/metrics.py): J = |P & G| / |P | G| (1 when both are empty); F = the F-measure of the
one-pixel boundaries (``_seg2bmap``) matched within a disk of ceil(0.008 * image diagonal) pixels,
with the toolkit's empty-boundary cases; per expression the mean over its frames, over the split the
mean over expressions, J&F = (J + F) / 2. Prints them beside ``--reported`` (an eval JSON of
ssrvg-eval) when given. No code of ssrvg_ext is imported.

    python experiments/check_submission_jf.py --submission runs/tiny_video/submission \
        [--data data/synthetic_video] [--split valid] [--reported runs/tiny_video/eval_valid.json]
"""

import argparse
import json
import math
import os

import numpy as np
from PIL import Image


def seg2bmap(m: np.ndarray) -> np.ndarray:
    """The toolkit's boundary map: a pixel differs from its east, south or south-east neighbour."""
    e, s, se = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    e[:, :-1] = m[:, 1:]
    s[:-1, :] = m[1:, :]
    se[:-1, :-1] = m[1:, 1:]
    b = (m ^ e) | (m ^ s) | (m ^ se)
    b[-1, :] = m[-1, :] ^ e[-1, :]
    b[:, -1] = m[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def dilate(b: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by the disk x^2 + y^2 <= r^2 (skimage's ``disk(r)``), as a union of shifts."""
    out = np.zeros_like(b)
    h, w = b.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy > r * r:
                continue
            out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= b[max(-dy, 0):h + min(-dy, 0),
                                                                         max(-dx, 0):w + min(-dx, 0)]
    return out


def j_measure(p: np.ndarray, g: np.ndarray) -> float:
    union = (p | g).sum()
    return 1.0 if union == 0 else (p & g).sum() / union


def f_measure(p: np.ndarray, g: np.ndarray, bound_th: float = 0.008) -> float:
    r = int(math.ceil(bound_th * math.hypot(*p.shape)))
    bp, bg = seg2bmap(p), seg2bmap(g)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g == 0:
        prec = rec = 1.0
    elif n_p > 0 and n_g == 0:
        prec, rec = 0.0, 1.0
    elif n_p == 0 and n_g > 0:
        prec, rec = 1.0, 0.0
    else:
        prec, rec = (bp & dilate(bg, r)).sum() / n_p, (bg & dilate(bp, r)).sum() / n_g
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--submission", required=True)
    ap.add_argument("--data", default="data/synthetic_video")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--reported", default=None, help="an eval JSON of ssrvg-eval to compare with")
    a = ap.parse_args()
    with open(os.path.join(a.data, "meta_expressions", a.split, "meta_expressions.json")) as f:
        videos = json.load(f)["videos"]
    js, fs = [], []
    for vid, v in sorted(videos.items()):
        gts = {fr: np.array(Image.open(os.path.join(a.data, a.split, "Annotations", vid, fr + ".png")))
               for fr in v["frames"]}
        for exp_id, e in sorted(v["expressions"].items()):
            jv, fv = [], []
            for fr in v["frames"]:
                path = os.path.join(a.submission, "Annotations", vid, exp_id, fr + ".png")
                if not os.path.isfile(path):
                    raise SystemExit(f"missing in the submission: {path}")
                p = np.array(Image.open(path).convert("L")) > 127
                g = gts[fr] == int(e["obj_id"])
                if p.shape != g.shape:
                    raise SystemExit(f"{path}: {p.shape} against the ground truth's {g.shape}")
                jv.append(j_measure(p, g))
                fv.append(f_measure(p, g))
            js.append(np.mean(jv))
            fs.append(np.mean(fv))
    j, f = float(np.mean(js)) * 100, float(np.mean(fs)) * 100
    print(f"{a.submission}, {a.split}: {len(js)} expressions, J&F {(j + f) / 2:.4f} %, J {j:.4f} %, F {f:.4f} %")
    if a.reported:
        with open(a.reported) as fh:
            m = json.load(fh)["metrics"]
        print(f"reported by ssrvg-eval: J&F {m['J&F'] * 100:.4f} %, J {m['J'] * 100:.4f} %, F {m['F'] * 100:.4f} %")


if __name__ == "__main__":
    main()
