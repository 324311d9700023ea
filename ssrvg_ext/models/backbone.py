"""Visual backbone: any timm model with ``features_only``, projected to d_model.

Returns the stride-4 map (for the mask decoder, ``mask_dim`` channels) and the multi-scale maps at
strides 8/16/32 plus one extra stride-64 level (``d_model`` channels) for the fusion encoder.
Pretrained weights come only from a local file (``checkpoint``) or timm's local cache
(``pretrained=True`` with the cache filled); nothing is downloaded otherwise.
"""

from __future__ import annotations

import timm
import torch
from torch import nn


class Backbone(nn.Module):
    def __init__(self, name: str, d_model: int, mask_dim: int, pretrained: bool, checkpoint: str | None,
                 timm_kwargs: dict | None):
        super().__init__()
        kwargs = dict(timm_kwargs or {})
        if checkpoint:
            kwargs["pretrained_cfg_overlay"] = dict(file=checkpoint)
        self.body = timm.create_model(name, features_only=True, pretrained=bool(pretrained or checkpoint), **kwargs)
        red, ch = self.body.feature_info.reduction(), self.body.feature_info.channels()
        want = {4: None, 8: None, 16: None, 32: None}
        for i, r in enumerate(red):
            if r in want:
                want[r] = i
        missing = [s for s, i in want.items() if i is None]
        if missing:
            raise ValueError(f"timm model {name!r} has no feature maps at strides {missing} (it has {red})")
        self.index = [want[s] for s in (4, 8, 16, 32)]
        self.nhwc = "NHWC" in str(getattr(self.body, "output_fmt", "NCHW"))  # e.g. timm's Swin
        c4, c8, c16, c32 = (ch[i] for i in self.index)
        self.proj4 = nn.Sequential(nn.Conv2d(c4, mask_dim, 1), nn.GroupNorm(8, mask_dim))
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(8, d_model)) for c in (c8, c16, c32))
        self.extra = nn.Sequential(nn.Conv2d(c32, d_model, 3, stride=2, padding=1), nn.GroupNorm(8, d_model))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = self.body(images)
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        f4, f8, f16, f32 = (feats[i] for i in self.index)
        levels = [p(f) for p, f in zip(self.proj, (f8, f16, f32))] + [self.extra(f32)]
        return self.proj4(f4), levels
