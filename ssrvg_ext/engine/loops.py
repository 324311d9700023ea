"""Data loaders, one training epoch, and distributed evaluation."""

from __future__ import annotations

import json
import math
import random
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ..data import Collate, HFTokenizer, ImageGroupBatchSampler, RefDataset, WordTokenizer, build_transforms, load_refer
from ..data.refer import load_instance_labels
from ..evaluation import box_iou, grounding_metrics, mask_stats_batch
from ..ops import rle
from . import dist


# ---------------------------------------------------------------------------------------------
def load_records(cfg: dict, split: str, shuffle_text: bool = False):
    d = cfg["data"]
    recs = load_refer(d["ann_dir"], d["image_dir"], d.get("split_by", "unc"), [split])
    if shuffle_text:  # control: pair every image with another expression of the same split
        texts = [r.text for r in recs]
        random.Random(0).shuffle(texts)
        recs = [type(r)(**{**r.__dict__, "text": t}) for r, t in zip(recs, texts)]
    return recs


def load_train_instances(cfg: dict, records):
    """Every object of the records' images, when the config needs them: labels for the dense auxiliary
    loss (their classes: :func:`label_classes`) and the masks that crop="objects" keeps whole. None
    when neither is asked for."""
    d = cfg["data"]
    if not (d.get("aux_labels") or d.get("crop") == "objects"):
        return None
    return load_instance_labels(d["ann_dir"], d.get("aux_labels") or [], {r.image_id for r in records})


def label_classes(instances) -> dict | None:
    """{label: [values]} of the dense object-label loss, or None (built into the model, and saved in
    its checkpoints, by the trainer)."""
    return ({k: list(v) for k, v in instances.classes.items()} or None) if instances is not None else None


def make_tokenizer(cfg: dict, train_texts=None, state: dict | None = None):
    """From a checkpoint's saved state, a local HF tokenizer path, or trained on the training texts."""
    d = cfg["data"]
    if state is not None:
        if state["kind"] == "word":
            from tokenizers import Tokenizer as HFTok

            return WordTokenizer(HFTok.from_str(state["json"]), state["max_len"])
        return HFTokenizer(state["path"], state["max_len"])
    if d.get("tokenizer"):
        return HFTokenizer(d["tokenizer"], d["max_len"])
    return WordTokenizer.train(train_texts, d["max_len"])


def tokenizer_state(tok) -> dict:
    if isinstance(tok, WordTokenizer):
        return {"kind": "word", "json": tok.tok.to_str(), "max_len": tok.max_len}
    return {"kind": "hf", "path": tok.tok.name_or_path, "max_len": tok.max_len}


def _seed_worker(_):
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def make_transform(cfg: dict, train: bool, size: int | None = None):
    d = cfg["data"]
    return build_transforms(train, size or d["input_size"], d.get("flip", True), d.get("crop", True), d.get("jitter", True))


def train_input_size(cfg: dict, epoch: int) -> int:
    """``data.early_input_size`` for the first ``data.early_input_epochs`` epochs, else ``data.input_size``."""
    d = cfg["data"]
    return d["early_input_size"] if d.get("early_input_size") and epoch < d.get("early_input_epochs", 0) else d["input_size"]


def make_dataset(cfg: dict, records, train: bool, instances=None) -> RefDataset:
    return RefDataset(records, make_transform(cfg, train), cache_images=cfg["data"].get("cache_images", False),
                      instances=instances)


def loader_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of a rank's DataLoader generator for an epoch: distinct per rank and epoch."""
    return seed * 1000 + epoch + rank * 1_000_003


