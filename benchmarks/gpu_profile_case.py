"""One forward + backward of the benchmark cases, for Nsight Compute (ncu) to profile our kernels.

    ncu --kernel-name regex:ssrvg --section SpeedOfLight python benchmarks/gpu_profile_case.py

Cases: deformable attention enc512 (bench_ms_deform_attn.py) in float32, and the fused mask loss
32 x 160^2 -> 640^2 (bench_mask_loss.py).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mask_loss import fused, inputs  # noqa: E402
from bench_ms_deform_attn import level_shapes, make_case  # noqa: E402
from ssrvg_ext.ops import ms_deform_attn  # noqa: E402

if __name__ == "__main__":
    value, shapes, starts, loc, attn = make_case(level_shapes(512, 512), None, 2, "cuda", torch.float32)
    xs = [t.requires_grad_(True) for t in (value, loc, attn)]
    ms_deform_attn(xs[0], shapes, starts, xs[1], xs[2]).sum().backward()
    logits, targets = inputs(32, 160, 640, "cuda")
    fused(logits, targets).backward()
    torch.cuda.synchronize()
    print("profiled cases ran")
