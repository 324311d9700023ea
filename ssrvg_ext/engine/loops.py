"""The training step and epoch (evaluation: :mod:`.evaluation`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from . import dist
from .data import to_device
from .optim import EMA


@dataclass
class TrainState:
    """What a training step needs and changes: the model (DDP-wrapped or not), its criterion,
    optimizer, scheduler, mixed precision (autocast dtype, GradScaler), clipping, EMA, step count."""
    model: torch.nn.Module
    crit: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    amp_dtype: torch.dtype | None = None
    scaler: object = None
    clip: float = 0.0
    ema: EMA | None = None
    step: int = 0


def as_float(out):
    """The model's floating outputs in float32 (the losses run outside autocast); nested dicts too."""
    if isinstance(out, dict):
        return {k: as_float(v) for k, v in out.items()}
    return out.float() if torch.is_tensor(out) and out.is_floating_point() else out


def train_step(state: TrainState, batch: dict) -> dict:
    """One optimisation step on a batch already on the device; returns the loss tensors (reading
    them is left to the caller: each read is a host synchronisation on a GPU)."""
    model, opt, scaler = state.model, state.opt, state.scaler
    with torch.autocast(batch["images"].device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"), batch.get("masks"),
                    batch.get("clip_len"))
    out = as_float(out)
    losses = state.crit(out, batch)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(opt)
    else:
        losses["total"].backward()
    if state.clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), state.clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    state.sched.step()
    if state.ema is not None:
        state.ema.update(model.module if hasattr(model, "module") else model)
    state.step += 1
    return losses


def train_one_epoch(state: TrainState, loader, device: torch.device, epoch: int, epochs: int,
                    log: Callable[[dict], None] | None = None, max_steps: int | None = None) -> dict:
    """Trains over ``loader``; returns every loss term averaged over the epoch's expressions. ``log``
    receives the terms every 20 steps; ``max_steps`` stops early (tests)."""
    state.model.train()
    sums, count, t0 = {}, 0, time.time()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not dist.is_main() or None, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device)
        losses = train_step(state, batch)
        n = batch["boxes"].shape[0]  # expressions (several may share an image)
        count += n
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        rate = count * dist.world_size() / max(time.time() - t0, 1e-9)
        lr = state.sched.get_last_lr()[-1]
        bar.set_postfix(loss=f"{float(losses['total'].detach()):.3f}", lr=f"{lr:.2e}", expr_s=f"{rate:.1f}")
        if log and state.step % 20 == 0:
            log({"step": state.step, "epoch": epoch, **{k: float(v.detach()) for k, v in losses.items()},
                 "lr": lr, "expr_per_s": rate})
        if max_steps is not None and state.step >= max_steps:
            break
    return {k: v / max(count, 1) for k, v in sums.items()}


def write_jsonl(path: str):
    def log(rec: dict):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return log
