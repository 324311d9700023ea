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

    def corrupt(self, ids: torch.Tensor, text_mask: torch.Tensor):
        return mask_tokens(ids, text_mask, self.mask_id, self.ratio, self.replace)

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
