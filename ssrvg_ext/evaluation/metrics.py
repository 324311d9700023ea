"""Standard referring-expression metrics (docs/design.md section 9).

REC: Acc@0.5 = fraction of expressions whose predicted box has IoU >= 0.5 with the ground truth
(plain IoU, original image coordinates). RES: per-expression mask IoU at the original resolution;
mIoU = their mean; oIoU = sum of intersections / sum of unions over the split;
Prec@X = fraction with IoU >= X for X in 0.5..0.9. Intersections and unions are exact integers
from the library's RLE ops.
"""

from __future__ import annotations

import torch

from ..ops import rle

PREC = (0.5, 0.6, 0.7, 0.8, 0.9)


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes (continuous coordinates)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def mask_stats(pred: dict, gt: dict) -> tuple[int, int]:
    """(intersection, union) pixel counts of two RLEs of one size."""
    inter = int(rle.area([rle.merge([pred, gt], intersect=True)])[0])
    areas = rle.area([pred, gt]).tolist()
    return inter, areas[0] + areas[1] - inter


def mask_stats_batch(preds: list[torch.Tensor], gts: list[dict], pred_rles: list[dict] | None = None,
                     chunk: int = 32) -> list[tuple[int, int]]:
    """(intersection, union) of each predicted (H, W) uint8 / bool mask with its ground-truth RLE,
    exact integers. On the CPU from the RLEs (``pred_rles``, the predictions' own, encoded here when
    not given): the run lengths are walked over the columns both boxes cover, never a dense mask.
    On a GPU where the masks are: the ground truth decoded there (the CUDA decode kernel), two
    reductions per group of equal sizes, one host copy of the counts at the end."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted masks for {len(gts)} ground-truth RLEs")
    out: list[tuple[int, int]] = [(0, 0)] * len(preds)
    groups: dict[tuple, list[int]] = {}
    for i, (p, g) in enumerate(zip(preds, gts)):
        if p.dim() != 2 or list(p.shape) != [int(v) for v in g["size"]]:
            raise ValueError(f"prediction {i} has shape {tuple(p.shape)} but its ground truth is {g['size']}")
        groups.setdefault((tuple(p.shape), p.device), []).append(i)
    for (_, device), idx in groups.items():
        if device.type == "cpu":
            prles = [pred_rles[i] for i in idx] if pred_rles is not None else rle.encode(torch.stack([preds[i] for i in idx]))
            for i, stats in zip(idx, _rle_stats(prles, [gts[i] for i in idx], chunk)):
                out[i] = stats
            continue
        pm = torch.stack([preds[i] for i in idx]).bool()
        gm = rle.decode([gts[i] for i in idx], device=device).bool()
        stats = torch.stack([(pm & gm).flatten(1).sum(1), (pm | gm).flatten(1).sum(1)], 1).tolist()
        for i, (inter, union) in zip(idx, stats):
            out[i] = (int(inter), int(union))
    return out


def _rle_stats(preds: list[dict], gts: list[dict], chunk: int) -> list[tuple[int, int]]:
    """Exact (I, U) of RLE pairs of one size, ``chunk`` pairs per IoU call. With every ground truth
    marked crowd, the IoU op gives I / area(pred) as a double (0 where the boxes miss each other);
    I <= H * W < 2^31, so round(ratio * area) is I exactly (the two roundings err by < 1e-9)."""
    out = []
    for s in range(0, len(preds), chunk):
        p, g = preds[s:s + chunk], gts[s:s + chunk]
        ratio = rle.iou(p, g, [1] * len(g)).diagonal()
        pa, ga = rle.area(p), rle.area(g)
        inter = (ratio * pa.double()).round().long()
        out += [(int(i), int(a + b - i)) for i, a, b in zip(inter.tolist(), pa.tolist(), ga.tolist())]
    return out


def grounding_metrics(results: list[dict]) -> dict:
    """results: per expression {"box_iou": float, "inter": int, "union": int}; inter / union None for
    an expression without a mask annotation (box-only datasets). The mask metrics cover the
    expressions with masks (``n_masks`` of them) and are absent when there are none."""
    n = len(results)
    if n == 0:
        raise ValueError("no results to evaluate")
    box = torch.tensor([r["box_iou"] for r in results], dtype=torch.float64)
    out = {"n": n, "Acc@0.5": float((box >= 0.5).double().mean())}
    masked = [r for r in results if r["inter"] is not None]
    if not masked:
        return out
    inter = torch.tensor([r["inter"] for r in masked], dtype=torch.float64)
    union = torch.tensor([r["union"] for r in masked], dtype=torch.float64)
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))  # both empty: a perfect match
    out.update({"mIoU": float(iou.mean()), "oIoU": float(inter.sum() / union.sum().clamp_min(1))})
    for x in PREC:
        out[f"Prec@{x}"] = float((iou >= x).double().mean())
    if len(masked) < n:
        out["n_masks"] = len(masked)
    return out
