"""Multi-scale deformable attention: ssrvg_ext op vs the grid_sample reference, same run.

Cases (M=8 heads, D=32 channels per head, P=4 points, 4 levels at strides 8/16/32/64):
  enc512    encoder on a 512x512 input: queries = all 5440 pixels, B=2
  enc800    encoder on 800x1333 (GPU only): queries = all pixels, B=2
  dec32     decoder / REC-sized: 32 queries on the 512x512 maps, B=2
Sampling locations are reference points (the query's own pixel for the encoder, random for the
decoder) plus offsets of up to 4 pixels per level, as the module produces them.
Reported: forward and forward+backward time, speed-up over the reference, and the achieved
bytes/s of the memory-traffic floor (every input read once, every output written once; for the
backward also the gradients written once) against the device's measured copy bandwidth.

Implementations: the grid_sample reference (eager, and under torch.compile), and ours; the
variants alternate within every round.

    python benchmarks/bench_ms_deform_attn.py [--device cpu|cuda] [--repeat 5] [--compile-cases enc512]
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternating, device_name, timeit  # noqa: E402
from ssrvg_ext.ops import ms_deform_attn, reference  # noqa: E402

M, D, P = 8, 32, 4


def level_shapes(h, w):
    return [(-(-h // s), -(-w // s)) for s in (8, 16, 32, 64)]


def make_case(shapes, lq, n, device, dtype, seed=0):
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
    off = (torch.rand(n, lq, M, nl, P, 2, generator=g) * 8 - 4) / wh[None, None, None, :, None, :]
    loc = ref[:, :, None, None, None, :] + off
    value = torch.randn(n, s, M, D, generator=g)
    attn = torch.rand(n, lq, M, nl, P, generator=g).softmax(-1)
    # the level table stays on the CPU, as the model passes it (no host synchronisation per call)
    return (value.to(device, dtype), sh, starts, loc.to(device), attn.to(device, dtype))


def floor_bytes(args, backward):
    value, _, _, loc, attn = args
    out = value.shape[0] * loc.shape[1] * value.shape[2] * value.shape[3] * value.element_size()
    ins = value.nbytes + loc.nbytes + attn.nbytes
    return ins + out if not backward else 2 * (ins + out)  # + grad_out read, grads written


def copy_bandwidth(device):
    x = torch.empty(64 * 2**20, dtype=torch.float32, device=device)  # 256 MiB
    t = timeit(lambda: x.clone(), repeat=5, device=device)
    return 2 * x.nbytes / t


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile-cases", nargs="*", default=None,
                   help="cases that also time the reference under torch.compile (default: all; none: skip)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    dev = args.device
    bw = copy_bandwidth(dev)
    print(f"device: {device_name() if dev == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'}; torch {torch.__version__}; "
          f"measured copy bandwidth {bw / 1e9:.1f} GB/s")
    cases = [("enc512", level_shapes(512, 512), None), ("dec32", level_shapes(512, 512), 32)]
    if dev == "cuda":
        cases.insert(1, ("enc800", level_shapes(800, 1333), None))
    dtypes = [torch.float32] + ([torch.bfloat16] if dev == "cuda" else [])
    print(f"{'case':8s} {'dtype':9s} {'impl':20s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'speed-up f+b':>12s} {'floor GB/s':>11s} {'of copy bw':>10s}")
    rows = []
    for name, shapes, lq in cases:
        for dtype in dtypes:
            base = make_case(shapes, lq, 2, dev, dtype)
            ref_out = reference.ms_deform_attn(*base)
            torch.testing.assert_close(ms_deform_attn(*base).float(), ref_out.float(), rtol=2e-2, atol=2e-2)
            impls = {"reference": reference.ms_deform_attn}
            if args.compile_cases is None or name in args.compile_cases:
                impls["reference compiled"] = torch.compile(reference.ms_deform_attn, dynamic=False)
            impls["ours"] = ms_deform_attn
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
            t_f = alternating(fwd, repeat=args.repeat, warmup=2, device=dev)
            t_fb = alternating(fwd_bwd, repeat=args.repeat, warmup=2, device=dev)
            for impl in impls:
                gbs = floor_bytes(base, True) / t_fb[impl]
                speed = t_fb["reference"] / t_fb[impl]
                print(f"{name:8s} {str(dtype)[6:]:9s} {impl:20s} {t_f[impl] * 1e3:9.3f} {t_fb[impl] * 1e3:11.3f} {speed:12.2f} "
                      f"{gbs / 1e9:11.2f} {gbs / bw:10.3f}")
                rows.append({"case": name, "dtype": str(dtype)[6:], "impl": impl, "fwd_ms": t_f[impl] * 1e3,
                             "fwd_bwd_ms": t_fb[impl] * 1e3, "speedup_fwd_bwd_vs_reference": speed,
                             "floor_GBps": gbs / 1e9, "fraction_of_copy_bw": gbs / bw})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
                       "copy_bw_GBps": bw / 1e9, "rows": rows}, f, indent=2)

if __name__ == "__main__":
    main()
