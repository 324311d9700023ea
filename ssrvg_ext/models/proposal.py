"""Language-conditioned token proposals (two-stage query selection).

Every fused pixel token gets a score -- how well it matches the sentence -- and a box relative to
its own anchor (its centre, a level-sized square). The best-scoring token's box and feature start
the decoder, so the first decoder layer already looks at the right place. Both are supervised
densely (tokens inside the ground-truth box are positives), which is what makes training converge
in minutes rather than hours.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import MLP
from .position import inverse_sigmoid, token_centres


def token_anchors(shapes: torch.Tensor, device) -> torch.Tensor:
    """(S, 4) cx, cy, w, h anchors of the flattened tokens of all levels."""
    out = []
    for lvl, (h, w) in enumerate(shapes.tolist()):
        c = token_centres(h, w, device)
        out.append(torch.cat([c, torch.full_like(c, 0.05 * 2**lvl)], -1))
    return torch.cat(out)


class TokenProposals(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.key = nn.Linear(d, d)
        self.query = nn.Linear(d, d)
        self.box = MLP(d, d, 4, 3)
        self.norm = nn.LayerNorm(d)

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "TokenProposals | None":
        """model.proposals: on, or None (the decoder then starts from the sentence)."""
        return cls(cfg["model"]["d_model"]) if cfg["model"]["proposals"] else None

    def forward(self, memory: torch.Tensor, sentence: torch.Tensor, shapes: torch.Tensor) -> dict:
        mem = self.norm(memory)
        scores = torch.einsum("bsc,bc->bs", self.key(mem), self.query(sentence)) / mem.shape[-1] ** 0.5
        anchors = token_anchors(shapes, memory.device)
        boxes = torch.sigmoid(inverse_sigmoid(anchors)[None] + self.box(mem))
        best = scores.argmax(1)
        idx = torch.arange(memory.shape[0], device=memory.device)
        return {"scores": scores, "boxes": boxes, "anchors": anchors, "best_box": boxes[idx, best],
                "best_feature": mem[idx, best]}
