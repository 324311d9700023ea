"""MSDeformAttn: multi-scale deformable attention whose sampling can be conditioned on language.

The query predicts, per head, level and point, a sampling offset and an attention weight; the
op ``ssrvg_ext.ops.ms_deform_attn`` samples the value maps there. With ``d_lang`` set, the query
first gathers language context -- word features (with their padding mask) through a small
cross-attention, or one sentence vector -- and adds it through a learned gate, so *where* the
module looks depends on the expression (cross-modal deformable attention).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import ms_deform_attn


def level_scale(spatial_shapes: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(L, 2) rows (1 / W, 1 / H) on ``device``. CPU shapes (as FusionEncoder makes them) reach a
    GPU through pinned memory and a non-blocking copy: no host synchronisation."""
    inv = 1 / spatial_shapes.flip(-1).to(torch.float64)
    if inv.device == device or device.type != "cuda":
        return inv.to(device, dtype)
    return inv.to(dtype).pin_memory().to(device, non_blocking=True)


class MSDeformAttn(nn.Module):
    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 d_lang: int | None = None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.d_lang = d_lang
        if d_lang is not None:
            self.lang_key = nn.Linear(d_lang, d_model)
            self.lang_value = nn.Linear(d_lang, d_model)
            self.lang_gate = nn.Linear(2 * d_model, d_model)
        # 0/1 matrix that copies a query's (level, x/y) reference coordinate to each of its
        # (head, level, point, x/y) sampling locations: one small matmul instead of a broadcast add
        # over two size-1 dims, which is slow on CPU.
        rows = torch.arange(n_levels * 2).view(1, n_levels, 1, 2).expand(n_heads, -1, n_points, -1).flatten()
        self.register_buffer("ref_spread", F.one_hot(rows, n_levels * 2).T.float().contiguous(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self):
        # Offsets start on rays in n_heads directions, k pixels out for point k (Deformable DETR's init).
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        for lin in (self.attention_weights,):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def condition(self, query: torch.Tensor, lang: torch.Tensor, lang_mask: torch.Tensor | None) -> torch.Tensor:
        """query + gate * language context. lang: (N, T, d_lang) words (lang_mask True = padding) or
        (N, d_lang) one sentence vector."""
        if lang.dim() == 2:
            ctx = self.lang_value(lang).unsqueeze(1).expand_as(query)
        else:
            mask = None if lang_mask is None else ~lang_mask[:, None, :]  # True = attend
            ctx = F.scaled_dot_product_attention(query, self.lang_key(lang), self.lang_value(lang), attn_mask=mask)
        gate = torch.sigmoid(self.lang_gate(torch.cat([query, ctx], -1)))
        return query + gate * ctx

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                value_padding_mask: torch.Tensor | None = None, lang: torch.Tensor | None = None,
                lang_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (N, Lq, C); reference_points (N, Lq, L, 2) normalised (x, y) or (N, Lq, L, 4) boxes
        (cx, cy, w, h); value (N, S, C) flattened levels; value_padding_mask (N, S) True = padding.
        Returns (N, Lq, C)."""
        n, lq, _ = query.shape
        m, nl, p = self.n_heads, self.n_levels, self.n_points
        if lang is not None:
            if self.d_lang is None:
                raise ValueError("this MSDeformAttn was built without d_lang; it cannot take language input")
            query = self.condition(query, lang, lang_mask)
        v = self.value_proj(value)
        if value_padding_mask is not None:
            v = v.masked_fill(value_padding_mask[..., None], 0.0)
        v = v.view(n, value.shape[1], m, self.d_model // m)
        weights = self.attention_weights(query).view(n, lq, m, nl * p).softmax(-1).view(n, lq, m, nl, p)
        if reference_points.shape[-1] == 2:
            # loc = reference + offset / (W, H) of the level: the scale is folded into the offset
            # layer and the reference added by ref_spread, both dense; float32 even under autocast.
            scale = level_scale(spatial_shapes, query.device, query.dtype)[None, :, None, :].expand(m, nl, p, 2).reshape(-1)
            off = F.linear(query, self.sampling_offsets.weight * scale[:, None], self.sampling_offsets.bias * scale)
            dt = torch.promote_types(off.dtype, torch.float32)
            with torch.autocast(query.device.type, enabled=False):
                loc = torch.addmm(off.reshape(n * lq, -1).to(dt), reference_points.reshape(n * lq, nl * 2).to(dt),
                                  self.ref_spread.to(dt))
            loc = loc.view(n, lq, m, nl, p, 2)
        elif reference_points.shape[-1] == 4:
            offsets = self.sampling_offsets(query).view(n, lq, m, nl, p, 2)
            ref = reference_points[:, :, None, :, None, :]
            loc = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 (points) or 4 (boxes); got {tuple(reference_points.shape)}")
        out = ms_deform_attn(v, spatial_shapes, level_start_index, loc, weights)  # loc may stay float32
        return self.output_proj(out)
