"""Interaction between the frames of a clip (referring video segmentation, docs/video.md).

The per-frame model sees one frame at a time; these modules see the clip. Rows of a batch are
clip-major: B clips of T frames are B * T rows, frame t of clip b at row b * T + t.

* :class:`TemporalLayer` on the fused memory of every level: a depthwise 3x3x3 convolution over
  (time, y, x) -- the local motion at each place --, attention across the T frames at each position
  (with a sinusoidal frame-index embedding, so "before" and "after" differ), attention from every
  position to the words (so the motion words meet the motion features), and a feed-forward block;
  each a residual with its LayerNorm.
* :class:`QueryLink` on the decoder's final queries: each query attends to the same query in every
  frame of its clip, so the mask kernels of one expression agree across the clip (one object is
  followed).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .attention import MLP, Attention


def frame_embedding(t: int, d: int, device, dtype) -> torch.Tensor:
    """(T, d) sinusoidal embedding of the frame index within the clip."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(100.0) / d))
    emb = torch.zeros(t, d, device=device)
    emb[:, 0::2], emb[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div[: d // 2])
    return emb.to(dtype)


def across_time(attn: Attention, x: torch.Tensor, t: int) -> torch.Tensor:
    """x (B*T, N, C), clip-major: each of the N tokens attends to itself in the T frames of its
    clip (queries and keys carry the frame embedding, values do not). Returns (B*T, N, C)."""
    bt, n, c = x.shape
    seq = x.reshape(bt // t, t, n, c).transpose(1, 2).reshape(-1, t, c)
    qk = seq + frame_embedding(t, c, x.device, x.dtype)
    return attn(qk, qk, seq).reshape(bt // t, n, t, c).transpose(1, 2).reshape(bt, n, c)


class TemporalLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.motion = nn.Conv3d(d, d, 3, padding=1, groups=d)
        self.motion_proj = nn.Linear(d, d)
        self.time_attn, self.word_attn = Attention(d, heads), Attention(d, heads)
        self.ffn = MLP(d, ffn, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))
        nn.init.zeros_(self.motion_proj.weight)  # starts as the per-frame model
        nn.init.zeros_(self.motion_proj.bias)

    def forward(self, x, shapes: list[tuple[int, int]], words, word_pad, t: int):
        """x (B*T, N, C) memory of all levels; shapes the levels' (h, w); words (B*T, L, C)."""
        bt, _, c = x.shape
        parts = []
        for lvl, (h, w) in zip(x.split([h * w for h, w in shapes], 1), shapes):
            vol = lvl.reshape(bt // t, t, h, w, c).permute(0, 4, 1, 2, 3)  # (B, C, T, h, w)
            parts.append(self.motion(vol).permute(0, 2, 3, 4, 1).reshape(bt, h * w, c))
        x = self.norms[0](x + self.motion_proj(torch.cat(parts, 1)))
        x = self.norms[1](x + across_time(self.time_attn, x, t))
        x = self.norms[2](x + self.word_attn(x, words, words, word_pad))
        return self.norms[3](x + self.ffn(x))


class TemporalEncoder(nn.Module):
    """``layers`` :class:`TemporalLayer` s after the fusion encoder, on the memory's levels from
    ``first_level`` on (0: every level; 1: not the finest, stride 4, which holds 3/4 of the tokens);
    the levels before it pass through unchanged."""

    def __init__(self, d: int, layers: int, heads: int, ffn: int, first_level: int = 0):
        super().__init__()
        if first_level < 0:
            raise ValueError(f"first_level must be >= 0, got {first_level}")
        self.first_level = first_level
        self.layers = nn.ModuleList(TemporalLayer(d, heads, ffn) for _ in range(layers))

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "TemporalEncoder | None":
        """model.temporal.layers (0: None, the per-frame model), model.temporal.first_level."""
        tm = cfg["model"]["temporal"]
        return (cls(cfg["model"]["d_model"], tm["layers"], tm["heads"], tm["ffn"], tm["first_level"])
                if tm["layers"] else None)

    def refine_memory(self, memory, st):
        """Hook (after the fusion encoder): the memory mixed across the frames of each clip (clips only)."""
        return self(memory, st.sizes, st.words, st.word_pad, st.clip_len) if st.clip_len else memory

    def forward(self, memory, shapes: list[tuple[int, int]], words, word_pad, t: int):
        """shapes: the levels' (h, w) as Python ints (no device round trip per layer)."""
        if memory.shape[0] % t:
            raise ValueError(f"{memory.shape[0]} frames are not whole clips of {t}")
        if self.first_level >= len(shapes):
            raise ValueError(f"first_level (model.temporal.first_level) {self.first_level} leaves none of the "
                             f"{len(shapes)} levels to the temporal layers")
        skip = sum(h * w for h, w in shapes[: self.first_level])
        kept, shapes = memory[:, skip:], shapes[self.first_level:]
        for layer in self.layers:
            kept = layer(kept, shapes, words, word_pad, t)
        return torch.cat([memory[:, :skip], kept], 1) if skip else kept


class QueryLink(nn.Module):
    """Each query attends to itself in every frame of its clip (residual, LayerNorm)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.attn, self.norm = Attention(d, heads), nn.LayerNorm(d)

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "QueryLink | None":
        """model.temporal.link_queries."""
        tm = cfg["model"]["temporal"]
        return cls(cfg["model"]["d_model"], tm["heads"]) if tm["link_queries"] else None

    def refine_queries(self, q: torch.Tensor, st) -> torch.Tensor:
        """Hook (before the mask head): the final queries linked across each clip (clips only)."""
        return self(q, st.clip_len) if st.clip_len else q

    def forward(self, q: torch.Tensor, t: int) -> torch.Tensor:  # (B*T, Q, C)
        return self.norm(q + across_time(self.attn, q, t))
