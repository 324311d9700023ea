"""MagNet's mask grounding (training only, docs/methods.md): some of the expression's tokens are
masked; a small head predicts them from the unmasked words, the visual features and the
ground-truth mask given as an input, with cross-entropy over the tokenizer's vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLP, Attention


def mask_tokens(ids: torch.Tensor, text_mask: torch.Tensor, mask_id: int, ratio: float, replace: float):
    """BERT-style corruption: every real token but the first and the last ([CLS], [SEP]) is chosen
    with probability ``ratio``; a chosen token becomes ``mask_id`` with probability ``replace`` and
    stays itself otherwise. Returns the corrupted ids and the targets (-100 where not chosen)."""
    inner = text_mask.clone()
    inner[:, 0] = False
    last = text_mask.long().sum(1, keepdim=True).clamp_min(1) - 1
    inner.scatter_(1, last, False)
    chosen = inner & (torch.rand(ids.shape, device=ids.device) < ratio)
    swap = chosen & (torch.rand(ids.shape, device=ids.device) < replace)
    return torch.where(swap, torch.full_like(ids, mask_id), ids), torch.where(chosen, ids, torch.full_like(ids, -100))


class MaskGrounding(nn.Module):
    """Masked words (B, T, d) attend to the visual tokens (B, d, H, W) plus an embedding of the
    ground-truth mask's cover of each token, then to each other (one layer each, with an FFN); an
    MLM head (dense, GELU, LayerNorm, vocabulary) predicts every token."""

    def __init__(self, d: int, heads: int, vocab_size: int, mask_id: int, ratio: float, replace: float):
        super().__init__()
        self.mask_id, self.ratio, self.replace = mask_id, ratio, replace
        self.mask_embed = nn.Conv2d(1, d, 1)
        self.cross = Attention(d, heads)
        self.self_attn = Attention(d, heads)
        self.ffn = MLP(d, 2 * d, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(3))
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, vocab_size))

    @classmethod
    def from_config(cls, cfg: dict, ctx) -> "MaskGrounding | None":
        """model.mask_grounding (None unless enabled); the vocabulary and its mask token are the tokenizer's."""
        g = cfg["model"]["mask_grounding"]
        if not g["enabled"]:
            return None
        if ctx.mask_token_id is None:
            raise ValueError("model.mask_grounding needs the tokenizer's mask token: build_model(..., mask_token_id=tok.mask_id)")
        return cls(cfg["model"]["d_model"], cfg["model"]["fusion"]["heads"], ctx.vocab_size, ctx.mask_token_id,
                   g["ratio"], g["replace"])

    def corrupt(self, ids: torch.Tensor, text_mask: torch.Tensor):
        return mask_tokens(ids, text_mask, self.mask_id, self.ratio, self.replace)

    def training_outputs(self, st) -> dict:
        """Hook (training): the corrupted expression encoded again, its tokens predicted from the
        visual tokens of the finest level and the ground-truth mask (``mg_logits``, ``mg_targets``);
        nothing when the forward was not given the masks. The visual tokens are those of the images
        read with the corrupted expression (``st.reencode``): with language inside the backbone, the
        levels of the main pass were fused with the words that are masked here and would give them
        away."""
        if st.gt_masks is None:
            return {}
        ids, targets = self.corrupt(st.text_ids, st.text_mask)
        levels, masked_words = st.reencode(ids)
        n0 = levels[0].shape[-2] * levels[0].shape[-1]
        return {"mg_logits": self(masked_words, st.word_pad, levels[0], st.pos[:n0], st.gt_masks), "mg_targets": targets}

    def forward(self, words: torch.Tensor, word_pad: torch.Tensor, visual: torch.Tensor, pos: torch.Tensor,
                gt_masks: torch.Tensor) -> torch.Tensor:
        """words: the masked expression's (B, T, d); visual (B, d, H, W) with positions pos (HW, d);
        gt_masks (B, S, S). Returns vocabulary logits (B, T, V)."""
        cover = F.adaptive_avg_pool2d(gt_masks[:, None].to(visual.dtype), visual.shape[-2:])
        v = (visual + self.mask_embed(cover)).flatten(2).transpose(1, 2)
        n1, n2, n3 = self.norms
        x = n1(words + self.cross(words, v + pos, v))
        x = n2(x + self.self_attn(x, x, x, key_padding_mask=word_pad))
        return self.head(n3(x + self.ffn(x)))


def mask_grounding_loss(crit, out: dict, batch: dict, ctx) -> dict:
    """``mg``: cross-entropy of the masked tokens, averaged over them (0 when none was chosen)."""
    logits, targets = out["mg_logits"], out["mg_targets"]
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    return {"mg": ce / (targets != -100).sum().clamp_min(1)}
