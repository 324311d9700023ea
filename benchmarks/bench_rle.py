"""COCO RLE encode + IoU: ssrvg_ext vs pycocotools and the faster peers, measured in the same run.

Case: N object-like masks (ellipses/rectangles) of H x W as a torch uint8 tensor (N, H, W) -- what a
model produces. Work timed: encode all N masks to RLE dicts (compressed counts bytes), then the
N x N IoU matrix of those masks.
  pycocotools / faster-coco-eval / hotcoco (same interface; the peers are skipped when not
  installed: pip install faster-coco-eval hotcoco): np.asfortranarray(HxWxN) + mask.encode +
  mask.iou(rles, rles), and from a Fortran-ordered HxWxN array already made (--fortran)
  ours (CPU):  rle.encode(masks) + rle.iou(rles, rles); from the Fortran array: the same on
               torch.from_numpy(array).permute(2, 0, 1) (no copy)
  ours (CUDA): from a CUDA tensor, rle.encode(masks) (dicts in Python) + rle.mask_iou(masks, masks).cpu()
Every variant's RLEs and IoUs are checked equal to pycocotools' first.

    python benchmarks/bench_rle.py [--n 1000 100] [--size 480 640] [--repeat 3]
"""

import argparse
import importlib
import json

import numpy as np
import torch
from pycocotools import mask as cocomask

from common import alternating, device_name, object_masks
from ssrvg_ext.ops import rle


def peer_modules():
    """{name: pycocotools.mask-like module} of pycocotools and the installed peers."""
    mods = {"pycocotools": cocomask}
    for name, path in (("faster-coco-eval", "faster_coco_eval.core.mask"), ("hotcoco", "hotcoco.mask")):
        try:
            mods[name] = importlib.import_module(path)
        except ImportError:
            print(f"skipped {name}: not installed (pip install {name})")
    return mods


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 100])
    p.add_argument("--size", type=int, nargs=2, default=[480, 640])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    h, w = args.size
    print(f"device: {device_name()}; torch {torch.__version__}")
    print(f"{'case':24s} {'impl':34s} {'time (ms)':>10s} {'speed-up vs pycocotools':>24s}")
    results = []
    mods = peer_modules()
    for n in args.n:
        masks = object_masks(n, h, w)
        fortran = np.asfortranarray(masks.permute(1, 2, 0).numpy())  # what COCO-style code often holds
        crowd = [0] * n

        def peer(mod, from_fortran):
            def run():
                rles = mod.encode(fortran if from_fortran else np.asfortranarray(masks.permute(1, 2, 0).numpy()))
                return rles, np.asarray(mod.iou(rles, rles, crowd))
            return run

        def ours_cpu(from_fortran=False):
            def run():
                m = torch.from_numpy(fortran).permute(2, 0, 1) if from_fortran else masks
                rles = rle.encode(m)
                return rles, rle.iou(rles, rles, crowd).numpy()
            return run

        def ours_cpu_masks():
            rles = rle.encode(masks)
            return rles, rle.mask_iou(masks, masks).numpy()

        want_rles, ref = peer(cocomask, False)()
        fns = {}
        for name, mod in mods.items():
            fns[f"{name}: tensor"] = peer(mod, False)
            fns[f"{name}: fortran array"] = peer(mod, True)
        fns.update({"ours cpu: tensor, encode+iou": ours_cpu(), "ours cpu: fortran array": ours_cpu(True),
                    "ours cpu: encode+mask_iou": ours_cpu_masks})
        for name, fn in fns.items():  # outputs equal first
            got_rles, got_iou = fn()
            assert [r["counts"] for r in got_rles] == [r["counts"] for r in want_rles], name
            assert np.array_equal(np.asarray(got_iou), ref), name
        if torch.cuda.is_available():
            mc = masks.cuda()

            def ours_cuda():
                rles = rle.encode(mc)
                return rles, rle.mask_iou(mc, mc, crowd).cpu()

            got_rles, got_iou = ours_cuda()
            exact = [r["counts"] for r in got_rles] == [r["counts"] for r in want_rles] and np.array_equal(got_iou.numpy(), ref)
            assert exact, "CUDA RLE / IoU differ from pycocotools"
            print(f"{n}x{h}x{w}: CUDA encode and mask_iou bit-exact with pycocotools")
            fns["ours cuda: encode+mask_iou"] = ours_cuda
        case = f"{n}x{h}x{w}"
        times = alternating(fns, repeat=args.repeat, device="cuda" if torch.cuda.is_available() else None)
        t_ref = times["pycocotools: tensor"]
        for name, t in times.items():
            print(f"{case:24s} {name:34s} {t * 1e3:10.1f} {t_ref / t:24.2f}")
            results.append({"case": case, "impl": name, "ms": t * 1e3, "speedup_vs_pycocotools": t_ref / t})
        for src in ("tensor", "fortran array"):
            peers_t = {k: v for k, v in times.items() if k.endswith(src) and not k.startswith("ours")}
            best = min(peers_t, key=peers_t.get)
            ours_t = times["ours cpu: tensor, encode+iou" if src == "tensor" else "ours cpu: fortran array"]
            print(f"  -> from a {src}: ours {peers_t[best] / ours_t:.2f}x the fastest peer ({best})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(), "torch": torch.__version__, "rows": results}, f, indent=2)

if __name__ == "__main__":
    main()
