"""Training-step time of config variants, measured side by side in one process.

    python benchmarks/bench_train_step.py --config configs/tiny_synthetic.yaml \
        --variant "" --variant "model.fusion.points=4 model.decoder.points=4" [--rounds 8 --steps 6]

Each --variant is a list of key=value overrides on --config (the first is the baseline). Every
variant gets its own model, optimizer and batches (the same training expressions), and the rounds
alternate between the variants, so a drift in the machine's speed (large on shared CPU machines)
reaches all of them alike. Times one full training step as tools/train.py runs it (forward, losses,
backward, clipping, AdamW, scheduler) on batches collated beforehand: data loading is not included.
Prints the median ms per step over the rounds and its ratio to the baseline's.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_name  # noqa: E402
from ssrvg_ext.config import load_config  # noqa: E402
from ssrvg_ext.engine.data import (label_classes, load_records, load_train_instances, make_dataset,  # noqa: E402
                                   make_loader, make_tokenizer)
from ssrvg_ext.engine.loops import TrainState, train_one_epoch  # noqa: E402
from ssrvg_ext.engine.optim import fused_if_supported, param_groups  # noqa: E402
from ssrvg_ext.models import build_criterion, build_model  # noqa: E402


def setup(config: str, overrides: list[str], steps: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    cfg = load_config(config, overrides)
    recs = load_records(cfg, cfg["data"]["train_split"])[: (steps + 2) * cfg["train"]["batch_size"]]
    inst = load_train_instances(cfg, recs)
    tok = make_tokenizer(cfg, [r.text for r in recs])
    aux = label_classes(inst)
    model = build_model(cfg, vocab_size=tok.vocab_size, aux_classes=aux).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg["train"]["weight_decay"], **fused_if_supported())
    loader = make_loader(cfg, make_dataset(cfg, recs, train=True, instances=inst), tok, train=True)[0]
    batches = list(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = TrainState(model, build_criterion(cfg, aux), opt, sched, clip=cfg["train"]["clip"])
    return dict(state=state, warm=batches[:2], timed=batches[2:2 + steps], times=[])


def run(v: dict, batches: list, device: torch.device) -> None:
    train_one_epoch(v["state"], batches, device, 0, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny_synthetic.yaml")
    p.add_argument("--variant", action="append", default=None, help='overrides, e.g. "model.fusion.points=4" ("": the config)')
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant and round")
    args = p.parse_args()
    variants = args.variant if args.variant else [""]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = {v: setup(args.config, v.split(), args.steps, device) for v in variants}
    for v in runs.values():
        if len(v["timed"]) < args.steps:
            raise SystemExit(f"only {len(v['timed'])} batches to time; the training split is too small for --steps")
        run(v, v["warm"], device)
    for _ in range(args.rounds):
        for v in runs.values():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run(v, v["timed"], device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            v["times"].append((time.perf_counter() - t0) / args.steps * 1e3)
    print(f"{device_name()}, torch {torch.__version__}, {args.config}, {args.rounds} rounds x {args.steps} steps")
    base = statistics.median(runs[variants[0]]["times"])
    print("| variant | ms / step (median) | ratio to the first | per round |")
    print("|---|---:|---:|---|")
    for name, v in runs.items():
        med = statistics.median(v["times"])
        print(f"| {name or '(config)'} | {med:.0f} | {med / base:.3f} | {' '.join(f'{t:.0f}' for t in v['times'])} |")


if __name__ == "__main__":
    main()
