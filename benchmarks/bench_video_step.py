"""Training-step time of video preset variants, alternated in one process on the same batches.

    python benchmarks/bench_video_step.py [--config configs/tiny_video.yaml] [--reps 5] [--batches 4] \
        [--variants "" model.mask_stride=4 "model.temporal.layers=0,model.temporal.link_queries=false"]

A variant is a comma-separated list of config overrides ("" = the preset as it is). Every variant is
built with the same seed and trained one warm-up step; then, --reps times, each variant in turn runs a
training step (forward, every loss, backward, AdamW) on each of the same --batches clips batches of the
embedded video set (data/synthetic_video, generated when missing), so the machine's drift falls on all
of them alike. Prints the median seconds per step of each variant and its ratio to the first.
"""

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tiny_video.yaml")
    p.add_argument("--data", default="data/synthetic_video")
    p.add_argument("--variants", nargs="+", default=["", "model.mask_stride=4",
                                                    "model.temporal.layers=0,model.temporal.link_queries=false"])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batches", type=int, default=4)
    a = p.parse_args()
    if a.reps < 1 or a.batches < 1:
        p.error("--reps and --batches must be at least 1")
    from ssrvg_ext.config import load_config
    from ssrvg_ext.engine import trainer
    from ssrvg_ext.engine.data import (label_classes, load_records, load_train_instances, make_dataset, make_loader,
                                       make_tokenizer, to_device)
    from ssrvg_ext.engine.loops import train_step
    from ssrvg_ext.models import build_criterion, build_model

    if not os.path.isfile(os.path.join(a.data, "meta_expressions", "train", "meta_expressions.json")):
        subprocess.run([sys.executable, "-m", "ssrvg_ext.cli.make_synthetic_video", "--out", a.data], check=True)
    cpu, states, batches, data_cfg = torch.device("cpu"), {}, None, None
    for v in a.variants:
        cfg = load_config(a.config, [f"data.ann_dir={a.data}", f"data.image_dir={a.data}"] + [x for x in v.split(",") if x])
        data_cfg = data_cfg or cfg["data"]
        if cfg["data"] != data_cfg:  # every variant trains on the first one's batches
            p.error(f"variant {v!r} changes data.*: the variants must share the batches (vary the model or the loss)")
        trainer.seed_all(cfg["train"]["seed"])
        recs = load_records(cfg, cfg["data"]["train_split"])
        inst = load_train_instances(cfg, recs)
        classes = label_classes(inst)
        tok = make_tokenizer(cfg, [r.text for r in recs], None)
        model = build_model(cfg, vocab_size=tok.vocab_size, aux_classes=classes, mask_token_id=tok.mask_id).train()
        if batches is None:  # the first variant's batches for all
            loader, _ = make_loader(cfg, make_dataset(cfg, recs, train=True, instances=inst), tok, train=True, epoch_seed=0)
            batches = [to_device(b, cpu) for b in itertools.islice(loader, a.batches)]
        states[v] = trainer._train_state(cfg, model, build_criterion(cfg, classes), len(batches), cpu)
        train_step(states[v], batches[0])  # warm-up
    times = {v: [] for v in states}
    for _ in range(a.reps):
        for v, st in states.items():
            t0 = time.perf_counter()
            for b in batches:
                train_step(st, b)
            times[v].append((time.perf_counter() - t0) / len(batches))
    first = statistics.median(times[a.variants[0]])
    print(f"{a.config}, {torch.get_num_threads()} threads, median of {a.reps} alternated rounds of {len(batches)} steps")
    for v, ts in times.items():
        m = statistics.median(ts)
        print(f"  {v or '(preset)':<60} {m:.3f} s/step  {m / first:.3f}x")


if __name__ == "__main__":
    main()
