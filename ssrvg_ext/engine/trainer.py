"""The training run behind ``tools/train.py`` / ``ssrvg-train``: build, (resume), train, evaluate, checkpoint."""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import time

import numpy as np
import torch
import yaml

try:
    import fcntl  # run_lock's flock (POSIX)
except ImportError:  # Windows: no run lock
    fcntl = None

from ..models import build_criterion, build_model
from . import checkpoint, dist
from .inference import without_pretrained
from .data import (label_classes, load_records, load_train_instances, make_dataset, make_loader, make_tokenizer,
                   task_of, tokenizer_state)
from .evaluation import inference_on_dataset
from .loops import TrainState, train_one_epoch, write_jsonl
from .optim import EMA, amp_setup, fused_if_supported, load_optimizer_state, lr_factor, param_groups


def seed_all(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def score(metrics: dict) -> float:
    """What best.pth maximises: Acc@0.5 + mIoU (Acc@0.5 alone on a box-only validation set); J&F
    for videos (-inf on a split without annotations: then the last epoch is kept)."""
    if "Acc@0.5" not in metrics:
        return metrics.get("J&F", -math.inf)
    return metrics["Acc@0.5"] + metrics.get("mIoU", 0.0)


class RunFolderBusy(RuntimeError):
    """Another training process is writing the same output folder."""


@contextlib.contextmanager
def run_lock(out_dir: str):
    """Held by the main process while it trains into ``out_dir``: a second training started into the same
    folder (the same command run twice, two ablations sharing a run) stops with :class:`RunFolderBusy`
    instead of both resuming one last.pth and overwriting each other's checkpoints. An exclusive
    ``flock`` on ``out_dir/.train.lock``, which the system releases when the holder ends, however it
    ends (a killed run leaves nothing to clean up). Not taken where ``fcntl`` does not exist (Windows)."""
    if fcntl is None or not dist.is_main():
        yield
        return
    os.makedirs(out_dir, exist_ok=True)
    f = open(os.path.join(out_dir, ".train.lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunFolderBusy(f"{out_dir} is being trained into by {holder}; wait for that run, stop it, or "
                            "train into another --out") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    try:
        yield
    finally:
        f.close()  # releases the lock


def train(cfg: dict, out_dir: str, resume: str | None = None, max_steps: int | None = None,
          command: str | None = None) -> dict:
    """Returns the last validation metrics. ``resume``: a checkpoint path, or "auto" for out_dir/last.pth
    when it exists. ``max_steps`` stops early (tests). ``command``: the command line that started the
    run, kept in its checkpoints (an exported model's card names it). Raises :class:`RunFolderBusy`
    when another process is training into ``out_dir`` (:func:`run_lock`)."""
    rank, world, device = dist.init_from_env()
    with run_lock(out_dir):
        return _train(cfg, out_dir, resume, max_steps, command, rank, world, device)


def _train(cfg, out_dir, resume, max_steps, command, rank, world, device) -> dict:
    t = cfg["train"]
    seed_all(t["seed"] + rank)
    if resume == "auto":
        resume = os.path.join(out_dir, "last.pth") if os.path.isfile(os.path.join(out_dir, "last.pth")) else None
    ckpt = checkpoint.load(resume) if resume else None
    task = task_of(cfg)
    train_recs = load_records(cfg, cfg["data"]["train_split"])
    val_recs = load_records(cfg, cfg["data"]["val_split"])
    instances = load_train_instances(cfg, train_recs)
    aux_classes = label_classes(instances)
    log, tb = _outputs(cfg, out_dir)
    tok = make_tokenizer(cfg, [r.text for r in train_recs], ckpt["tokenizer"] if ckpt else None)
    # a resumed run takes its weights from the checkpoint: the pretrained files need not be read again
    model = build_model(without_pretrained(cfg) if ckpt else cfg, vocab_size=tok.vocab_size,
                        aux_classes=aux_classes, mask_token_id=tok.mask_id).to(device)
    train_ds = make_dataset(cfg, train_recs, train=True, instances=instances)
    state = _train_state(cfg, model, build_criterion(cfg, aux_classes), len(make_loader(cfg, train_ds, tok, train=True)[0]),
                         device)
    start_epoch, best = (_restore(state, ckpt, t, rank, world) if ckpt else (0, -math.inf))
    if ckpt and dist.is_main():
        print(f"resumed from {resume}: epoch {start_epoch}, step {state.step}")
    core = model
    if world > 1:
        state.model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    val_ds = make_dataset(cfg, val_recs, train=False)
    val_loader, _ = make_loader(cfg, val_ds, tok, train=False)
    evaluator = task.evaluator(val_ds)
    # time_s in the log and checkpoints: the run's training time so far, a resumed run's included (checkpoints
    # written before the key: counted from the resume)
    metrics, t_start = {}, time.time() - (ckpt.get("time_s", 0.0) if ckpt else 0.0)
    for epoch in range(start_epoch, t["epochs"]):
        task.start_epoch(train_ds, epoch)
        loader, sampler = make_loader(cfg, train_ds, tok, train=True, epoch_seed=epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_stats = train_one_epoch(state, loader, device, epoch, t["epochs"], log, max_steps)
        evaluated = {}
        if (epoch + 1) % t["eval_every"] == 0 or epoch + 1 == t["epochs"]:
            evaluated, _ = inference_on_dataset(state.model, val_loader, evaluator, device, state.amp_dtype,
                                                desc=f"val {epoch + 1}")
            metrics = evaluated
        rngs = dist.gather_objects(checkpoint.rng_state())  # collective: every rank takes part
        if dist.is_main():
            rec = {"epoch": epoch, "step": state.step, "time_s": round(time.time() - t_start, 1),
                   **{f"train_{k}": v for k, v in train_stats.items()}, **{f"val_{k}": v for k, v in evaluated.items()}}
            _report(rec, log, tb)
            saved = {"model": core.state_dict(), "optimizer": state.opt.state_dict(), "scheduler": state.sched.state_dict(),
                     "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                     "ema": state.ema.state_dict() if state.ema is not None else None, "epoch": epoch, "step": state.step,
                     "rng": rngs[0], "rng_per_rank": rngs, "config": cfg, "tokenizer": tokenizer_state(tok),
                     "aux_classes": aux_classes, "best": best, "metrics": evaluated, "command": command,
                     "time_s": rec["time_s"]}
            if evaluated and score(evaluated) > best:
                best = saved["best"] = score(evaluated)
                checkpoint.save_atomic(saved, os.path.join(out_dir, "best.pth"))
            checkpoint.save_atomic(saved, os.path.join(out_dir, "last.pth"))
        dist.barrier()
        if max_steps is not None and state.step >= max_steps:
            break
    dist.cleanup()
    return metrics


def _outputs(cfg: dict, out_dir: str):
    """On the main process: out_dir/config.yaml written, the log.jsonl writer and TensorBoard (when
    installed); (None, None) elsewhere."""
    if not dist.is_main():
        return None, None
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return write_jsonl(os.path.join(out_dir, "log.jsonl")), _tensorboard(out_dir)


def _train_state(cfg: dict, model, crit, steps_per_epoch: int, device) -> TrainState:
    """The optimizer (AdamW, per-group learning rates), warmup + schedule, AMP and EMA of a run."""
    t = cfg["train"]
    opt = torch.optim.AdamW(param_groups(model, cfg), weight_decay=t["weight_decay"], **fused_if_supported())
    total = max(1, steps_per_epoch * t["epochs"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, t["warmup_steps"], t["schedule"], t["step_at"]))
    amp_dtype, scaler = amp_setup(cfg, device)
    ema = EMA(model, t["ema"]) if t["ema"] else None
    return TrainState(model, crit, opt, sched, amp_dtype, scaler, t["clip"], ema, 0)


def _restore(state: TrainState, ckpt: dict, t: dict, rank: int, world: int) -> tuple[int, float]:
    """Weights, optimizer, schedule, scaler, EMA, step and this rank's RNG from a checkpoint; returns
    (the epoch to start at, the best score so far)."""
    state.model.load_state_dict(ckpt["model"])
    load_optimizer_state(state.opt, ckpt["optimizer"])
    state.sched.load_state_dict(ckpt["scheduler"])
    if state.scaler is not None and ckpt.get("scaler"):
        state.scaler.load_state_dict(ckpt["scaler"])
    if state.ema is not None and ckpt.get("ema"):
        state.ema.load_state_dict(ckpt["ema"])
    start_epoch, state.step = ckpt["epoch"] + 1, ckpt["step"]
    own = checkpoint.rank_rng_state(ckpt, rank, world)
    if own is not None:
        checkpoint.set_rng_state(own)  # this rank's own stream, not rank 0's
    else:
        seed_all(t["seed"] + rank + 1_000_003 * start_epoch)
        print(f"rank {rank}: the checkpoint was written by a run of another world size; RNG reseeded")
    return start_epoch, ckpt.get("best", -math.inf)


def _report(rec: dict, log, tb) -> None:
    """An epoch's record to log.jsonl, TensorBoard and the console."""
    log(rec)
    if tb is not None:
        for k, v in rec.items():
            if isinstance(v, (int, float)):
                tb.add_scalar(k, v, rec["step"])
    print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()), flush=True)


def _tensorboard(out_dir):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSON lines only
        return None
    return SummaryWriter(os.path.join(out_dir, "tb"))
