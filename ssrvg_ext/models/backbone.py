"""Visual backbone: any timm model with ``features_only``, projected to d_model.

Returns the stride-4 map (for the mask decoder, ``mask_dim`` channels; with ``mask_stride=2`` the
stride-2 map too) and the multi-scale maps at strides 8/16/32 plus one extra stride-64 level
(``d_model`` channels) for the fusion encoder.
Pretrained weights come only from a local timm checkpoint file (``checkpoint``: ``.pth``, ``.pt``,
``.bin`` or ``.safetensors``, as timm saves them for the full model); nothing is ever downloaded.
``pretrained=True`` without such a file is an error, so a preset that expects pretrained weights
cannot start from random ones by accident; ``pretrained=False`` trains from scratch.

With ``stage_hooks``, forward hooks on the four stages hand each stage's output to the ``rewrite``
function given to :meth:`Backbone.forward`, which returns what the next stage reads and the feature
the model reads (:class:`~.align.StageAlignment` puts language there): language enters the backbone
without knowing its internals (any ``features_only`` model whose stages are modules).
"""

from __future__ import annotations

import os

import timm
import torch
from torch import nn


WEIGHT_FILES = (".pth", ".pt", ".bin", ".safetensors")


def check_weights_file(path: str | None, name: str) -> None:
    fix = ("; nothing is downloaded. To train the backbone from scratch on purpose, set "
           "model.backbone.pretrained=false")
    if not path:
        raise ValueError(f"model.backbone.pretrained is true but model.backbone.checkpoint is not set: give the path of a "
                         f"timm checkpoint of {name} ({', '.join(WEIGHT_FILES)}){fix}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.backbone.checkpoint={path}: no such file{fix}")
    if not path.endswith(WEIGHT_FILES):
        raise ValueError(f"model.backbone.checkpoint={path}: expected a timm checkpoint file ({', '.join(WEIGHT_FILES)})")


def set_channels_last(body: nn.Module, min_channels: int = 16) -> None:
    """The weights of ``body``'s 2-D convolutions with at least ``min_channels`` input channels made
    channels-last: a convolution whose weight is channels-last gives a channels-last output, which the
    layers after it keep, so the body runs channels-last from its first such convolution on (its
    features come out channels-last; the values are those of the default layout up to float rounding).
    So laid out, depthwise convolutions' backward runs ~3x faster on CPUs; the narrow stem stays as it
    is (batch norm's backward over 8 channels is slower channels-last than in the default layout)."""
    for m in body.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels >= min_channels:
            m.to(memory_format=torch.channels_last)


