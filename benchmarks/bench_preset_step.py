"""A training step of the benchmark presets at their input size, on whatever device is here.

    python benchmarks/bench_preset_step.py [--presets refcoco_swin_t refcoco_swin_b] [--batch 1] [--steps 3]
    python benchmarks/bench_preset_step.py --presets tiny_synthetic methods/sgmg methods/all --batch 16 --steps 5
    python benchmarks/bench_preset_step.py --batch 16 --steps 5 --presets tiny_synthetic \
        tiny_synthetic,model.backbone.channels_last=true tiny_synthetic tiny_synthetic,model.backbone.channels_last=true

A preset is a config under configs/ without its .yaml (methods/<name> for the method presets), optionally
followed by comma-separated config overrides (a variant; list variants twice to alternate them).

Each preset is built with random weights (model.backbone.pretrained=false, model.text.pretrained=false:
the same architecture, BERT-base-sized text encoder), in a fresh child process; one step = forward,
every loss, backward, AdamW (tools/train.py's step, on a random batch at the preset's input size).
Reported: median seconds per step after one warm-up step, and the peak memory of the process
(CPU: peak resident set; CUDA: max allocated).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch


def child(preset: str, batch: int, steps: int) -> dict:
    from ssrvg_ext.config import load_config
    from ssrvg_ext.testing import random_batch
    from ssrvg_ext.engine.loops import TrainState, train_step
    from ssrvg_ext.engine.optim import param_groups
    from ssrvg_ext.models import build_criterion, build_model

    name, *overrides = preset.split(",")
    cfg = load_config(f"configs/{name}.yaml", ["model.backbone.pretrained=false", "model.text.pretrained=false",
                                               *overrides])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=30522, mask_token_id=103).to(device)  # BERT's [MASK]
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg["train"]["weight_decay"])
    state = TrainState(model, build_criterion(cfg), opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                       torch.bfloat16 if device.type == "cuda" else None, None, cfg["train"]["clip"])
    data = random_batch(batch, cfg["data"]["input_size"], cfg["data"]["max_len"], 30522, device)
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(state, data)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        with open("/proc/self/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return {"preset": preset, "device": torch.cuda.get_device_name() if device.type == "cuda" else
            f"CPU ({torch.get_num_threads()} threads)", "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "input": cfg["data"]["input_size"], "batch": batch, "s_per_step": statistics.median(times[1:]),
            "peak_MiB": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["refcoco_swin_t", "refcoco_swin_b"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.batch, a.steps)))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"torch {torch.__version__}; batch {a.batch}; median of {a.steps} steps after one warm-up")
    print("| preset | device | params (M) | input | s / step | peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for preset in a.presets:
        out = subprocess.run([sys.executable, __file__, "--child", preset, "--batch", str(a.batch), "--steps", str(a.steps)],
                             cwd=root, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['preset']} | {r['device']} | {r['params_M']:.1f} | {r['input']} | {r['s_per_step']:.3f} | "
              f"{r['peak_MiB']:.0f} |")


if __name__ == "__main__":
    main()
