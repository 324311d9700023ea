"""RES decoder: FPN pixel decoder to stride 4 and dynamic mask kernels from the queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .position import MLP


class PixelDecoder(nn.Module):
    """Top-down FPN over the fused levels (strides 8..64) plus the backbone's stride-4 map."""

    def __init__(self, d: int, mask_dim: int, levels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(d, mask_dim, 1) for _ in range(levels))
        self.smooth = nn.Sequential(nn.Conv2d(mask_dim, mask_dim, 3, padding=1), nn.GroupNorm(8, mask_dim), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(mask_dim, mask_dim, 3, padding=1), nn.GroupNorm(8, mask_dim), nn.ReLU(),
                                 nn.Conv2d(mask_dim, mask_dim, 1))

    def forward(self, fused: list[torch.Tensor], f4: torch.Tensor) -> torch.Tensor:
        x = self.lateral[-1](fused[-1])
        for lat, f in zip(list(self.lateral)[-2::-1], fused[-2::-1]):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
        x = self.smooth(x)
        x = f4 + F.interpolate(x, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(x)


class MaskHead(nn.Module):
    """Mask logits = <kernel(queries), pixel features>: the box query and the pooled mask queries
    together produce one dynamic 1x1 kernel per expression."""

    def __init__(self, d: int, mask_dim: int):
        super().__init__()
        self.kernel = MLP(2 * d, d, mask_dim, 3)

    def forward(self, queries: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        box_q = queries[:, 0]
        mask_q = queries[:, 1:].mean(1) if queries.shape[1] > 1 else box_q
        k = self.kernel(torch.cat([box_q, mask_q], -1))
        return torch.einsum("bc,bchw->bhw", k, pixels)