class Backbone(nn.Module):
    def __init__(self, name: str, d_model: int, mask_dim: int | None, pretrained: bool, checkpoint: str | None,
                 timm_kwargs: dict | None, stage_hooks: bool = False, mask_stride: int = 4,
                 channels_last: bool = False):
        super().__init__()
        kwargs = dict(timm_kwargs or {})
        if pretrained:
            check_weights_file(checkpoint, name)
            kwargs["pretrained_cfg_overlay"] = dict(file=checkpoint)  # timm reads the file: no download
        self.body = timm.create_model(name, features_only=True, pretrained=bool(pretrained), **kwargs)
        red, ch = self.body.feature_info.reduction(), self.body.feature_info.channels()
        want = {4: None, 8: None, 16: None, 32: None}
        for i, r in enumerate(red):
            if r in want:
                want[r] = i
        missing = [s for s, i in want.items() if i is None]
        if missing:
            raise ValueError(f"timm model {name!r} has no feature maps at strides {missing} (it has {red})")
        if mask_stride not in (2, 4):
            raise ValueError(f"model.mask_stride must be 4 or 2, got {mask_stride}")
        if mask_stride == 2 and 2 not in red:
            raise ValueError(f"model.mask_stride=2 needs a stride-2 feature map; timm model {name!r} has strides {red} "
                             "(CNNs such as ResNets and MobileNets have one, Swin does not)")
        if mask_stride == 2 and not mask_dim:
            raise ValueError("model.mask_stride=2 refines the pixel decoder's map: SgMg's head (model.segment_optimizer) "
                             "has no pixel decoder; set model.mask_stride=4 with it (configs/tiny_video.yaml sets 2)")
        self.index = [want[s] for s in (4, 8, 16, 32)]
        self.index2 = red.index(2) if mask_stride == 2 else None
        self.nhwc = "NHWC" in str(getattr(self.body, "output_fmt", "NCHW"))  # e.g. timm's Swin
        if channels_last and not self.nhwc:
            set_channels_last(self.body)
        c4, c8, c16, c32 = (ch[i] for i in self.index)
        # mask_dim None: no stride-4 projection (SgMg's mask head reads the raw stride-4 features)
        self.proj4 = nn.Sequential(nn.Conv2d(c4, mask_dim, 1), nn.GroupNorm(8, mask_dim)) if mask_dim else None
        self.proj2 = nn.Sequential(nn.Conv2d(ch[self.index2], mask_dim, 1), nn.GroupNorm(8, mask_dim)) \
            if self.index2 is not None else None
        self.proj = nn.ModuleList(nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(8, d_model)) for c in (c8, c16, c32))
        self.extra = nn.Sequential(nn.Conv2d(c32, d_model, 3, stride=2, padding=1), nn.GroupNorm(8, d_model))
        self.stage_channels = [c4, c8, c16, c32]
        self.stage_names = []  # the four stages' module names in self.body (with stage_hooks)
        if stage_hooks:
            modules, names = dict(self.body.named_modules()), self.body.feature_info.module_name()
            for i, k in enumerate(self.index):
                found = [n for n in (names[k], names[k].replace(".", "_")) if n in modules]
                if not found:
                    raise ValueError(f"timm model {name!r}: no module {names[k]!r} for the stage at stride {4 << i}")
                self.stage_names.append(found[0])
                modules[found[0]].register_forward_hook(_stage_hook)

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "Backbone":
        """model.backbone; the stride-4 projection is left out for SgMg's head (model.segment_optimizer),
        and the stage hooks are installed when model.align puts language inside the backbone."""
        m = cfg["model"]
        b, a = m["backbone"], m["align"]
        return cls(b["name"], m["d_model"], None if m["segment_optimizer"] else m["mask_dim"], pretrained=b["pretrained"],
                   checkpoint=b["checkpoint"], timm_kwargs=b["kwargs"], stage_hooks=bool(a["triple"] or a["cam"]),
                   mask_stride=m["mask_stride"], channels_last=b["channels_last"])

    def forward(self, images: torch.Tensor, rewrite=None, raw: bool = False):
        """-> the fine maps for the pixel decoder (mask_dim channels: [stride 4] or [stride 4, stride 2]; None
        without), the levels at strides 8..64 (d_model), and the unprojected stage features at strides 4
        and 8 when ``raw`` (else None). ``rewrite(i, x) -> (next, feature)``:
        called with stage i's output x (B, C, H, W); the next stage reads ``next``, the model ``feature``
        (needs stage_hooks)."""
        if rewrite is not None and not self.stage_names:
            raise RuntimeError("a Backbone built without stage_hooks cannot rewrite its stages")
        features = {}
        stages = [self.body.get_submodule(n) for n in self.stage_names] if rewrite is not None else []
        for i, m in enumerate(stages):  # what the hook needs, on the module (a deep copy keeps it right)
            m._stage_context = (i, rewrite, self.nhwc, features)
        try:
            feats = list(self.body(images))
        finally:
            for m in stages:
                del m._stage_context
        if self.nhwc:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        for i, f in features.items():
            feats[self.index[i]] = f
        f4, f8, f16, f32 = (feats[i] for i in self.index)
        levels = [p(f) for p, f in zip(self.proj, (f8, f16, f32))] + [self.extra(f32)]
        fine = None if self.proj4 is None else [self.proj4(f4)] + ([self.proj2(feats[self.index2])] if self.proj2 else [])
        return fine, levels, ([f4, f8] if raw else None)


def _stage_hook(module, args, out):
    """Forward hook on a backbone stage: hands the output to ``rewrite`` during a forward that has
    one; what it returns for the next stage replaces the output."""
    ctx = module.__dict__.get("_stage_context")
    if ctx is None:
        return None
    i, rewrite, nhwc, features = ctx
    x, features[i] = rewrite(i, out.permute(0, 3, 1, 2) if nhwc else out)
    return x.permute(0, 2, 3, 1) if nhwc else x
