"""The criterion: the losses a config switches on, chosen when it is built (Deformable DETR's
``SetCriterion``: a list of loss names, a ``get_loss`` map, a ``weight_dict``; ReferFormer's habit of
returning every term unweighted and logging it).

Each loss is a :class:`LossSpec` registered in :data:`~.registry.LOSSES` (the registrations are in
:mod:`.build`): ``compute(crit, out, batch, ctx) -> {term: tensor}``, ``enabled(cfg)`` and
``weights(cfg) -> {term: weight}``. The core losses are here: L1 + GIoU on the box of every decoder
layer (and the mask of every layer with SegVG's multi-layer supervision), the fused upsampled mask
losses on the mask and on SgMg's coarse mask, the token proposals' focal + box losses, the dense
object-label cross-entropy; each normalised by the number of expressions over all ranks. A
method's loss lives with its module (MagNet's ``mg`` in :mod:`.grounding`, ``cal_*`` in
:mod:`.alignment_loss`)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from dataclasses import dataclass, field
from typing import Callable

from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ..ops import upsampled_mask_loss_terms, upsampled_mask_sums
from ..ops.mask_loss import losses_from_sums
from ..structures import Batch, ModelOutputs
from .registry import LOSSES


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


@dataclass
class LossSpec:
    """A loss the criterion can compute: ``compute(crit, out, batch, ctx) -> {term: tensor}``
    (unweighted), ``enabled(cfg)`` whether a config switches it on, ``weights(cfg)`` the weight of
    each of its terms in ``total`` (a term without a weight, or of weight 0, is logged only);
    ``needs_masks``: it reads the mask targets and the padding (``ctx.targets``, ``ctx.valid``)."""
    compute: Callable
    enabled: Callable[[dict], bool]
    weights: Callable[[dict], dict]
    needs_masks: bool = False


@dataclass
class LossContext:
    """What the losses of one step share: the normaliser (expressions over all ranks), each
    sample's box weight (None: all 1; video frames without the object: 0), the mask targets and
    the padding (when a loss needs them) and the final mask's terms, computed once. ``labeled``:
    which frames have a ground truth at all (A2D / JHMDB clips: only the annotated frame; None: every
    sample); an unlabeled frame adds nothing to any loss (its pixels are out of ``valid``, its box
    weight is 0, its tokens are no proposal negatives) and is not counted in ``norm``."""
    norm: float
    box_weight: torch.Tensor | None
    targets: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)
    labeled: torch.Tensor | None = None  # (B,) bool: frames with a ground truth (None: all)


class Criterion(nn.Module):
    """``losses``: the names of the :data:`~.registry.LOSSES` to compute, in order; ``weight_dict``:
    term -> weight in ``total`` (summed in this dict's order); ``loss_cfg``: the config's ``loss``
    section; ``attr_classes``: the object-label head's classes per label. Returns every term
    unweighted (the last decoder layer's ``l1`` / ``giou``, each earlier layer's ``l1_<i>`` /
    ``giou_<i>``, the proposals' ``prop_*``, ``attr``, ``mask_<name>``, the methods' terms) and
    ``total``; every term is logged."""

    def __init__(self, *, losses: list[str], weight_dict: dict[str, float], loss_cfg: dict,
                 attr_classes: list[int] | None = None):
        super().__init__()
        self.losses, self.weight_dict = list(losses), dict(weight_dict)
        self.loss_cfg, self.attr_classes = loss_cfg, attr_classes
        self.mask = dict(loss_cfg["mask"])
        self.alpha, self.gamma = loss_cfg["focal_alpha"], loss_cfg["focal_gamma"]
        self.segvg_factor = loss_cfg["segvg_factor"]

    @classmethod
    def from_config(cls, cfg: dict, attr_classes: list[int] | None = None) -> "Criterion":
        """The losses the config switches on (each spec's ``enabled``) and their weights."""
        names = [n for n, spec in LOSSES.items() if spec.enabled(cfg)]
        if "attr" in names and not attr_classes:
            names.remove("attr")  # no object-label head: the data has no labels
        weights: dict[str, float] = {}
        for n in names:
            weights.update(LOSSES.get(n).weights(cfg))
        return cls(losses=names, weight_dict=weights, loss_cfg=cfg["loss"], attr_classes=attr_classes)

    def get_loss(self, name: str, out: ModelOutputs, batch: Batch, ctx: LossContext) -> dict:
        return LOSSES.get(name).compute(self, out, batch, ctx)

    def forward(self, out: ModelOutputs, batch: Batch) -> dict:
        """``batch["box_valid"]`` (B,) bool, when present (video frames): the box terms of a sample
        without the object are left out (its mask terms ask for an empty mask). ``batch["labeled"]``
        (B,) bool and ``batch["num_labeled"]`` (an int), when present (clips of A2D / JHMDB): only
        those frames are supervised."""
        tgt = batch["boxes"]
        labeled = batch.get("labeled")
        count = batch["num_labeled"] if labeled is not None else tgt.shape[0]
        box_weight = batch["box_valid"].to(out["boxes"].dtype) if "box_valid" in batch else None
        if labeled is not None:
            box_weight = labeled.to(out["boxes"].dtype) if box_weight is None else box_weight * labeled
        ctx = LossContext(global_count(count, tgt.device), box_weight, labeled=labeled)
        if self.mask or any(LOSSES.get(n).needs_masks for n in self.losses):  # the mask targets and the padding
            size = batch["images"].shape[-1]
            ctx.targets = box_to_mask(batch["boxes"], size) if self.loss_cfg["box_to_mask"] else batch["masks"]
            ctx.valid = padding_valid(batch["meta"], size, ctx.targets.device)
            if labeled is not None:
                ctx.valid = ctx.valid & labeled[:, None, None]
        terms = {}
        for name in self.losses:
            terms.update(self.get_loss(name, out, batch, ctx))
        terms["total"] = sum(w * terms[k] for k, w in self.weight_dict.items() if w and k in terms)
        return terms

    # -- helpers of the core losses -------------------------------------------------------------
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

    def final_mask(self, out: ModelOutputs, ctx: LossContext):
        """The final mask's terms and SegVG factor, computed once per step (the box loss reads the factor)."""
        if "final_mask" not in ctx.cache:
            ctx.cache["final_mask"] = self.mask_losses(out["mask_logits"], ctx.targets, ctx.valid, ctx.norm)
        return ctx.cache["final_mask"]

    def layer_factor(self, mask_factor: torch.Tensor | None, ctx: LossContext) -> torch.Tensor | None:
        """A layer's per-sample box-loss scale: its SegVG factor times the sample's box weight."""
        if ctx.box_weight is None:
            return mask_factor
        return ctx.box_weight if mask_factor is None else mask_factor * ctx.box_weight


# -- the core losses (registered in .build) ------------------------------------------------------
def loss_boxes(crit: Criterion, out: ModelOutputs, batch: Batch, ctx: LossContext) -> dict:
    """``l1`` / ``giou`` of the last layer's box, ``l1_<i>`` / ``giou_<i>`` of each earlier layer's and,
    with model.decoder.mask_every_layer, ``mask_<name>_<i>`` of each earlier layer's mask (SegVG) and
    ``mask_<name>_coarse_<i>`` of its coarse mask (SgMg's head)."""
    tgt = batch["boxes"].to(out["boxes"].dtype)
    last = crit.final_mask(out, ctx)[1] if crit.mask and crit.segvg_factor else None
    terms = crit.box_losses(out["boxes"], tgt, ctx.norm, crit.layer_factor(last, ctx))
    aux_masks = out.get("aux_mask_logits") if crit.mask else None
    aux_coarse = out.get("aux_coarse_mask_logits") if crit.mask else None
    for i, aux in enumerate(out["aux_boxes"]):
        masks, factor = crit.mask_losses(aux_masks[i], ctx.targets, ctx.valid, ctx.norm) if aux_masks is not None \
            else ({}, None)
        terms.update({f"{k}_{i}": v for k, v in crit.box_losses(aux, tgt, ctx.norm, crit.layer_factor(factor, ctx)).items()})
        terms.update({f"mask_{k}_{i}": v for k, v in masks.items()})
        if aux_coarse is not None:
            coarse, _ = crit.mask_losses(aux_coarse[i], ctx.targets, ctx.valid, ctx.norm)
            terms.update({f"mask_{k}_coarse_{i}": v for k, v in coarse.items()})
    return terms


def weights_boxes(cfg: dict) -> dict:
    loss, layers = cfg["loss"], cfg["model"]["decoder"]["layers"]
    w = {"l1": loss["l1"], "giou": loss["giou"]}
    for i in range(layers - 1):
        w.update({f"l1_{i}": loss["aux"] * loss["l1"], f"giou_{i}": loss["aux"] * loss["giou"]})
        if cfg["model"]["decoder"]["mask_every_layer"]:
            w.update({f"mask_{name}_{i}": loss["aux"] * weight for name, weight in loss["mask"].items()})
            if cfg["model"]["segment_optimizer"]:
                w.update({f"mask_{name}_coarse_{i}": loss["aux"] * weight for name, weight in loss["mask"].items()})
    return w


def loss_masks(crit: Criterion, out: ModelOutputs, batch: Batch, ctx: LossContext) -> dict:
    """``mask_<name>`` of the final mask, for every loss.mask entry."""
    return {f"mask_{k}": v for k, v in crit.final_mask(out, ctx)[0].items()}


def loss_coarse_masks(crit: Criterion, out: ModelOutputs, batch: Batch, ctx: LossContext) -> dict:
    """``mask_<name>_coarse``: SgMg's coarse mask, supervised like the final one."""
    terms, _ = crit.mask_losses(out["coarse_mask_logits"], ctx.targets, ctx.valid, ctx.norm)
    return {f"mask_{k}_coarse": v for k, v in terms.items()}


def loss_proposals(crit: Criterion, out: ModelOutputs, batch: Batch, ctx: LossContext) -> dict:
    """Tokens whose anchor centre lies in the ground-truth box (and always the nearest one) are
    positives: focal loss on every token's score, L1 + GIoU on the positives' boxes. A sample's
    box weight is its share (0: a video frame without the object counts only as negatives)."""
    tgt, norm, weight = batch["boxes"].to(out["boxes"].dtype), ctx.norm, ctx.box_weight
    anchors, scores, boxes = out["anchors"], out["proposal_scores"], out["proposal_boxes"]
    gt = cxcywh_to_xyxy(tgt)  # (B, 4)
    cx, cy = anchors[None, :, 0], anchors[None, :, 1]
    pos = (cx >= gt[:, 0:1]) & (cx <= gt[:, 2:3]) & (cy >= gt[:, 1:2]) & (cy <= gt[:, 3:4])
    nearest = ((anchors[None, :, :2] - tgt[:, None, :2]) ** 2).sum(-1).argmin(1)
    pos.scatter_(1, nearest[:, None], True)  # (indexing with a Python True would copy it to the GPU: a sync)
    w = pos.float() if weight is None else pos.float() * weight[:, None]
    if ctx.labeled is None:
        score = sigmoid_focal_loss(scores, w, alpha=0.25, gamma=2.0, reduction="sum") / norm
    else:  # a frame without a ground truth has no negatives either
        score = (sigmoid_focal_loss(scores, w, alpha=0.25, gamma=2.0, reduction="none")
                 * ctx.labeled[:, None].to(scores.dtype)).sum() / norm
    npos = pos.float().sum(1).clamp_min(1)  # each expression weighs the same, whatever its number of positives
    per_tok = (boxes - tgt[:, None, :]).abs().sum(-1)
    l1 = ((per_tok * w).sum(1) / npos).sum() / norm
    giou_tok = giou_loss(cxcywh_to_xyxy(boxes), gt[:, None, :])
    giou = ((giou_tok * w).sum(1) / npos).sum() / norm
    return {"prop_score": score, "prop_l1": l1, "prop_giou": giou}


def loss_attr(crit: Criterion, out: ModelOutputs, batch: Batch, ctx: LossContext) -> dict:
    """``attr``: token-wise cross-entropy on each object label (read at the token centres),
    averaged over the labels; object tokens and background tokens weigh half each, however few the
    objects cover."""
    if "instances" not in batch:
        raise ValueError("the object-label loss (data.aux_labels, loss.attr) needs the batch's 'instances' and "
                         "'inst_labels' (the loaders add them when data.aux_labels is set)")
    inst, table = batch["instances"], batch["inst_labels"]  # (B, S, S) object index; (B, n + 1, K)
    size = inst.shape[-1]
    px = (out["attr_points"] * size).long().clamp_(0, size - 1)  # (N, 2) x, y
    obj = inst[:, px[:, 1], px[:, 0]].long()  # (B, N)
    labels = torch.gather(table, 1, obj[..., None].expand(-1, -1, table.shape[-1]))  # (B, N, K)
    logits = out["attr_logits"].split(crit.attr_classes, -1)
    fg = (obj > 0).flatten()
    total = 0.0
    for k, lg in enumerate(logits):
        lab = labels[..., k].flatten()
        ce = F.cross_entropy(lg.flatten(0, 1), lab, ignore_index=-100, reduction="none")
        known = lab != -100
        for part in (fg & known, ~fg & known):
            total = total + 0.5 * (ce * part).sum() / part.sum().clamp_min(1)
    return {"attr": total / len(logits)}


def padding_valid(metas: list[dict], size: int, device) -> torch.Tensor:
    """(B, size, size) bool: True on the image, False on the padding added by ResizePad."""
    v = torch.zeros(len(metas), size, size, dtype=torch.bool, device=device)
    for i, m in enumerate(metas):
        h, w = m["valid"]
        v[i, :h, :w] = True
    return v
