"""MagNet's cross-modal alignment loss (docs/methods.md): pixel-to-pixel and pixel-to-text
contrastive terms on the mask features, with their model part.

* :class:`AlignmentOutputs` -- the part (registered as ``cal_text``): in training it hands the loss
  the mask features and, for the pixel-to-text term, the sentence projected to their width.
* :func:`alignment_loss` -- the loss (registered as ``alignment``; terms ``cal_p2p``, ``cal_p2t``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentOutputs(nn.Module):
    """``p2t``: a linear map of the sentence (d) to the mask features' width, whose parameters are
    this module's own ``weight`` / ``bias`` (a Linear's initialisation)."""

    def __init__(self, d: int, feature_dim: int, p2t: bool):
        super().__init__()
        if p2t:
            lin = nn.Linear(d, feature_dim)
            self.weight, self.bias = lin.weight, lin.bias
        self.p2t = p2t

    @classmethod
    def from_config(cls, cfg: dict, ctx) -> "AlignmentOutputs | None":
        """On when loss.align has a p2p or p2t weight; the features' width is the mask branch's."""
        a = cfg["loss"]["align"]
        if not (a["p2p"] or a["p2t"]):
            return None
        pixel_decoder = ctx.parts.get("pixel_decoder")
        width = pixel_decoder.mask_dim if pixel_decoder is not None else ctx.parts["mask_head"].k
        return cls(cfg["model"]["d_model"], width, bool(a["p2t"]))

    def training_outputs(self, st) -> dict:
        """Hook (training): ``cal_pixels`` the final mask's features (B, C, h, w); ``cal_text`` (B, C)."""
        out = {"cal_pixels": st.pixels}
        if self.p2t:
            out["cal_text"] = F.linear(st.sentence, self.weight, self.bias)
        return out


def alignment_loss(crit, out: dict, batch: dict, ctx) -> dict:
    """MagNet's cross-modal alignment loss on the L2-normalised mask features e (B, C, h, w); the
    mask and the padding are read at that resolution (a pixel is inside when over half of it is).
    Each sample draws up to ``points`` pixels inside the mask (P) and outside it (N, padding
    excluded). Pixel-to-text: for p in P, -log(exp(e_p.t / T) / (exp(e_p.t / T) + sum_N exp(e_n.t / T)))
    with t the projected sentence; pixel-to-pixel: for anchors a != p in P, the same with
    e_a.e_p against e_a.e_n. Averaged over each sample's terms, summed over samples / norm."""
    cfg = crit.loss_cfg["align"]
    masks, valid, norm = ctx.targets, ctx.valid, ctx.norm
    e = F.normalize(out["cal_pixels"].flatten(2).transpose(1, 2), dim=-1)  # (B, hw, C)
    hw = out["cal_pixels"].shape[-2:]
    inside = F.adaptive_avg_pool2d(masks[:, None].float(), hw).flatten(1) > 0.5
    ok = F.adaptive_avg_pool2d(valid[:, None].float(), hw).flatten(1) > 0.5
    k, tau = min(int(cfg["points"]), e.shape[1]), cfg["temperature"]
    r = torch.rand(inside.shape, device=e.device)

    def draw(sel):  # up to k pixels of ``sel`` per sample: their embeddings and which are real
        idx = (r + 2 * sel).topk(k, 1).indices
        return torch.gather(e, 1, idx[..., None].expand(-1, -1, e.shape[-1])), torch.gather(sel, 1, idx)
    ep, p_ok = draw(inside & ok)
    en, n_ok = draw(~inside & ok)
    terms = {}
    if cfg["p2t"]:
        t = F.normalize(out["cal_text"], dim=-1)[:, :, None]  # (B, C, 1)
        terms["cal_p2t"] = info_nce((ep @ t)[..., 0] / tau, (en @ t)[..., 0] / tau, p_ok, n_ok, norm)
    if cfg["p2p"]:
        pairs = p_ok[:, :, None] & p_ok[:, None, :] & ~torch.eye(k, dtype=torch.bool, device=e.device)
        terms["cal_p2p"] = info_nce(ep @ ep.transpose(1, 2) / tau, ep @ en.transpose(1, 2) / tau, pairs,
                                    n_ok[:, None, :].expand(-1, k, -1), norm)
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
