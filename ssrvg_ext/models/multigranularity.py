"""SgMg's segment-and-optimise mask head (docs/methods.md): dynamic kernels segment the fusion
encoder's memory directly (no pixel decoder) into a K-channel coarse mask at stride 8; the
multi-granularity segment optimiser refines it with the raw backbone features at strides 8 and 4.
Sub-pixel layout: K = 16 channels at stride s are a 1-channel mask at stride s / 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import MLP
from .heads import MaskHead, kernel_input, with_box_coords


def residual_block(k: int, c: int) -> nn.Sequential:
    """ReLU, 3x3 conv (K + C -> K), ReLU, 3x3 conv (K -> K): the refinement added to the mask."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(k + c, k, 3, padding=1), nn.ReLU(), nn.Conv2d(k, k, 3, padding=1))


class MultiGranularityHead(nn.Module):
    """queries (B, Q, d) -> two dynamic 1x1 convs ((d + 3) -> K, ReLU, K -> K) applied to the sum of
    the memory levels at strides 8, 16, 32 (resized to stride 8) and the coordinates relative to the
    box: the coarse K-channel mask at stride 8 (a 1-channel mask at stride 2). Then the optimiser:
    x += block([x, raw stride-8]); x = upsample x2; x += block([x, raw stride-4]): K channels at
    stride 4, the refined mask at stride 1."""

    def __init__(self, d: int, c8: int, c4: int, channels: int = 16, box_coords: bool = True):
        super().__init__()
        if channels != 16:
            raise ValueError("the 4 x 4 sub-pixel layout needs 16 channels")
        self.k, self.box_coords = channels, box_coords
        extra = 3 if box_coords else 0  # without: the box is no input (box-to-mask supervision)
        self.sizes = [(d + extra) * channels, channels, channels * channels, channels]  # w1, b1, w2, b2
        self.kernel = MLP(2 * d, d, sum(self.sizes), 3)
        self.block8, self.block4 = residual_block(channels, c8), residual_block(channels, c4)

    @staticmethod
    def features(fused: list[torch.Tensor], raw8: torch.Tensor, raw4: torch.Tensor):
        """What every decoder layer's mask reads (computed once per forward): the memory levels at
        strides 8, 16, 32 summed at stride 8 (bicubic), and the raw stride-8 and stride-4 maps."""
        size = fused[0].shape[-2:]
        mem = fused[0] + sum(F.interpolate(f, size=size, mode="bicubic", align_corners=False) for f in fused[1:3])
        return mem, raw8, raw4

    def forward(self, queries: torch.Tensor, features: tuple, boxes: torch.Tensor):
        """features: :meth:`features`. Returns the refined mask logits (B, 4 h4, 4 w4), the coarse
        ones (B, 4 h8, 4 w8) and the K-channel stride-4 features."""
        mem, raw8, raw4 = features
        feats = with_box_coords(mem, boxes) if self.box_coords else mem
        w1, b1, w2, b2 = self.kernel(kernel_input(queries)).split(self.sizes, -1)
        b, k = queries.shape[0], self.k
        x = F.relu(torch.einsum("bkc,bchw->bkhw", w1.view(b, k, -1), feats) + b1[:, :, None, None])
        x = torch.einsum("bkj,bjhw->bkhw", w2.view(b, k, k), x) + b2[:, :, None, None]
        coarse = F.pixel_shuffle(x, 4)
        x = x + self.block8(torch.cat([x, raw8.to(x.dtype)], 1))
        x = F.interpolate(x, size=raw4.shape[-2:], mode="bilinear", align_corners=False)
        x = x + self.block4(torch.cat([x, raw4.to(x.dtype)], 1))
        return F.pixel_shuffle(x, 4)[:, 0], coarse[:, 0], x


def mask_head_from_config(cfg: dict, ctx) -> MaskHead | MultiGranularityHead:
    """The model's mask head: :class:`~.heads.MaskHead` on the pixel decoder's map, or SgMg's
    segment-and-optimise head with model.segment_optimizer (its raw maps' channels from the backbone);
    either with the box-relative coordinates as model.mask_box_coords says (auto: not under
    loss.box_to_mask)."""
    m = cfg["model"]
    coords = m["mask_box_coords"]
    if coords not in ("auto", True, False):
        raise ValueError(f"model.mask_box_coords must be auto, true or false; got {coords!r}")
    if coords == "auto":
        coords = not cfg["loss"]["box_to_mask"]  # box-to-mask supervision: the mask must not see the box (SegVG)
    if m["segment_optimizer"]:
        channels = ctx.parts["backbone"].stage_channels
        return MultiGranularityHead(m["d_model"], channels[1], channels[0], box_coords=coords)
    return MaskHead(m["d_model"], m["mask_dim"], box_coords=coords)
