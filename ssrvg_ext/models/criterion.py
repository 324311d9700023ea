"""All training losses in one place: L1 + GIoU on the box of every decoder layer, the token
proposals' focal + box losses, the fused upsampled mask losses on the mask (and on SgMg's coarse
mask), each normalised by the number of expressions over all ranks; and, when the data has object labels, cross-entropy on every
visual token's labels (the object under the token's centre, background elsewhere). MagNet's terms
when the model gives their inputs: the masked-token cross-entropy (``mg``) and the cross-modal
alignment loss (``cal_p2p``, ``cal_p2t``)."""

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
                 segvg_factor: bool, mask_grounding: float, align: dict):
        super().__init__()
        self.mask_grounding, self.align = mask_grounding, dict(align)
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
                  "attr": self.attr, "mg": self.mask_grounding, "cal_p2p": self.align["p2p"],
                  "cal_p2t": self.align["p2t"]})
        w.update({f"mask_{name}": weight for name, weight in self.mask.items()})
        w.update({f"mask_{name}_coarse": weight for name, weight in self.mask.items()})  # SgMg's coarse mask
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

    def proposal_losses(self, out: dict, tgt: torch.Tensor, norm: float, weight: torch.Tensor | None = None) -> dict:
        """Tokens whose anchor centre lies in the ground-truth box (and always the nearest one) are
        positives: focal loss on every token's score, L1 + GIoU on the positives' boxes. ``weight``
        (B,): each sample's share (0: a video frame without the object counts only as negatives)."""
        anchors, scores, boxes = out["anchors"], out["proposal_scores"], out["proposal_boxes"]
        gt = cxcywh_to_xyxy(tgt)  # (B, 4)
        cx, cy = anchors[None, :, 0], anchors[None, :, 1]
        pos = (cx >= gt[:, 0:1]) & (cx <= gt[:, 2:3]) & (cy >= gt[:, 1:2]) & (cy <= gt[:, 3:4])
        nearest = ((anchors[None, :, :2] - tgt[:, None, :2]) ** 2).sum(-1).argmin(1)
        pos.scatter_(1, nearest[:, None], True)  # (indexing with a Python True would copy it to the GPU: a sync)
        w = pos.float() if weight is None else pos.float() * weight[:, None]
        score = sigmoid_focal_loss(scores, w, alpha=0.25, gamma=2.0, reduction="sum") / norm
        npos = pos.float().sum(1).clamp_min(1)  # each expression weighs the same, whatever its number of positives
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

    def mask_grounding_loss(self, out: dict) -> torch.Tensor:
        """Cross-entropy of the masked tokens, averaged over them (0 when none was chosen)."""
        logits, targets = out["mg_logits"], out["mg_targets"]
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        return ce / (targets != -100).sum().clamp_min(1)

    def alignment_losses(self, out: dict, masks: torch.Tensor, valid: torch.Tensor, norm: float) -> dict:
        """MagNet's cross-modal alignment loss on the L2-normalised mask features e (B, C, h, w); the
        mask and the padding are read at that resolution (a pixel is inside when over half of it is).
        Each sample draws up to ``points`` pixels inside the mask (P) and outside it (N, padding
        excluded). Pixel-to-text: for p in P, -log(exp(e_p.t / T) / (exp(e_p.t / T) + sum_N exp(e_n.t / T)))
        with t the projected sentence; pixel-to-pixel: for anchors a != p in P, the same with
        e_a.e_p against e_a.e_n. Averaged over each sample's terms, summed over samples / norm."""
        e = F.normalize(out["cal_pixels"].flatten(2).transpose(1, 2), dim=-1)  # (B, hw, C)
        hw = out["cal_pixels"].shape[-2:]
        inside = F.adaptive_avg_pool2d(masks[:, None].float(), hw).flatten(1) > 0.5
        ok = F.adaptive_avg_pool2d(valid[:, None].float(), hw).flatten(1) > 0.5
        k, tau = min(int(self.align["points"]), e.shape[1]), self.align["temperature"]
        r = torch.rand(inside.shape, device=e.device)

        def draw(sel):  # up to k pixels of ``sel`` per sample: their embeddings and which are real
            idx = (r + 2 * sel).topk(k, 1).indices
            return torch.gather(e, 1, idx[..., None].expand(-1, -1, e.shape[-1])), torch.gather(sel, 1, idx)
        ep, p_ok = draw(inside & ok)
        en, n_ok = draw(~inside & ok)
        terms = {}
        if self.align["p2t"]:
            t = F.normalize(out["cal_text"], dim=-1)[:, :, None]  # (B, C, 1)
            terms["cal_p2t"] = info_nce((ep @ t)[..., 0] / tau, (en @ t)[..., 0] / tau, p_ok, n_ok, norm)
        if self.align["p2p"]:
            pairs = p_ok[:, :, None] & p_ok[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=e.device)
            terms["cal_p2p"] = info_nce(ep @ ep.transpose(1, 2) / tau, ep @ en.transpose(1, 2) / tau, pairs,
                                        n_ok[:, None, :].expand(-1, k, -1), norm)
        return terms

    def forward(self, out: dict, batch: dict) -> dict:
        """``batch["box_valid"]`` (B,) bool, when present (video frames): the box terms of a sample
        without the object are left out (its mask terms ask for an empty mask)."""
        tgt = batch["boxes"].to(out["boxes"].dtype)
        norm = global_count(tgt.shape[0], tgt.device)
        box_w = batch["box_valid"].to(tgt.dtype) if "box_valid" in batch else None
        mask_terms, factors, aux_masks = {}, {}, {}
        if self.mask or "cal_pixels" in out:  # the mask targets (and the padding) of both
            size = batch["images"].shape[-1]
            targets = box_to_mask(batch["boxes"], size) if self.box_to_mask else batch["masks"]
            valid = padding_valid(batch["meta"], size, targets.device)
        if self.mask:
            mask_terms, factors["last"] = self.mask_losses(out["mask_logits"], targets, valid, norm)
            for i, logits in enumerate(out.get("aux_mask_logits", [])):  # SegVG: a mask at every layer
                aux_masks[i], factors[i] = self.mask_losses(logits, targets, valid, norm)
            if "coarse_mask_logits" in out:  # SgMg: the coarse mask is supervised too
                coarse, _ = self.mask_losses(out["coarse_mask_logits"], targets, valid, norm)
                mask_terms.update({f"{k}_coarse": v for k, v in coarse.items()})
        if box_w is not None:
            factors = {k: box_w if factors.get(k) is None else factors[k] * box_w for k in ["last", *aux_masks]}
            factors.update({i: box_w for i in range(len(out["aux_boxes"])) if i not in factors})
        terms = self.box_losses(out["boxes"], tgt, norm, factors.get("last"))
        for i, aux in enumerate(out["aux_boxes"]):
            terms.update({f"{k}_{i}": v for k, v in self.box_losses(aux, tgt, norm, factors.get(i)).items()})
            terms.update({f"mask_{k}_{i}": v for k, v in aux_masks.get(i, {}).items()})
        if self.proposal and "proposal_scores" in out:
            terms.update(self.proposal_losses(out, tgt, norm, box_w))
        if self.attr and self.attr_classes and "attr_logits" in out and "instances" in batch:
            terms["attr"] = self.attr_loss(out, batch)
        if "mg_logits" in out:
            terms["mg"] = self.mask_grounding_loss(out)
        if "cal_pixels" in out:
            terms.update(self.alignment_losses(out, targets, valid, norm))
        terms.update({f"mask_{k}": v for k, v in mask_terms.items()})
        weights = self.weight_dict(len(out["aux_boxes"]))
        terms["total"] = sum(weights[k] * v for k, v in terms.items() if weights.get(k))
        return terms


def info_nce(pos: torch.Tensor, neg: torch.Tensor, pos_ok: torch.Tensor, neg_ok: torch.Tensor, norm: float):
    """Sum over samples / norm of each sample's mean of -log(exp(pos) / (exp(pos) + sum exp(neg)))
    over its real positives; pos (B, ..., P) logits, neg (B, ..., K) the negatives of each row,
    pos_ok / neg_ok which are real. A finite "minus infinity" masks the missing negatives (finite
    gradients when a sample has none; such a sample adds nothing)."""
    lse = torch.logsumexp(neg.masked_fill(~neg_ok, -1e4), -1, keepdim=True)
    w = (pos_ok & neg_ok.any(-1, keepdim=True)).to(pos.dtype)
    per = ((torch.logaddexp(pos, lse) - pos) * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1)
    return per.sum() / norm


def padding_valid(metas: list[dict], size: int, device) -> torch.Tensor:
    """(B, size, size) bool: True on the image, False on the padding added by ResizePad."""
    v = torch.zeros(len(metas), size, size, dtype=torch.bool, device=device)
    for i, m in enumerate(metas):
        h, w = m["valid"]
        v[i, :h, :w] = True
    return v
