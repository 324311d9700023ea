"""Calls every CUDA kernel of ssrvg_ext once, on small inputs: the program compute-sanitizer runs.

    compute-sanitizer --tool memcheck python benchmarks/gpu_kernels_once.py [--tiny]

Covered: RLE encode / decode / mask_iou; deformable attention forward (vector and scalar loads,
float32 / bfloat16 / float64) and backward (atomic and deterministic); the mask-loss sums forward
and backward for gamma 0, 1.5 and 2, with and without ``valid``; mask post-processing. Inputs are
made on the CPU and copied over, so every byte a kernel may read was written. Prints one line per
kernel family and "all kernels ran" at the end (the caller checks for it).
Run with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that each tensor is its own allocation and an
out-of-bounds access is seen by memcheck instead of landing inside a cached block.
"""

import argparse

import torch

import ssrvg_ext  # noqa: F401
from ssrvg_ext import extension
from ssrvg_ext.ops import mask_postprocess, ms_deform_attn, rle, upsampled_mask_sums


def msda(g, tiny, dtype, aligned=True, deterministic=False):
    shapes = torch.tensor([[6, 5], [3, 3], [1, 2]] if tiny else [[16, 20], [8, 10], [4, 5], [2, 3]])
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    s, nl = int((shapes[:, 0] * shapes[:, 1]).sum()), shapes.shape[0]
    n, lq, m, d, p = (1, 3, 2, 8, 2) if tiny else (2, 40, 4, 32, 4)
    value = torch.randn(n, s, m, d, generator=g).to("cuda", dtype)
    if not aligned:  # a view with storage offset 1: the scalar-load path
        value = torch.cat([value.new_zeros(1), value.flatten()])[1:].view(n, s, m, d)
    loc = (torch.rand(n, lq, m, nl, p, 2, generator=g) * 1.4 - 0.2).cuda().requires_grad_(True)
    attn = torch.rand(n, lq, m, nl, p, generator=g).to("cuda", dtype).requires_grad_(True)
    value.requires_grad_(True)
    torch.use_deterministic_algorithms(deterministic)
    try:
        out = ms_deform_attn(value, shapes, starts, loc, attn)
        out.backward(torch.randn(out.shape, generator=g).to("cuda", dtype))
    finally:
        torch.use_deterministic_algorithms(False)
    torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the smallest inputs (racecheck, initcheck)")
    args = p.parse_args()
    if not (torch.cuda.is_available() and extension.has_kernel("ms_deform_attn", "cuda")):
        raise SystemExit("needs a GPU and a CUDA build of ssrvg_ext")
    g = torch.Generator().manual_seed(0)
    tiny = args.tiny

    n, h, w = (3, 7, 9) if tiny else (17, 65, 63)
    masks = (torch.rand(n, h, w, generator=g) < 0.4).to(torch.uint8)
    masks[0] = 0
    masks[1] = 1
    mc = masks.cuda()
    rles = rle.encode(mc)
    back = rle.decode(rles, device="cuda")
    iou = rle.mask_iou(mc, mc[: n - 1], [0, 1] * ((n - 1) // 2) + [0] * ((n - 1) % 2))
    torch.cuda.synchronize()
    assert torch.equal(back.cpu(), masks) and iou.shape == (n, n - 1)
    print("rle: encode, decode, mask_iou", flush=True)

    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        msda(g, tiny, dtype)
    msda(g, tiny, torch.float32, aligned=False)
    msda(g, tiny, torch.float32, deterministic=True)
    msda(g, tiny, torch.bfloat16, deterministic=True)
    print("ms_deform_attn: forward (vector / scalar loads; f32, bf16, f64), backward (atomic, deterministic)", flush=True)

    b, lo, hi = (2, 5, 11) if tiny else (4, 24, 97)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        for gamma in (0.0, 1.5, 2.0):
            for with_valid in (False, True):
                logits = (torch.randn(b, lo, lo + 1, generator=g) * 3).to("cuda", dtype).requires_grad_(True)
                targets = (torch.rand(b, hi, hi - 2, generator=g) < 0.4).to(torch.uint8).cuda()
                valid = (torch.rand(b, hi, hi - 2, generator=g) < 0.7).cuda() if with_valid else None
                sums = upsampled_mask_sums(logits, targets, valid, 0.25, gamma)
                sums.backward(torch.randn(sums.shape, generator=g).to("cuda", sums.dtype))
    logits = torch.randn(b, lo, lo, generator=g).cuda()
    mask_postprocess(logits, (hi, hi), [(hi, hi - 3)] * b, [(hi + 7, hi - 2)] * b)
    torch.cuda.synchronize()
    print("mask loss: sums forward / backward (gamma 0, 1.5, 2; valid or not; f32, bf16, f64), postprocess", flush=True)
    print("all kernels ran", flush=True)


if __name__ == "__main__":
    main()
