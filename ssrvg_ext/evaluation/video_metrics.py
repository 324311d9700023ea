"""Referring video object segmentation metrics (docs/data.md).

DAVIS protocol (davis2017-evaluation), per frame of one object:
- J (region similarity) = |P and G| / |P or G| over the pixels that are not void; 1 when the union
  is empty.
- F (boundary measure): one-pixel boundary maps of P and G (each pixel XOR its east, south and
  south-east neighbours; void pixels zeroed first), each dilated by a disk of radius
  r = bound_th if bound_th >= 1 else ceil(bound_th * sqrt(H^2 + W^2)); precision = the share of
  P's boundary pixels within r of G's boundary, recall the mirror; F = 2PR / (P + R) (0 when both
  are 0; no boundary in P but one in G: P = 1, R = 0; the reverse: P = 0, R = 1; neither: 1).
- Per object: the mean over frames; over a split: J-Mean and F-Mean over all objects pooled,
  J&F = their mean; recall = the share of objects scoring over 0.5.

A2D-Sentences / JHMDB-Sentences (MTTR's protocol): COCO-style mask AP over IoU 0.5:0.95 (one
category, 101 recall points, predictions ranked by score, each ground truth matched once), overall
IoU, mean IoU and Precision@0.5:0.9 (IoU > k, strictly) of the top-scoring prediction of each annotated frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..ops import rle
from .metrics import PREC

IOU_THRESHOLDS = tuple(0.5 + 0.05 * i for i in range(10))


def region_j(pred: torch.Tensor, gt: torch.Tensor, void: torch.Tensor | None = None) -> torch.Tensor:
    """J per frame (T,) of masks (T, H, W); ``void`` (T, H, W) True where pixels do not count."""
    p, g = pred.bool(), gt.bool()
    keep = ~void.bool() if void is not None else torch.ones_like(p)
    inter = (p & g & keep).flatten(1).sum(1)
    union = ((p | g) & keep).flatten(1).sum(1)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter, dtype=torch.float32))


def seg2bmap(mask: torch.Tensor) -> torch.Tensor:
    """One-pixel boundary map of (..., H, W) bool masks, as the DAVIS toolkit's ``_seg2bmap``: a
    pixel differs from its east, south or south-east neighbour (outside the image: the pixel's own
    value for the last row / column, and no boundary at the bottom-right corner)."""
    m = mask.bool()
    e, s, se = torch.zeros_like(m), torch.zeros_like(m), torch.zeros_like(m)
    e[..., :, :-1] = m[..., :, 1:]
    s[..., :-1, :] = m[..., 1:, :]
    se[..., :-1, :-1] = m[..., 1:, 1:]
    b = (m ^ e) | (m ^ s) | (m ^ se)
    b[..., -1, :] = m[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = m[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def _dilate(b: torch.Tensor, r: int) -> torch.Tensor:
    """Binary dilation of (T, H, W) by the disk x^2 + y^2 <= r^2."""
    if r <= 0:
        return b
    ax = torch.arange(-r, r + 1, dtype=torch.float32, device=b.device)
    disk = ((ax[:, None] ** 2 + ax[None, :] ** 2) <= r * r).float()[None, None]
    return F.conv2d(b[:, None].float(), disk, padding=r)[:, 0] > 0.5


def boundary_f(pred: torch.Tensor, gt: torch.Tensor, void: torch.Tensor | None = None,
               bound_th: float = 0.008) -> torch.Tensor:
    """F per frame (T,) of masks (T, H, W), with the DAVIS toolkit's edge cases."""
    p, g = pred.bool(), gt.bool()
    if void is not None:
        p, g = p & ~void.bool(), g & ~void.bool()
    h, w = p.shape[-2:]
    r = int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.sqrt(h * h + w * w)))
    bp, bg = seg2bmap(p), seg2bmap(g)
    n_p, n_g = bp.flatten(1).sum(1).double(), bg.flatten(1).sum(1).double()
    p_match = (bp & _dilate(bg, r)).flatten(1).sum(1).double()
    g_match = (bg & _dilate(bp, r)).flatten(1).sum(1).double()
    none_p, none_g = n_p == 0, n_g == 0
    prec = torch.where(none_p, 1.0, p_match / n_p.clamp_min(1))
    rec = torch.where(none_g, 1.0, g_match / n_g.clamp_min(1))
    prec = torch.where(~none_p & none_g, 0.0, prec)  # a boundary in P only: P = 0, R = 1
    rec = torch.where(none_p & ~none_g, 0.0, rec)  # a boundary in G only: P = 1, R = 0
    f = 2 * prec * rec / (prec + rec).clamp_min(1e-300)
    return torch.where(prec + rec > 0, f, torch.zeros_like(f)).float()


