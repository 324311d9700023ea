"""The training step and epoch, and distributed evaluation."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from ..data.clips import ClipDataset
from ..evaluation import box_iou, grounding_metrics, mask_stats_batch
from ..ops import rle
from . import dist
from .data import to_device
from .optim import EMA
from .video import evaluate_video


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


def train_step(state: TrainState, batch: dict) -> dict:
    """One optimisation step on a batch already on the device; returns the loss tensors (reading
    them is left to the caller: each read is a host synchronisation on a GPU)."""
    model, opt, scaler = state.model, state.opt, state.scaler
    with torch.autocast(batch["images"].device.type, dtype=state.amp_dtype, enabled=state.amp_dtype is not None):
        out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"), batch.get("masks"),
                    batch.get("clip_len"))
    out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
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


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, desc="eval") -> tuple[dict, list[dict]]:
    """Metrics over the loader's dataset, every sample counted once whatever the number of ranks;
    and the per-expression predictions (rank 0 gets them all). Clips: :func:`.video.evaluate_video`."""
    if isinstance(loader.dataset, ClipDataset):
        return evaluate_video(model, loader, device, amp_dtype, desc)
    core = model.module if hasattr(model, "module") else model
    core.eval()
    ds = loader.dataset
    mine = {}
    for batch in tqdm(loader, desc=desc, disable=not dist.is_main() or None, dynamic_ncols=True):
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds = core.predict(batch)
        masks = torch.stack([p["mask"] for p in preds]) if len({tuple(p["mask"].shape) for p in preds}) == 1 else None
        rles = rle.encode(masks) if masks is not None else [rle.encode(p["mask"]) for p in preds]
        recs = [ds.records[meta["index"]] for meta in batch["meta"]]
        with_mask = [i for i, rec in enumerate(recs) if not rec.box_only]  # a box-only record's mask is its box
        stats = mask_stats_batch([preds[i]["mask"] for i in with_mask], [recs[i].rle for i in with_mask])
        stats = dict(zip(with_mask, stats))
        for i, (p, r, meta, rec) in enumerate(zip(preds, rles, batch["meta"], recs)):
            inter, union = stats.get(i, (None, None))
            mine[meta["index"]] = {"sent_id": rec.sent_id, "text": meta["text"], "box": [round(float(v), 2) for v in p["box"]],
                                   "mask": {"size": r["size"], "counts": r["counts"].decode("ascii")},
                                   "box_iou": box_iou(p["box"], rec.box_xyxy), "inter": inter, "union": union}
    merged = {}
    for part in dist.gather_objects(mine):
        merged.update(part)  # DistributedSampler pads with repeats: keyed by index, each counts once
    results = [merged[i] for i in sorted(merged)]
    if len(results) != len(ds):
        raise RuntimeError(f"evaluation covered {len(results)} of {len(ds)} samples")
    for r in results:
        if r["inter"] is not None:
            r["mask_iou"] = r["inter"] / r["union"] if r["union"] else 1.0
    return grounding_metrics(results), results


def write_jsonl(path: str):
    def log(rec: dict):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return log
