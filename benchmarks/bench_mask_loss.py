"""Fused upsampled mask loss vs the unfused PyTorch computation, measured in the same run.

Loss: 5 * dice + 2 * mean BCE of masks predicted at low resolution and supervised at full
resolution (the usual RES recipe). Forward + backward to the low-res logits.
  unfused:  F.interpolate -> sigmoid -> dice/BCE in eager PyTorch (and under torch.compile)
  ours:     ssrvg_ext.ops.upsampled_mask_loss: one op (the sums, the terms, the weighted total; its
            backward one op too)
  sums op:  the same kernels as two ops with the loss formed from the per-mask sums by PyTorch ops
            (how the loss was computed before it became one op; --sums-variant)
Cases: the model's own shapes (the tiny preset: 40 x 40 logits of 160 px inputs, batch 16; the Swin-T
RefCOCO preset: 160 x 160 logits of 640 px inputs, batch 8) and two generic ones; float32 and bfloat16
logits (--dtypes). The figure that counts is ours against torch.compile of the unfused code.
Peak extra memory: on CPU, the growth of the process's peak resident set over one forward+backward
(measured in a fresh child process per implementation, peak reset through /proc/self/clear_refs);
on CUDA, torch.cuda.max_memory_allocated above the inputs.

    python benchmarks/bench_mask_loss.py [--device cpu|cuda] [--no-compile] [--cases tiny swint] [--dtypes fp32 bf16]
"""

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternating, device_name  # noqa: E402
from ssrvg_ext.ops import upsampled_mask_loss, upsampled_mask_sums  # noqa: E402
from ssrvg_ext.ops.mask_loss import losses_from_sums  # noqa: E402