def make_loader(cfg: dict, ds: RefDataset, tokenizer, train: bool, epoch_seed: int = 0):
    """A loader over ``ds`` (made once, so its image cache lives across epochs) and its sampler (call
    ``set_epoch`` on it when not None). The shuffling is seeded by the epoch so that a resumed run
    sees the same order. Training with ``data.exprs_per_image`` k > 1 batches groups of k
    expressions of one image (:class:`~ssrvg_ext.data.ImageGroupBatchSampler`)."""
    t = cfg["train"]
    k = int(cfg["data"].get("exprs_per_image", 1))
    common = dict(num_workers=t.get("workers", 0), collate_fn=Collate(tokenizer), worker_init_fn=_seed_worker,
                  persistent_workers=False)
    if train and k > 1:
        sampler = ImageGroupBatchSampler(ds.records, k, t["batch_size"], t.get("seed", 0), dist.rank(), dist.world_size())
        return DataLoader(ds, batch_sampler=sampler, **common), sampler
    sampler = DistributedSampler(ds, shuffle=train, seed=t.get("seed", 0)) if dist.world_size() > 1 else None
    # Seeds the shuffle (one process) and the workers' base seed; the rank term gives every rank its
    # own augmentation stream in its workers (0 on a single process: unchanged there).
    g = torch.Generator().manual_seed(loader_seed(t.get("seed", 0), epoch_seed, dist.rank()))
    loader = DataLoader(ds, batch_size=t["batch_size"], shuffle=train and sampler is None, sampler=sampler,
                        drop_last=train, generator=g, **common)
    return loader, sampler


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
def param_groups(model, cfg: dict) -> list[dict]:
    t = cfg["train"]
    groups = {"backbone": [], "text": [], "rest": []}
    for n, p in model.named_parameters():
        if p.requires_grad:
            key = "backbone" if n.startswith("backbone.body.") else "text" if n.startswith("text.bert.") else "rest"
            groups[key].append(p)
    lrs = {"backbone": t["lr_backbone"], "text": t["lr_text"], "rest": t["lr"]}
    return [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps]


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    if schedule == "step":
        return 0.1 if step >= int(0.8 * total) else 1.0
    raise ValueError(f"unknown schedule {schedule!r} (cosine or step)")


def amp_setup(cfg: dict, device: torch.device):
    """(autocast dtype or None, GradScaler or None): bf16 where supported, fp16 + scaler otherwise, off on CPU."""
    mode = cfg["train"].get("amp", "auto")
    if device.type != "cuda" or mode in (False, "off", "none"):
        return None, None
    if torch.cuda.is_bf16_supported() and mode in ("auto", "bf16", True):
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


class EMA:
    """Exponential moving average of the parameters and buffers."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach().float(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, s):
        self.shadow = {k: v.clone() for k, v in s.items()}


def train_step(model, crit, batch: dict, opt, sched, scaler, amp_dtype, clip) -> dict:
    """One optimisation step on a batch already on the device; returns the loss tensors (reading
    them is left to the caller: each read is a host synchronisation on a GPU)."""
    with torch.autocast(batch["images"].device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model(batch["images"], batch["text_ids"], batch["text_mask"], batch.get("image_index"))
    out = {k: v.float() for k, v in out.items()}
    losses = crit(out, batch)
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(opt)
    else:
        losses["total"].backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    sched.step()
    return losses


def train_one_epoch(model, crit, loader, opt, sched, scaler, amp_dtype, clip, epoch, epochs, device, log, ema=None,
                    step=0, max_steps=None) -> tuple[int, dict]:
    model.train()
    sums, count, t0 = {}, 0, time.time()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not dist.is_main() or None, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device)
        losses = train_step(model, crit, batch, opt, sched, scaler, amp_dtype, clip)
        if ema is not None:
            ema.update(model.module if hasattr(model, "module") else model)
        step += 1
        n = batch["boxes"].shape[0]  # expressions (several may share an image)
        count += n
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
        rate = count * dist.world_size() / max(time.time() - t0, 1e-9)
        bar.set_postfix(loss=f"{float(losses['total'].detach()):.3f}", lr=f"{sched.get_last_lr()[-1]:.2e}", expr_s=f"{rate:.1f}")
        if log and step % 20 == 0:
            log({"step": step, "epoch": epoch, **{k: float(v.detach()) for k, v in losses.items()},
                 "lr": sched.get_last_lr()[-1], "expr_per_s": rate})
        if max_steps is not None and step >= max_steps:
            break
    return step, {k: v / max(count, 1) for k, v in sums.items()}


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, desc="eval") -> tuple[dict, list[dict]]:
    """Metrics over the loader's dataset, every sample counted once whatever the number of ranks;
    and the per-expression predictions (rank 0 gets them all)."""
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
        stats = mask_stats_batch([p["mask"] for p in preds], [rec.rle for rec in recs])
        for p, r, meta, rec, (inter, union) in zip(preds, rles, batch["meta"], recs, stats):
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
        r["mask_iou"] = r["inter"] / r["union"] if r["union"] else 1.0
    return grounding_metrics(results), results


def write_jsonl(path: str):
    def log(rec: dict):
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
    return log