def jf_object(pred: torch.Tensor, gt: torch.Tensor, void: torch.Tensor | None = None,
              bound_th: float = 0.008) -> dict:
    """J and F of one object over its frames (T, H, W): the per-frame values and their means."""
    j, f = region_j(pred, gt, void), boundary_f(pred, gt, void, bound_th)
    return {"J": float(j.mean()), "F": float(f.mean()), "J_frames": j.tolist(), "F_frames": f.tolist()}


def jf_summary(objects: list[dict]) -> dict:
    """Split-level figures from :func:`jf_object` results: J-Mean, F-Mean (pooled over objects),
    J&F, and the J / F recall (share of objects over 0.5)."""
    if not objects:
        raise ValueError("no objects to summarise")
    js = torch.tensor([o["J"] for o in objects], dtype=torch.float64)
    fs = torch.tensor([o["F"] for o in objects], dtype=torch.float64)
    j, f = float(js.mean()), float(fs.mean())
    return {"n": len(objects), "J": j, "F": f, "J&F": (j + f) / 2,
            "J-Recall": float((js > 0.5).double().mean()), "F-Recall": float((fs > 0.5).double().mean())}


def mask_ap(samples: list[dict]) -> dict:
    """COCO-style mask AP of one category. samples: per annotated frame and expression
    {"gt": RLE, "preds": [RLE, ...], "scores": [float, ...]}. For each IoU threshold t, the
    predictions of all samples ranked by score (stable); in its sample a prediction is a true
    positive when its IoU with the ground truth is >= t and no higher-scored prediction of that
    sample took it; precision made non-increasing, read at the 101 recall points 0, 0.01, ..., 1
    (0 beyond the reached recall). Returns mAP (mean over t = 0.5:0.05:0.95), AP@0.5, AP@0.75."""
    if not samples:
        raise ValueError("no samples")
    scores, ious, owner = [], [], []
    for i, s in enumerate(samples):
        if len(s["preds"]) != len(s["scores"]):
            raise ValueError(f"sample {i}: {len(s['preds'])} predictions but {len(s['scores'])} scores")
        if s["preds"]:
            ious += rle.iou(s["preds"], [s["gt"]], [0])[:, 0].tolist()
            scores += [float(v) for v in s["scores"]]
            owner += [i] * len(s["preds"])
    order = sorted(range(len(scores)), key=lambda k: -scores[k])  # stable, as COCOeval's mergesort
    n_gt = len(samples)
    rec_points = torch.linspace(0, 1, 101, dtype=torch.float64)
    aps = []
    for t in IOU_THRESHOLDS:
        taken, tp = set(), []
        for k in order:
            hit = ious[k] >= min(t, 1 - 1e-10) and owner[k] not in taken
            if hit:
                taken.add(owner[k])
            tp.append(hit)
        tps = torch.tensor(tp, dtype=torch.float64).cumsum(0)
        fps = (1 - torch.tensor(tp, dtype=torch.float64)).cumsum(0)
        rc = tps / n_gt
        pr = tps / (tps + fps).clamp_min(1e-300)
        pr = torch.flip(torch.cummax(torch.flip(pr, [0]), 0).values, [0])  # non-increasing
        if not tp:
            aps.append(0.0)
            continue
        idx = torch.searchsorted(rc, rec_points, side="left")
        q = torch.where(idx < len(pr), pr[idx.clamp_max(len(pr) - 1)], torch.zeros_like(rec_points))
        aps.append(float(q.mean()))
    return {"mAP": sum(aps) / len(aps), "AP@0.5": aps[0], "AP@0.75": aps[5]}


def segmentation_summary(stats: list[tuple[int, int]]) -> dict:
    """Overall IoU, mean IoU and Precision@0.5:0.9 from (intersection, union) of each annotated
    frame's top prediction, as MTTR's A2D / JHMDB evaluation: IoU = (I + 1e-6) / (U + 1e-6) (an
    empty union counts as 1), Prec@k = the share of frames with IoU > k (strictly)."""
    if not stats:
        raise ValueError("no frames")
    ious = [(i + 1e-6) / (u + 1e-6) for i, u in stats]
    out = {"oIoU": sum(i for i, _ in stats) / max(sum(u for _, u in stats), 1), "mIoU": sum(ious) / len(ious)}
    out.update({f"Prec@{x}": sum(v > x for v in ious) / len(ious) for x in PREC})
    return out