CASES = {"tiny": (16, 40, 160), "swint": (8, 160, 640), "32x160->640": (32, 160, 640), "8x120->480": (8, 120, 480)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # (masks, low-res side, full-res side); logits dtype
WEIGHTS = {"dice": 5.0, "bce": 2.0}


def unfused(logits, targets):
    z = F.interpolate(logits.unsqueeze(1), size=targets.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)
    p, t = z.sigmoid(), targets.to(z.dtype)
    dice = 1 - (2 * (p * t).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none").flatten(1).mean(1)
    return (WEIGHTS["dice"] * dice.sum() + WEIGHTS["bce"] * bce.sum()) / logits.shape[0]


def fused(logits, targets):
    return upsampled_mask_loss(logits, targets, WEIGHTS)


def sums_then_torch(logits, targets):
    per = losses_from_sums(upsampled_mask_sums(logits, targets), torch.full((logits.shape[0],), targets[0].numel()),
                           tuple(WEIGHTS))
    return sum(w * per[k].sum() for k, w in WEIGHTS.items()) / logits.shape[0]


def inputs(b, lo, hi, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(b, lo, lo, generator=g) * 2).to(device, dtype).requires_grad_(True)
    yy, xx = torch.meshgrid(torch.arange(hi), torch.arange(hi), indexing="ij")
    c = torch.rand(b, 2, generator=g) * hi
    r = torch.rand(b, generator=g) * hi / 3 + 8
    targets = (((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) <= r[:, None, None] ** 2).to(torch.uint8)
    return logits, targets.to(device)


def step(fn, logits, targets):
    logits.grad = None
    fn(logits, targets).backward()


def rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def child_peak(impl, b, lo, hi, dtype="fp32"):
    """Runs in a fresh process: peak RSS growth (MiB) over one forward+backward on CPU."""
    fn = {"unfused": unfused, "ours": fused}[impl]
    step(fn, *inputs(2, 8, 32, "cpu", DTYPES[dtype]))  # initialise lazily loaded code paths at a tiny size
    logits, targets = inputs(b, lo, hi, "cpu", DTYPES[dtype])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM)
    before = rss_kib("VmRSS:")
    step(fn, logits, targets)
    return (rss_kib("VmHWM:") - before) / 1024


def peak_mib(impl, b, lo, hi, device, compiled=None, dtype="fp32"):
    if device == "cuda":
        logits, targets = inputs(b, lo, hi, device, DTYPES[dtype])
        fn = compiled or {"unfused": unfused, "ours": fused}[impl]
        step(fn, logits, targets)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(fn, logits, targets)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if compiled is not None:
        return float("nan")
    out = subprocess.run([sys.executable, __file__, "--child", impl, str(b), str(lo), str(hi), dtype],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile of the unfused code")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--profile", action="store_true", help="CUDA: also print a torch.profiler table per implementation")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument("--dtypes", nargs="*", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--sums-variant", action="store_true", help="also time the sums op + PyTorch ops (the two-op loss)")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        impl, b, lo, hi, dtype = args.child
        print(json.dumps(child_peak(impl, int(b), int(lo), int(hi), dtype)))
        return
    dev = args.device
    print(f"device: {device_name() if dev == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'}; torch {torch.__version__}")
    print(f"{'case':22s} {'impl':22s} {'fwd+bwd (ms)':>12s} {'speed-up':>9s} {'peak extra (MiB)':>17s} {'mem ratio':>10s}")
    results = []
    for (cname, (b, lo, hi)), dt in [(c, d) for c in CASES.items() if c[0] in args.cases for d in args.dtypes]:
        case = f"{cname} {dt}"
        logits, targets = inputs(b, lo, hi, dev, DTYPES[dt])
        # correctness in the same run (bf16: against the float32 computation of the same logits)
        l_ref, l_ours = unfused(logits.float(), targets), fused(logits, targets)
        torch.testing.assert_close(l_ours.float(), l_ref, rtol=1e-4 if dt == "fp32" else 2e-2, atol=1e-5)
        rows = [("unfused eager", unfused, None)]
        if not args.no_compile:
            try:
                comp = torch.compile(unfused)
                step(comp, logits, targets)
                rows.append(("unfused torch.compile", comp, comp))
            except Exception as e:  # report, do not hide
                print(f"{case:22s} torch.compile of the unfused code failed: {type(e).__name__}: {str(e)[:120]}")
        if args.sums_variant:
            torch.testing.assert_close(sums_then_torch(logits, targets), l_ours, rtol=1e-5, atol=1e-6)
            rows.append(("sums op + torch ops", sums_then_torch, None))
        rows.append(("ours (fused)", fused, None))
        times = alternating({name: (lambda fn=fn: step(fn, logits, targets)) for name, fn, _ in rows},
                            repeat=args.repeat, device=dev)
        t_ref = m_ref = None
        for name, fn, comp in rows:
            t = times[name]
            m = float("nan") if fn is sums_then_torch else peak_mib("ours" if fn is fused else "unfused", b, lo, hi, dev,
                                                                     comp, dt)
            if t_ref is None:
                t_ref, m_ref = t, m
            print(f"{case:22s} {name:22s} {t * 1e3:12.2f} {t_ref / t:9.2f} {m:17.1f} {m / m_ref if m_ref else float('nan'):10.3f}")
            results.append({"case": case, "impl": name, "fwd_bwd_ms": t * 1e3, "speedup_vs_eager": t_ref / t,
                            "peak_extra_mib": m, "memory_vs_eager": m / m_ref if m_ref else None})
        if "unfused torch.compile" in times:
            print(f"  -> ours vs torch.compile of the unfused loss: {times['unfused torch.compile'] / times['ours (fused)']:.2f}x")
        if args.profile and dev == "cuda":  # where the time goes: kernels and their host-side launch cost
            from torch.profiler import ProfilerActivity, profile
            for name, fn, _ in rows:
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        step(fn, logits, targets)
                    torch.cuda.synchronize()
                print(f"--- {case} {name}: 5 steps under torch.profiler")
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device_name() if dev == "cuda" else "cpu", "torch": torch.__version__, "rows": results}, f,
                      indent=2)

if __name__ == "__main__":
    main()
