"""Multi-scale deformable attention: ssrvg_ext's op against what a user would otherwise install, same run.

Implementations (the variants alternate within every round; outputs checked equal to ours first):
  ours                  ssrvg_ext.ops.ms_deform_attn
  torch-ms-deform-attn  the peer package (CPU / CUDA / MPS; pip install torch-ms-deform-attn)
  ms-deform-attn        Deformable DETR's CUDA op as a package (CUDA only; pip install ms-deform-attn)
  dcnv4                 DCNv4's flash deformable attention (CUDA only; pip install dcnv4)
  reference             the grid_sample reference (eager; "reference compiled": under torch.compile)
A peer that is not installed (or has no kernel for the device) is skipped with a message.

Cases (4 levels at strides 8/16/32/64, sampling at a reference point + up to 4 px offsets):
  tiny-enc / tiny-dec     the tiny preset at 160 px: M=4 heads, D=16, P=2; encoder queries = all 534
                          pixels, decoder = its 3 queries
  swint-enc / swint-dec   the Swin-T RefCOCO preset at 640 px: M=8, D=32, P=4; 8500 pixels, 5 queries
  enc512 / dec32          Deformable DETR's M=8, D=32, P=4 at 512 px: all 5440 pixels, 32 queries
  enc800                  the same at 800x1333 (GPU only)
each at batch 1 and 8 (--batch), fp32 and bf16 (--dtypes), forward and forward + backward.

    python benchmarks/bench_ms_deform_attn.py [--device cpu|cuda] [--cases tiny-dec enc512] [--batch 1 8]
        [--dtypes fp32 bf16] [--repeat 5] [--compile-cases ...] [--json out.json]
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternating, device_name  # noqa: E402
from ssrvg_ext.ops import ms_deform_attn, reference  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def level_shapes(h, w):
    return [(-(-h // s), -(-w // s)) for s in (8, 16, 32, 64)]


# name -> (levels, queries (None: every pixel), heads M, channels D, points P)
CASES = {
    "tiny-enc": (level_shapes(160, 160), None, 4, 16, 2),
    "tiny-dec": (level_shapes(160, 160), 3, 4, 16, 2),
    "swint-enc": (level_shapes(640, 640), None, 8, 32, 4),
    "swint-dec": (level_shapes(640, 640), 5, 8, 32, 4),
    "enc512": (level_shapes(512, 512), None, 8, 32, 4),
    "dec32": (level_shapes(512, 512), 32, 8, 32, 4),
    "enc800": (level_shapes(800, 1333), None, 8, 32, 4),
}
GPU_ONLY = {"enc800"}


def make_case(shapes, lq, m, d, p, n, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    sh = torch.tensor(shapes)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (sh[:, 0] * sh[:, 1]).cumsum(0)[:-1]])
    s = int((sh[:, 0] * sh[:, 1]).sum())
    nl = len(shapes)
    if lq is None:  # encoder: one query per pixel, reference point at the pixel centre
        refs = [torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")[::-1], -1).reshape(-1, 2)
                for h, w in shapes]
        ref = torch.cat(refs)[None].expand(n, -1, -1)
        lq = s
    else:
        ref = torch.rand(n, lq, 2, generator=g)
    wh = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    off = (torch.rand(n, lq, m, nl, p, 2, generator=g) * 8 - 4) / wh[None, None, None, :, None, :]
    loc = ref[:, :, None, None, None, :] + off
    value = torch.randn(n, s, m, d, generator=g)
    attn = torch.rand(n, lq, m, nl * p, generator=g).softmax(-1).view(n, lq, m, nl, p)  # over levels x points
    # the level table stays on the CPU, as the model passes it (no host synchronisation per call)
    return (value.to(device, dtype), sh, starts, loc.to(device, dtype), attn.to(device, dtype))


def peers(device):
    """{name: fn(value, shapes, starts, loc, attn)} of the installed peers that run on ``device``."""
    found = {}
    try:
        import torch_ms_deform_attn

        found["torch-ms-deform-attn"] = torch_ms_deform_attn.ms_deform_attn
    except ImportError:
        print("skipped torch-ms-deform-attn: not installed (pip install torch-ms-deform-attn)")
    if device == "cuda":
        try:
            from ms_deform_attn import MSDeformAttnFunction

            found["ms-deform-attn"] = lambda v, s, st, loc, a: MSDeformAttnFunction.apply(v, s.to(v.device), st.to(v.device), loc, a, 64)
        except ImportError:
            print("skipped ms-deform-attn: not installed (pip install ms-deform-attn)")
        try:
            from DCNv4.functions import FlashDeformAttnFunction

            # DCNv4 takes [locations (L*P*2), attention logits (L*P)] per head and applies the softmax over
            # the L*P weights itself: the log of weights normalised that way gives them back
            found["dcnv4"] = lambda v, s, st, loc, a: FlashDeformAttnFunction.apply(
                v, s.to(v.device), st.to(v.device), torch.cat([loc.flatten(3), a.flatten(3).log()], -1), 64, a.shape[4])
        except ImportError:
            print("skipped dcnv4: not installed (pip install dcnv4)")
    else:
        print("skipped ms-deform-attn and dcnv4: CUDA only")
    return found


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cases", nargs="*", default=None, help=f"of {list(CASES)} (default: all for the device)")
    p.add_argument("--batch", nargs="*", type=int, default=[1, 8])
    p.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--min-sample", type=float, default=0.02,
                   help="seconds of back-to-back calls per timed sample (small cases run many calls per sample)")
    p.add_argument("--reference", action="store_true", help="also time the grid_sample reference (slow on a CPU)")
    p.add_argument("--compile-cases", nargs="*", default=[],
                   help="cases that also time the reference under torch.compile (with --reference)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    dev = args.device
    print(f"device: {device_name() if dev == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'}; torch {torch.__version__}")
    others = peers(dev)
    cases = args.cases or [c for c in CASES if dev == "cuda" or c not in GPU_ONLY]
    print(f"{'case':10s} {'B':>2s} {'dtype':5s} {'impl':22s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'ours vs it: fwd':>15s} {'f+b':>6s}")
    rows = []
    for name in cases:
        shapes, lq, m, d, pts = CASES[name]
        for b in args.batch:
            for dt in args.dtypes:
                base = make_case(shapes, lq, m, d, pts, b, dev, DTYPES[dt])
                ours = ms_deform_attn(*base).float()
                impls = {"ours": ms_deform_attn}
                tol = dict(rtol=1e-4, atol=1e-5) if dt == "fp32" else dict(rtol=2e-2, atol=2e-2)
                for peer, fn in others.items():  # outputs equal first
                    try:
                        torch.testing.assert_close(fn(*base).float(), ours, **tol)
                    except Exception as e:  # noqa: BLE001 - a peer without this dtype / device is reported, not fatal
                        print(f"  {peer} skipped for {name} B={b} {dt}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                        continue
                    impls[peer] = fn
                if args.reference:
                    impls["reference"] = reference.ms_deform_attn
                    if name in args.compile_cases:
                        impls["reference compiled"] = torch.compile(reference.ms_deform_attn, dynamic=False)
                fwd, fwd_bwd = {}, {}
                for impl, fn in impls.items():
                    xs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in base]

                    def f(fn=fn, xs=xs):
                        with torch.no_grad():
                            fn(*xs)

                    def fb(fn=fn, xs=xs):
                        for x in xs:
                            x.grad = None
                        fn(*xs).sum().backward()

                    fwd[impl], fwd_bwd[impl] = f, fb
                t_f = alternating(fwd, repeat=args.repeat, warmup=3, device=dev, min_sample=args.min_sample, warmup_s=0.3)
                t_fb = alternating(fwd_bwd, repeat=args.repeat, warmup=3, device=dev, min_sample=args.min_sample, warmup_s=0.3)
                for impl in impls:
                    rf, rfb = t_f[impl] / t_f["ours"], t_fb[impl] / t_fb["ours"]
                    print(f"{name:10s} {b:2d} {dt:5s} {impl:22s} {t_f[impl] * 1e3:9.3f} {t_fb[impl] * 1e3:11.3f} "
                          f"{'' if impl == 'ours' else f'{rf:.2f}x':>15s} {'' if impl == 'ours' else f'{rfb:.2f}x':>6s}")
                    rows.append({"case": name, "batch": b, "dtype": dt, "impl": impl, "fwd_ms": t_f[impl] * 1e3,
                                 "fwd_bwd_ms": t_fb[impl] * 1e3, "ours_speedup_fwd": rf, "ours_speedup_fwd_bwd": rfb})
                peer_rows = [r for r in rows[-len(impls):] if r["impl"] in others]
                if peer_rows:
                    best_f = min(peer_rows, key=lambda r: r["fwd_ms"])
                    best_fb = min(peer_rows, key=lambda r: r["fwd_bwd_ms"])
                    print(f"  -> vs the fastest peer: fwd {best_f['ours_speedup_fwd']:.2f}x ({best_f['impl']}), "
                          f"fwd+bwd {best_fb['ours_speedup_fwd_bwd']:.2f}x ({best_fb['impl']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name() if dev == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
                       "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
