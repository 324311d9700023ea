"""The two contracts between the parts of the library, as typed dicts: what the loaders give the
model and the criterion (:class:`Batch`) and what the model returns (:class:`ModelOutputs`).

Shapes: B rows, one per expression (clips: B = clips x T frames, clip-major); B_img images (B_img =
B unless several expressions share an image); S the input size; T the token count; L decoder layers;
Q the queries (1 box query + the mask queries); N visual tokens of the two finest levels.
"""

from __future__ import annotations

from typing import TypedDict

import torch


class Batch(TypedDict, total=False):
    """A batch as :class:`~ssrvg_ext.data.dataset.Collate` (images) or
    :class:`~ssrvg_ext.data.clips.ClipCollate` (clips) makes it."""
    images: torch.Tensor        # (B_img, 3, S, S) float, normalised; always
    text_ids: torch.Tensor      # (B, T) int64; always
    text_mask: torch.Tensor     # (B, T) bool, True = token; always
    boxes: torch.Tensor         # (B, 4) float, cx, cy, w, h in [0, 1] of the padded input; always
    masks: torch.Tensor         # (B, S, S) uint8 ground truth (box-only sets: the box filled); always
    meta: list[dict]            # B dicts: index, sent_id, text, orig_size, scale, valid, input_size; always
    image_index: torch.Tensor   # (B,) int64, the row of ``images`` of each expression; data.exprs_per_image > 1
    instances: torch.Tensor     # (B_img, S, S) uint8 object index per pixel (0: none); data.aux_labels
    inst_labels: torch.Tensor   # (B_img, objects + 1, K) int64 label values (-100: unknown); data.aux_labels
    box_valid: torch.Tensor     # (B,) bool, the object is visible in the frame; clips
    clip_len: int               # T frames per clip; clips
    clips: list[dict]           # one meta per clip (index, frames, own); clips
    labeled: torch.Tensor       # (B,) bool, the frame has a ground truth; clips with unlabeled frames (A2D / JHMDB)
    num_labeled: int            # how many frames are labeled; with ``labeled``


class ModelOutputs(TypedDict, total=False):
    """What :meth:`~ssrvg_ext.models.SSRVG.forward` returns (the training-only keys in training mode)."""
    boxes: torch.Tensor               # (B, 4) the last layer's box, cx, cy, w, h in [0, 1]; always
    aux_boxes: torch.Tensor           # (L - 1, B, 4) the earlier layers' boxes; always
    mask_logits: torch.Tensor         # (B, S/4, S/4) (SgMg's head: (B, S, S)) mask logits; always
    proposal_scores: torch.Tensor     # (B, S_total) every token's match with the sentence; model.proposals
    proposal_boxes: torch.Tensor      # (B, S_total, 4) every token's box; model.proposals
    anchors: torch.Tensor             # (S_total, 4) the tokens' anchors; model.proposals
    clip_score: torch.Tensor          # (B,) the chosen hypothesis' class probability; model.clip_queries
    clip_scores: torch.Tensor         # (N, B) every hypothesis' class logit; model.clip_queries, training
    clip_hypotheses: dict             # {head output: (N, ...) per hypothesis}; model.clip_queries, training
    aux_mask_logits: torch.Tensor     # (L - 1, B, h, w) the earlier layers' masks; training, mask_every_layer (SegVG)
    coarse_mask_logits: torch.Tensor  # (B, S/2, S/2) SgMg's coarse mask; training, model.segment_optimizer
    aux_coarse_mask_logits: torch.Tensor  # (L - 1, B, S/2, S/2) the earlier layers' coarse masks; training,
    #                                       model.segment_optimizer and mask_every_layer (SgMg)
    attr_logits: torch.Tensor         # (B_img, N, sum of classes) object-label logits; training, data.aux_labels
    attr_points: torch.Tensor         # (N, 2) the tokens' centres (x, y in [0, 1]); with attr_logits
    mg_logits: torch.Tensor           # (B, T, vocabulary) mask grounding's predictions; training, MagNet
    mg_targets: torch.Tensor          # (B, T) int64 the masked tokens (-100 elsewhere); with mg_logits
    cal_pixels: torch.Tensor          # (B, C, h, w) the final mask's features; training, loss.align (MagNet)
    cal_text: torch.Tensor            # (B, C) the projected sentence; training, loss.align.p2t
    cmpc_level_logits: torch.Tensor   # (3, B, S/8, S/8) CMPC's per-level auxiliary masks; training, model.cmpc.aux_masks


__all__ = ["Batch", "ModelOutputs"]
