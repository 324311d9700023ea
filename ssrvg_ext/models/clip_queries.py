"""SgMg's clip-level queries (models/sgmg.py, models/criterion.py, models/matcher.py,
inference_ytvos.py there; docs/methods.md): N hypotheses shared by every frame of a clip, each a
learned offset added to the starting queries, decoded independently per frame with a class score
from its box query. In training the hypothesis matched to the referred object once per clip
(Hungarian matching of one object = the argmin of the clip-averaged cost) is the one the box and
mask losses supervise, and a focal class loss asks for it on the frames where the object is
visible; at inference the hypothesis with the best clip-averaged score gives every frame's box and
mask. A batch of single images is a batch of one-frame clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .criterion import cxcywh_to_xyxy, giou_loss

HEAD_KEYS = ("boxes", "aux_boxes", "mask_logits", "coarse_mask_logits", "aux_mask_logits", "aux_coarse_mask_logits")
BATCH_DIM = {"boxes": 0, "mask_logits": 0, "coarse_mask_logits": 0, "aux_boxes": 1, "aux_mask_logits": 1,
             "aux_coarse_mask_logits": 1}


def select(stacked: torch.Tensor, idx: torch.Tensor, bdim: int) -> torch.Tensor:
    """stacked (N, ...) with the batch at dim ``bdim + 1``; idx (B,) the hypothesis of each row -> (...)."""
    x = stacked.movedim(bdim + 1, 1)  # (N, B, ...)
    return x[idx, torch.arange(x.shape[1], device=x.device)].movedim(0, bdim)


def clip_mean(x: torch.Tensor, clip_len: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(N, B) per frame -> (N, C) the mean over each clip's frames (weighted by ``weight`` (B,))."""
    n, b = x.shape
    x = x.reshape(n, b // clip_len, clip_len)
    if weight is None:
        return x.mean(-1)
    w = weight.reshape(1, b // clip_len, clip_len).to(x.dtype)
    return (x * w).sum(-1) / w.sum(-1).clamp_min(1)


class ClipQueries(nn.Module):
    """``count`` hypotheses: ``embed`` (count, d) added to every starting query; ``score`` the class
    logit of a hypothesis in a frame, from its final box query."""

    def __init__(self, d: int, count: int):
        super().__init__()
        self.embed = nn.Embedding(count, d)
        self.score = nn.Linear(d, 1)

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "ClipQueries | None":
        """model.clip_queries (0: off)."""
        n = int(cfg["model"]["clip_queries"])
        return cls(cfg["model"]["d_model"], n) if n > 0 else None

    def hypotheses(self, decode, st) -> dict:
        outs, scores = [], []
        for n in range(self.embed.num_embeddings):
            outs.append(decode(self.embed.weight[n][None, None]))
            scores.append(self.score(st.extras["box_query"]).squeeze(-1))
        stacked = {k: torch.stack([o[k] for o in outs]) for k in HEAD_KEYS if k in outs[0]}
        scores = torch.stack(scores)  # (N, B)
        t = st.clip_len or 1
        best = clip_mean(torch.sigmoid(scores.float()), t).argmax(0).repeat_interleave(t)  # the inference rule
        out = {k: select(v, best, BATCH_DIM[k]) for k, v in stacked.items()}
        out["clip_score"] = torch.sigmoid(select(scores, best, 0).float())
        if self.training:
            out["clip_hypotheses"], out["clip_scores"] = stacked, scores
        return out


@torch.no_grad()
def match(crit, out: dict, batch: dict, ctx) -> torch.Tensor:
    """(B,) the hypothesis matched to the object in each row's clip: the argmin over hypotheses of
    the clip-averaged cost 2 x focal class cost + the box losses (loss.l1 / loss.giou weights, on
    visible frames) + the mask losses (loss.mask weights, on labeled frames) of the final mask."""
    hyp, scores = out["clip_hypotheses"], out["clip_scores"].float()
    n, b = scores.shape
    t = batch.get("clip_len") or 1
    visible = batch["box_valid"].float() if "box_valid" in batch else torch.ones(b, device=scores.device)
    labeled = ctx.labeled.float() if ctx.labeled is not None else torch.ones(b, device=scores.device)
    p = torch.sigmoid(scores)
    a, g = 0.25, 2.0  # the focal matching cost of Deformable DETR / SgMg's matcher
    cls = a * (1 - p) ** g * -torch.log(p + 1e-8) - (1 - a) * p ** g * -torch.log(1 - p + 1e-8)
    tgt = batch["boxes"].to(hyp["boxes"].dtype)
    l1 = (hyp["boxes"] - tgt[None]).abs().sum(-1)
    giou = giou_loss(cxcywh_to_xyxy(hyp["boxes"]), cxcywh_to_xyxy(tgt)[None].expand_as(hyp["boxes"]))
    cost = crit.loss_cfg["clip_class"] * cls * labeled + (crit.loss_cfg["l1"] * l1 + crit.loss_cfg["giou"] * giou) * visible
    if crit.mask:
        logits = hyp["mask_logits"].float()  # (N, B, h, w)
        tg = F.adaptive_avg_pool2d(ctx.targets[:, None].float(), logits.shape[-2:])[:, 0]  # (B, h, w)
        vd = F.adaptive_avg_pool2d(ctx.valid[:, None].float(), logits.shape[-2:])[:, 0] > 0.5
        vd = vd[None].float()
        tg = (tg * vd[0])[None]  # (1, B, h, w)
        pm = torch.sigmoid(logits) * vd
        dice = 1 - (2 * (pm * tg).flatten(2).sum(-1) + 1) / (pm.flatten(2).sum(-1) + tg.flatten(2).sum(-1) + 1)
        bce = (F.binary_cross_entropy_with_logits(logits, tg.expand_as(logits), reduction="none") * vd).flatten(2).sum(-1) \
            / vd.flatten(2).sum(-1).clamp_min(1)
        weights = crit.mask
        cost = cost + (weights.get("dice", 0) * dice + (weights.get("bce", 0) + weights.get("focal", 0)) * bce) * labeled
    return clip_mean(cost, t, labeled).argmin(0).repeat_interleave(t)


def clip_class_loss(crit, out: dict, batch: dict, ctx) -> dict:
    """``clip_class``: sigmoid focal loss of every hypothesis' score in every labeled frame, the
    matched one's target 1 where the object is visible; over the visible frames. Runs before the
    box and mask losses (registered first) and hands them the matched hypothesis' outputs."""
    idx = match(crit, out, batch, ctx)
    for k, v in out["clip_hypotheses"].items():
        out[k] = select(v, idx, BATCH_DIM[k])
    scores = out["clip_scores"]
    n, b = scores.shape
    visible = batch["box_valid"].to(scores.dtype) if "box_valid" in batch else scores.new_ones(b)
    target = torch.zeros_like(scores)
    target[idx, torch.arange(b, device=scores.device)] = visible
    loss = sigmoid_focal_loss(scores, target, alpha=0.25, gamma=2.0, reduction="none")
    if ctx.labeled is not None:
        loss = loss * ctx.labeled.to(loss.dtype)[None]
    return {"clip_class": loss.sum() / visible.sum().clamp_min(1)}  # (a tensor: no host synchronisation)
