"""RES decoder: FPN pixel decoder to stride 4 and dynamic mask kernels from the queries."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLP


class PixelDecoder(nn.Module):
    """Top-down FPN over the fused levels (strides 8..64) plus the backbone's stride-4 map and, with
    ``stride=2`` (model.mask_stride), its stride-2 map: masks at half the input's resolution. The
    stride-2 map joins after the stride-4 output (added to it upsampled, then a ReLU): the detail of
    the finer map at the cost of a few per-pixel operations, no convolution at stride 2 (a 1x1 one
    would be redundant: the mask head's dynamic kernel is a 1x1 convolution already)."""

    def __init__(self, d: int, mask_dim: int, levels: int, stride: int = 4):
        super().__init__()
        self.mask_dim = mask_dim
        self.lateral = nn.ModuleList(nn.Conv2d(d, mask_dim, 1) for _ in range(levels))
        self.smooth = nn.Sequential(nn.Conv2d(mask_dim, mask_dim, 3, padding=1), nn.GroupNorm(8, mask_dim), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(mask_dim, mask_dim, 3, padding=1), nn.GroupNorm(8, mask_dim), nn.ReLU(),
                                 nn.Conv2d(mask_dim, mask_dim, 1))
        self.out2 = nn.ReLU() if stride == 2 else None

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "PixelDecoder | None":
        """None with SgMg's head (model.segment_optimizer), which reads the memory directly."""
        m = cfg["model"]
        return None if m["segment_optimizer"] else cls(m["d_model"], m["mask_dim"], m["levels"], m["mask_stride"])

    def forward(self, fused: list[torch.Tensor], fine: list[torch.Tensor]) -> torch.Tensor:
        """fine: the backbone's projected maps, [stride 4] or [stride 4, stride 2]."""
        if len(fine) != (2 if self.out2 is not None else 1):
            raise ValueError(f"the pixel decoder was built for {2 if self.out2 is not None else 1} fine map(s), "
                             f"got {len(fine)}")
        x = self.lateral[-1](fused[-1])
        for lat, f in zip(list(self.lateral)[-2::-1], fused[-2::-1]):
            x = lat(f) + F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False)
        x = self.out(fine[0] + F.interpolate(self.smooth(x), size=fine[0].shape[-2:], mode="bilinear", align_corners=False))
        if self.out2 is None:
            return x
        return self.out2(fine[1] + F.interpolate(x, size=fine[1].shape[-2:], mode="bilinear", align_corners=False))


def box_coords(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, 3, h, w) pixel coordinates relative to each box (cx, cy, w, h normalised): dx / w, dy / h
    and the box-normalised L-inf distance (1 on the box outline)."""
    ys = (torch.arange(h, device=boxes.device, dtype=boxes.dtype) + 0.5) / h
    xs = (torch.arange(w, device=boxes.device, dtype=boxes.dtype) + 0.5) / w
    dx = (xs[None, None, :] - boxes[:, 0, None, None]) / boxes[:, 2, None, None].clamp_min(1e-3)
    dy = (ys[None, :, None] - boxes[:, 1, None, None]) / boxes[:, 3, None, None].clamp_min(1e-3)
    dx, dy = dx.expand(-1, h, w), dy.expand(-1, h, w)
    return torch.stack([dx, dy, 2 * torch.maximum(dx.abs(), dy.abs())], 1)


def kernel_input(queries: torch.Tensor) -> torch.Tensor:
    """(B, 2d): the box query beside the mean of the mask queries (the box query again without any),
    what the mask heads' dynamic kernels are predicted from."""
    box_q = queries[:, 0]
    mask_q = queries[:, 1:].mean(1) if queries.shape[1] > 1 else box_q
    return torch.cat([box_q, mask_q], -1)


class MaskHead(nn.Module):
    """Mask logits = <kernel(queries), [pixel features, coordinates relative to the predicted box]>:
    the box query and the pooled mask queries produce one dynamic 1x1 kernel per expression; the
    relative coordinates (as in CondInst) tell it which instance the kernel is about. Without
    ``box_coords`` the mask is read from the pixel features alone (the box is not an input: under
    box-to-mask supervision a box input would make the target a function of it, SegVG)."""

    def __init__(self, d: int, mask_dim: int, box_coords: bool = True):
        super().__init__()
        self.box_coords = box_coords
        self.kernel = MLP(2 * d, d, mask_dim + (3 if box_coords else 0), 3)

    def forward(self, queries: torch.Tensor, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        k = self.kernel(kernel_input(queries))
        return torch.einsum("bc,bchw->bhw", k, with_box_coords(pixels, boxes) if self.box_coords else pixels)


def with_box_coords(feats: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """feats (B, C, h, w) with the 3 box-relative coordinate channels appended (the box detached)."""
    return torch.cat([feats, box_coords(boxes.detach().to(feats.dtype), *feats.shape[-2:])], 1)
