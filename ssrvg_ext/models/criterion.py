"""All training losses in one place: L1 + GIoU on the box of every decoder layer, the token
proposals' focal + box losses, the fused upsampled mask losses on the mask, each normalised by the
number of expressions over all ranks; and, when the data has object labels, cross-entropy on every
visual token's labels (the object under the token's centre, background elsewhere)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ..ops import upsampled_mask_loss_terms, upsampled_mask_sums
from ..ops.mask_loss import losses_from_sums


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def giou_loss(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """1 - generalised IoU of matching xyxy boxes (..., 4), elementwise: torchvision's
    generalized_box_iou_loss(reduction="none") without its boolean-mask indexing, which costs two
    host synchronisations (forward and backward) per call on a GPU."""
    def area(wh):  # w * h; not prod(-1), whose backward asks the GPU whether any factor is 0 (a sync)
        return wh[..., 0] * wh[..., 1]

    inter = area((torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0))
    union = area(a[..., 2:] - a[..., :2]) + area(b[..., 2:] - b[..., :2]) - inter
    hull = area(torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2]))
    return 1 - inter / (union + eps) + (hull - union) / (hull + eps)


def global_count(n: int, device) -> float:
    """Expressions in this step over all ranks, divided by the world size (DDP averages gradients)."""
    if not (dist.is_available() and dist.is_initialized()):
        return max(float(n), 1.0)  # one process: no tensor, no host synchronisation
    t = torch.tensor(float(n), device=device)
    dist.all_reduce(t)
    return max(float(t) / dist.get_world_size(), 1.0)


def box_to_mask(boxes_cxcywh: torch.Tensor, size: int) -> torch.Tensor:
    """SegVG-style box supervision for RES: the box filled in, (B, size, size) uint8."""
    xyxy = cxcywh_to_xyxy(boxes_cxcywh) * size
    r = torch.arange(size, device=boxes_cxcywh.device) + 0.5
    inside_y = (r[None, :] >= xyxy[:, 1:2]) & (r[None, :] <= xyxy[:, 3:4])
    inside_x = (r[None, :] >= xyxy[:, 0:1]) & (r[None, :] <= xyxy[:, 2:3])
    return (inside_y[:, :, None] & inside_x[:, None, :]).to(torch.uint8)


class Criterion(nn.Module):
    """Returns every loss term unweighted (the last decoder layer's ``l1`` / ``giou``, each earlier
    layer's ``l1_<i>`` / ``giou_<i>``, the proposals' ``prop_*``, ``attr``, ``mask_<name>``) and
    ``total`` = the sum of each term times its entry in :attr:`weight_dict`; every term is logged."""

    def __init__(self, l1: float, giou: float, aux: float, mask: dict, box_to_mask: bool, focal_alpha: float,
                 focal_gamma: float, proposal: float, attr: float, attr_classes: list[int] | None,
                 segvg_factor: bool):
        super().__init__()
        self.proposal, self.attr, self.attr_classes = proposal, attr, attr_classes
        self.l1, self.giou, self.aux = l1, giou, aux
        self.mask = dict(mask)
        self.box_to_mask, self.alpha, self.gamma = box_to_mask, focal_alpha, focal_gamma
        self.segvg_factor = segvg_factor

    def weight_dict(self, aux_layers: int) -> dict[str, float]:
        """Term name -> weight in ``total`` (a term absent here is logged only)."""
        w = {"l1": self.l1, "giou": self.giou}
        for i in range(aux_layers):
            w.update({f"l1_{i}": self.aux * self.l1, f"giou_{i}": self.aux * self.giou})
            w.update({f"mask_{name}_{i}": self.aux * weight for name, weight in self.mask.items()})
        w.update({"prop_score": self.proposal, "prop_l1": self.proposal * self.l1, "prop_giou": self.proposal * self.giou,
                  "attr": self.attr})
        w.update({f"mask_{name}": weight for name, weight in self.mask.items()})
        return w

    def box_losses(self, pred: torch.Tensor, tgt: torch.Tensor, norm: float, factor: torch.Tensor | None = None) -> dict:
        """L1 and GIoU summed over the batch / norm; each sample's scaled by ``factor`` (B,) when given."""
        if factor is None:
            l1 = (pred - tgt).abs().sum() / norm
            giou = giou_loss(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt)).sum() / norm
        else:
            l1 = ((pred - tgt).abs().sum(-1) * factor).sum() / norm
            giou = (giou_loss(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt)) * factor).sum() / norm
        return {"l1": l1, "giou": giou}

    def mask_losses(self, logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, norm: float):
        """The loss.mask terms of one mask prediction (unweighted), and SegVG's per-sample factor
        f = 1 + (1 - soft recall of the target)^2 (None unless loss.segvg_factor), which scales the
        dice term here and that layer's box losses (not detached, as in SegVG's code)."""
        names = tuple(self.mask)
        if not self.segvg_factor:
            return upsampled_mask_loss_terms(logits, targets, names, valid=valid, num_masks=norm, alpha=self.alpha,
                                             gamma=self.gamma), None
        sums = upsampled_mask_sums(logits, targets, valid, self.alpha, self.gamma)
        per = losses_from_sums(sums, valid.flatten(1).sum(1), names)
        factor = 1 + (1 - sums[:, 0] / sums[:, 2].clamp_min(1)) ** 2
        return {k: ((v * factor) if k == "dice" else v).sum() / norm for k, v in per.items()}, factor

    def proposal_losses(self, out: dict, tgt: torch.Tensor, norm: float) -> dict:
        """Tokens whose anchor centre lies in the ground-truth box (and always the nearest one) are
        positives: focal loss on every token's score, L1 + GIoU on the positives' boxes."""
        anchors, scores, boxes = out["anchors"], out["proposal_scores"], out["proposal_boxes"]
        gt = cxcywh_to_xyxy(tgt)  # (B, 4)
        cx, cy = anchors[None, :, 0], anchors[None, :, 1]
        pos = (cx >= gt[:, 0:1]) & (cx <= gt[:, 2:3]) & (cy >= gt[:, 1:2]) & (cy <= gt[:, 3:4])
        nearest = ((anchors[None, :, :2] - tgt[:, None, :2]) ** 2).sum(-1).argmin(1)
        pos.scatter_(1, nearest[:, None], True)  # (indexing with a Python True would copy it to the GPU: a sync)
        w = pos.float()
        score = sigmoid_focal_loss(scores, w, alpha=0.25, gamma=2.0, reduction="sum") / norm
        npos = w.sum(1).clamp_min(1)  # each expression weighs the same, whatever its number of positives
        per_tok = (boxes - tgt[:, None, :]).abs().sum(-1)
        l1 = ((per_tok * w).sum(1) / npos).sum() / norm
        giou_tok = giou_loss(cxcywh_to_xyxy(boxes), gt[:, None, :])
        giou = ((giou_tok * w).sum(1) / npos).sum() / norm
        return {"prop_score": score, "prop_l1": l1, "prop_giou": giou}

    def attr_loss(self, out: dict, batch: dict) -> torch.Tensor:
        """Token-wise cross-entropy on each label (read at the token centres), averaged over the labels;
        object tokens and background tokens weigh half each, however few the objects cover."""
        inst, table = batch["instances"], batch["inst_labels"]  # (B, S, S) object index; (B, n + 1, K)
        size = inst.shape[-1]
        px = (out["attr_points"] * size).long().clamp_(0, size - 1)  # (N, 2) x, y
        obj = inst[:, px[:, 1], px[:, 0]].long()  # (B, N)
        labels = torch.gather(table, 1, obj[..., None].expand(-1, -1, table.shape[-1]))  # (B, N, K)
        logits = out["attr_logits"].split(self.attr_classes, -1)
        fg = (obj > 0).flatten()
        total = 0.0
        for k, lg in enumerate(logits):
            lab = labels[..., k].flatten()
            ce = F.cross_entropy(lg.flatten(0, 1), lab, ignore_index=-100, reduction="none")
            known = lab != -100
            for part in (fg & known, ~fg & known):
                total = total + 0.5 * (ce * part).sum() / part.sum().clamp_min(1)
        return total / len(logits)

    def forward(self, out: dict, batch: dict) -> dict:
        tgt = batch["boxes"].to(out["boxes"].dtype)
        norm = global_count(tgt.shape[0], tgt.device)
        mask_terms, factors, aux_masks = {}, {}, {}
        if self.mask:
            size = batch["images"].shape[-1]
            targets = box_to_mask(batch["boxes"], size) if self.box_to_mask else batch["masks"]
            valid = padding_valid(batch["meta"], size, targets.device)
            mask_terms, factors["last"] = self.mask_losses(out["mask_logits"], targets, valid, norm)
            for i, logits in enumerate(out.get("aux_mask_logits", [])):  # SegVG: a mask at every layer
                aux_masks[i], factors[i] = self.mask_losses(logits, targets, valid, norm)
        terms = self.box_losses(out["boxes"], tgt, norm, factors.get("last"))
        for i, aux in enumerate(out["aux_boxes"]):
            terms.update({f"{k}_{i}": v for k, v in self.box_losses(aux, tgt, norm, factors.get(i)).items()})
            terms.update({f"mask_{k}_{i}": v for k, v in aux_masks.get(i, {}).items()})
        if self.proposal and "proposal_scores" in out:
            terms.update(self.proposal_losses(out, tgt, norm))
        if self.attr and self.attr_classes and "attr_logits" in out and "instances" in batch:
            terms["attr"] = self.attr_loss(out, batch)
        terms.update({f"mask_{k}": v for k, v in mask_terms.items()})
        weights = self.weight_dict(len(out["aux_boxes"]))
        terms["total"] = sum(weights[k] * v for k, v in terms.items() if weights.get(k))
        return terms


def padding_valid(metas: list[dict], size: int, device) -> torch.Tensor:
    """(B, size, size) bool: True on the image, False on the padding added by ResizePad."""
    v = torch.zeros(len(metas), size, size, dtype=torch.bool, device=device)
    for i, m in enumerate(metas):
        h, w = m["valid"]
        v[i, :h, :w] = True
    return v
