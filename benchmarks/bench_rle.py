"""COCO RLE encode + IoU: ssrvg_ext vs pycocotools, measured in the same run.

Case: N object-like masks (ellipses/rectangles) of H x W as a torch uint8 tensor (N, H, W) -- what a
model produces. Work timed: encode all N masks to RLE dicts (compressed counts bytes), then the
N x N IoU matrix of those masks.
  pycocotools: np.asfortranarray(HxWxN) + mask.encode + mask.iou(rles, rles)
  ours (CPU):  rle.encode(masks) + rle.iou(rles, rles)
  ours (CUDA): from a CUDA tensor, rle.encode(masks) (dicts in Python) + rle.mask_iou(masks, masks).cpu()

    python benchmarks/bench_rle.py [--n 1000 100] [--size 480 640] [--repeat 3]
"""

import argparse
import json

import numpy as np
import torch
from pycocotools import mask as cocomask

from common import alternating, device_name, object_masks
from ssrvg_ext.ops import rle


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 100])
    p.add_argument("--size", type=int, nargs=2, default=[480, 640])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    h, w = args.size
    print(f"device: {device_name()}; torch {torch.__version__}")
    print(f"{'case':24s} {'impl':28s} {'time (ms)':>10s} {'speed-up vs pycocotools':>24s}")
    results = []
    for n in args.n:
        masks = object_masks(n, h, w)
        crowd = [0] * n

        def coco():
            rles = cocomask.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy()))
            return np.asarray(cocomask.iou(rles, rles, crowd))

        def ours_cpu():
            rles = rle.encode(masks)
            return rle.iou(rles, rles, crowd)

        def ours_cpu_masks():
            rles = rle.encode(masks)
            return rles, rle.mask_iou(masks, masks)

        ref = coco()
        want_rles = cocomask.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy()))
        assert np.array_equal(ours_cpu().numpy(), ref) and np.array_equal(ours_cpu_masks()[1].numpy(), ref)
        fns = {"pycocotools (host)": coco, "ours cpu: encode+iou": ours_cpu, "ours cpu: encode+mask_iou": ours_cpu_masks}
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
        t_ref = times["pycocotools (host)"]
        for name, t in times.items():
            print(f"{case:24s} {name:28s} {t * 1e3:10.1f} {t_ref / t:24.2f}")
            results.append({"case": case, "impl": name, "ms": t * 1e3, "speedup_vs_pycocotools": t_ref / t})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name(), "torch": torch.__version__, "rows": results}, f, indent=2)

if __name__ == "__main__":
    main()
