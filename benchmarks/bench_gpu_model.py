"""GPU model figures: a training step with the compiled ops vs the reference ops, and evaluation
throughput with the GPU RLE ops vs pycocotools; both measured in the same run, variants alternating.

    python benchmarks/bench_gpu_model.py [--config configs/refcoco_swin_t.yaml] [--batch 8] [--rounds 4]

Training step: the config's model (default: the RefCOCO Swin-T preset at 640 px; its BERT text
encoder replaced by an own transformer of BERT-base size, since no weights may be downloaded),
randomly initialised, bf16 autocast, fused AdamW; one step = forward, losses, backward, clipping,
optimizer (tools/train.py's step). Variants: the compiled ssrvg ops, and every ssrvg op replaced by
its pure-PyTorch reference (extension.force_reference). Reported: median ms per step over rounds
of --steps steps each, alternating the variants, and the peak memory allocated during one step.

Evaluation: per batch, the model's prediction (boxes, masks resized to 480x640) and the mask
statistics the evaluator keeps (intersection and union with the ground truth). Metric path
"ours": ssrvg RLE encode of the CUDA masks (kept as predictions) + intersection / union against the
ground-truth RLEs decoded on the GPU (evaluation.mask_stats_batch; what GroundingEvaluator runs);
"pycocotools": masks copied to the host, pycocotools encode + merge + area. Reported: expressions/s
of the metric path alone and of prediction + metric path.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
from pycocotools import mask as cocomask

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_name  # noqa: E402
from ssrvg_ext import extension  # noqa: E402
from ssrvg_ext.config import load_config
from ssrvg_ext.testing import random_batch  # noqa: E402
from ssrvg_ext.engine.loops import TrainState, train_step  # noqa: E402
from ssrvg_ext.engine.optim import param_groups  # noqa: E402
from ssrvg_ext.evaluation import mask_stats_batch  # noqa: E402
from ssrvg_ext.models import build_criterion, build_model  # noqa: E402
from ssrvg_ext.ops import rle  # noqa: E402

NO_DOWNLOAD = ["model.text.name_or_path=null", "data.tokenizer=null"]
VOCAB = 30522  # BERT-base's


def timed(fn, steps):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def peak_mib(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_train(cfg, batch, args):
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB).cuda().train()
    crit = build_criterion(cfg)
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg["train"]["weight_decay"], fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    state = TrainState(model, crit, opt, sched, torch.bfloat16, None, cfg["train"]["clip"])

    def step():
        train_step(state, batch)

    variants = {"compiled ops": False, "reference ops": True}
    for ref in variants.values():  # warm-up both (cuDNN / cuBLAS autotuning, lazy init)
        with extension.force_reference(ref):
            step(), step()
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, ref in variants.items():
            with extension.force_reference(ref):
                times[name].append(timed(step, args.steps) * 1e3)
    peaks = {}
    for name, ref in variants.items():
        with extension.force_reference(ref):
            peaks[name] = peak_mib(step)
    rows = {name: {"ms_per_step": statistics.median(t), "rounds_ms": [round(x, 1) for x in t], "peak_mib": peaks[name]}
            for name, t in times.items()}
    base = rows["reference ops"]
    for r in rows.values():
        r["speedup_vs_reference"] = base["ms_per_step"] / r["ms_per_step"]
        r["memory_vs_reference"] = r["peak_mib"] / base["peak_mib"]
    del model, opt
    torch.cuda.empty_cache()
    return rows


def bench_eval(cfg, batch, args):
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=VOCAB).cuda().eval()
    h, w = batch["meta"][0]["orig_size"]
    gt_masks = np.zeros((h, w, len(batch["meta"])), dtype=np.uint8, order="F")
    for i in range(gt_masks.shape[-1]):
        gt_masks[h // 4: h // 2 + 8 * i, w // 5: w // 2 + 10 * i, i] = 1
    gts = cocomask.encode(gt_masks)

    @torch.no_grad()
    def predict():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            preds = model.predict(batch)
        return torch.stack([p["mask"] for p in preds])  # (B, 480, 640) uint8 on the GPU

    def metric_ours(masks):
        rle.encode(masks)  # the predictions kept as RLEs, as GroundingEvaluator keeps them
        return mask_stats_batch(list(masks), gts)

    def metric_coco(masks):
        rles = cocomask.encode(np.asfortranarray(masks.cpu().permute(1, 2, 0).numpy()))
        out = []
        for r, g in zip(rles, gts):
            inter = int(cocomask.area(cocomask.merge([r, g], intersect=True)))
            out.append((inter, int(cocomask.area(r)) + int(cocomask.area(g)) - inter))
        return out

    masks = predict()
    assert metric_ours(masks) == metric_coco(masks), "the two metric paths disagree"
    b = masks.shape[0]
    res = {"metric only": {}, "predict + metric": {}}  # both paths warmed up by the check above
    samples = {k: {"ours (GPU RLE)": [], "pycocotools": []} for k in res}
    for _ in range(args.rounds):
        for name, fn in (("ours (GPU RLE)", metric_ours), ("pycocotools", metric_coco)):
            samples["metric only"][name].append(b / timed(lambda: fn(masks), args.steps))
            samples["predict + metric"][name].append(b / timed(lambda: fn(predict()), args.steps))
    for kind, per in samples.items():
        for name, v in per.items():
            res[kind][name] = {"expressions_per_s": statistics.median(v)}
        res[kind]["ratio"] = res[kind]["ours (GPU RLE)"]["expressions_per_s"] / res[kind]["pycocotools"]["expressions_per_s"]
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/refcoco_swin_t.yaml")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a GPU")
    cfg = load_config(args.config, NO_DOWNLOAD + args.overrides)
    size = cfg["data"]["input_size"]
    batch = random_batch(args.batch, size, cfg["data"]["max_len"], VOCAB, "cuda")
    res = {"device": device_name(), "torch": torch.__version__, "config": args.config, "overrides": NO_DOWNLOAD + args.overrides,
           "input_size": size, "batch": args.batch, "dtype": "bf16 autocast",
           "train_step": bench_train(cfg, batch, args), "evaluation": bench_eval(cfg, batch, args)}
    print(f"{res['device']}, torch {res['torch']}, {args.config} at {size} px, batch {args.batch}, bf16")
    print("| training step | ms / step | speed-up | peak MiB | memory ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, r in res["train_step"].items():
        print(f"| {name} | {r['ms_per_step']:.1f} | {r['speedup_vs_reference']:.2f} | {r['peak_mib']:.0f} | {r['memory_vs_reference']:.3f} |")
    print("| evaluation | ours (GPU RLE) expr/s | pycocotools expr/s | ratio |")
    print("|---|---:|---:|---:|")
    for kind, r in res["evaluation"].items():
        print(f"| {kind} | {r['ours (GPU RLE)']['expressions_per_s']:.0f} | {r['pycocotools']['expressions_per_s']:.0f} | {r['ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
