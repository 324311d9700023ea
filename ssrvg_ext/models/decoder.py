"""Query decoder: one box query and K mask queries, all initialised from the sentence. Each layer:
self-attention among the queries, cross-attention to the words, deformable cross-attention to the
fused pixels around the current reference box, FFN; a box head refines the reference box at every
layer (iterative refinement), so every layer predicts a box."""

from __future__ import annotations

import torch
from torch import nn

from .attention import MLP, Attention
from .ms_deform_attn import MSDeformAttn
from .position import box_position, inverse_sigmoid


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, levels: int, points: int, ffn: int):
        super().__init__()
        self.self_attn = Attention(d, heads)
        self.word_attn = Attention(d, heads)
        self.deform = MSDeformAttn(d, levels, heads, points)
        self.ffn = MLP(d, ffn, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(4))

    def forward(self, q, qpos, words, word_pad, memory, ref_boxes, shapes, starts):
        n1, n2, n3, n4 = self.norms
        x = q + qpos
        q = n1(q + self.self_attn(x, x, q))
        q = n2(q + self.word_attn(q + qpos, words, words, key_padding_mask=word_pad))
        ref = ref_boxes[:, :, None, :].expand(-1, -1, shapes.shape[0], -1)
        q = n3(q + self.deform(q + qpos, ref, memory, shapes, starts))
        return n4(q + self.ffn(q))


class QueryDecoder(nn.Module):
    def __init__(self, d: int, layers: int, heads: int, levels: int, points: int, ffn: int, mask_queries: int,
                 proposals: bool):
        super().__init__()
        self.num_queries = 1 + mask_queries
        self.query_embed = nn.Embedding(self.num_queries, d)
        self.from_sentence = nn.Linear(d, d)
        # start boxes: the selected token proposal's, or predicted from the sentence alone
        self.from_proposal = nn.Linear(d, d) if proposals else None
        self.init_box = None if proposals else nn.Linear(d, 4)
        self.layers = nn.ModuleList(DecoderLayer(d, heads, levels, points, ffn) for _ in range(layers))
        self.box_heads = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(layers))
        self.pos_proj = nn.Linear(d, d)
        for h in self.box_heads:
            nn.init.zeros_(h[-1].weight)
            nn.init.zeros_(h[-1].bias)

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "QueryDecoder":
        """model.decoder (its mask_every_layer switch is the model's: :class:`~.ssrvg.SSRVG`)."""
        m = cfg["model"]
        q = {k: v for k, v in m["decoder"].items() if k != "mask_every_layer"}
        return cls(m["d_model"], levels=m["levels"], proposals=m["proposals"], **q)

    def forward(self, sentence, words, word_pad, memory, shapes, starts, init_box=None, init_feature=None,
                init_queries=None):
        """init_box / init_feature (B, 4) / (B, d): the selected proposal that starts every query;
        init_queries (B, Q, d): added to the starting queries (SegVG's aligned queries).
        Returns the queries after every layer (layers, B, Q, d) and the box of the box query at every
        layer (layers, B, 4)."""
        q = self.from_sentence(sentence)[:, None, :] + self.query_embed.weight[None]
        if init_queries is not None:
            q = q + init_queries
        if self.from_proposal is not None:
            q = q + self.from_proposal(init_feature)[:, None, :]
            ref = init_box.detach()[:, None, :].expand(-1, q.shape[1], -1)
        else:
            ref = torch.sigmoid(self.init_box(q))  # (B, Q, 4) cx, cy, w, h
        boxes, queries = [], []
        for layer, head in zip(self.layers, self.box_heads):
            qpos = self.pos_proj(box_position(ref, q.shape[-1]))
            q = layer(q, qpos, words, word_pad, memory, ref, shapes, starts)
            new = torch.sigmoid(inverse_sigmoid(ref) + head(q))
            boxes.append(new[:, 0])
            queries.append(q)
            ref = new.detach()  # each layer refines the last layer's box; gradients stay per layer
        return torch.stack(queries), torch.stack(boxes)
