"""Training and evaluation transforms on one sample.

A sample is a dict: ``image`` uint8 (3, H, W), ``box`` float (4,) xyxy pixels, ``mask`` uint8 (H, W),
``text`` str, and optionally ``instances`` uint8 (H, W) (object indices, moved exactly like the
mask). A *group* sample holds k expressions of one image, transformed together: ``box`` (k, 4),
``mask`` (k, H, W), ``text`` a list of k strings. The final :class:`ResizePad` writes the model
targets and the metadata that maps predictions back to the original image:
  ``box_cxcywh``  normalised by the padded input side (same leading shape as ``box``); ``mask`` at
  input resolution;
  ``meta``: ``scale`` (input px per original px), ``valid`` (h, w) of the unpadded region,
  ``orig_size`` (H, W), ``flipped``.
"""

from __future__ import annotations

import math
import random
import re

import torch
import torch.nn.functional as F

_SWAP = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_SWAP_RE = re.compile(r"\b(" + "|".join(_SWAP) + r")\b", re.IGNORECASE)


def swap_left_right(text: str | list[str]) -> str | list[str]:
    """'left' <-> 'right' (and leftmost/rightmost) as whole words; keeps the case of the first letter."""
    if isinstance(text, list):
        return [swap_left_right(t) for t in text]

    def repl(m):
        w = _SWAP[m.group(0).lower()]
        return w.capitalize() if m.group(0)[0].isupper() else w
    return _SWAP_RE.sub(repl, text)


def _maps(s: dict, fn) -> dict:
    """fn applied to the sample's per-pixel maps: the target mask and, when present, the instance map."""
    return {k: fn(s[k]) for k in ("mask", "instances") if k in s}


class Compose:
    def __init__(self, *ts):
        self.ts = ts

    def __call__(self, s: dict) -> dict:
        for t in self.ts:
            s = t(s)
        return s


class RandomHorizontalFlip:
    """Mirror image, box and mask, and swap left/right words in the expression."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, s: dict) -> dict:
        if random.random() >= self.p:
            return s
        w = s["image"].shape[-1]
        x0, y0, x1, y1 = s["box"].unbind(-1)
        return dict(s, image=s["image"].flip(-1), **_maps(s, lambda m: m.flip(-1)), text=swap_left_right(s["text"]),
                    box=torch.stack([w - x1, y0, w - x0, y1], -1), flipped=not s.get("flipped", False))


class PhotometricJitter:
    """Brightness and contrast only: hue (and saturation) stay, since expressions name colours."""

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25):
        self.b, self.c = brightness, contrast

    def __call__(self, s: dict) -> dict:
        img = s["image"].float()
        img = img * random.uniform(1 - self.b, 1 + self.b)
        mean = img.mean()
        img = (img - mean) * random.uniform(1 - self.c, 1 + self.c) + mean
        return dict(s, image=img.clamp(0, 255).round().to(torch.uint8))


class RandomCropKeepBox:
    """Crop a random window (at least ``min_frac`` of each side) that contains the whole box (every
    box of a group). ``keep_objects``: the window also contains every object of the sample's
    ``instances`` map, so no object an expression may count or relate to ("the second square", "the
    circle left of the star") is cut away -- a crop that keeps only the referent changes the referent
    of such expressions (on the synthetic set: 20% of the crops of relation expressions)."""

    def __init__(self, p: float = 0.5, min_frac: float = 0.6, keep_objects: bool = False):
        self.p, self.min_frac, self.keep_objects = p, min_frac, keep_objects

    def __call__(self, s: dict) -> dict:
        if random.random() >= self.p:
            return s
        h, w = s["image"].shape[-2:]
        b = s["box"].reshape(-1, 4)
        x0, y0 = b[:, 0].min().item(), b[:, 1].min().item()
        x1, y1 = b[:, 2].max().item(), b[:, 3].max().item()
        if self.keep_objects:
            if "instances" not in s:
                raise ValueError("a crop that keeps every object needs the sample's instance map (RefDataset's "
                                 "instances=load_instance_labels(...); tools/train.py loads it for data.crop=objects)")
            ys, xs = torch.nonzero(s["instances"] > 0, as_tuple=True)
            if len(xs):
                x0, y0 = min(x0, xs.min().item()), min(y0, ys.min().item())
                x1, y1 = max(x1, xs.max().item() + 1), max(y1, ys.max().item() + 1)
        # whole pixels covering the (float) boxes: near edges rounded down, far edges up, inside the image
        x0, y0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        x1, y1 = min(w, max(x0, math.ceil(x1))), min(h, max(y0, math.ceil(y1)))
        cw = random.randint(max(int(w * self.min_frac), x1 - x0, 1), w)  # a box may span the image
        ch = random.randint(max(int(h * self.min_frac), y1 - y0, 1), h)
        left = random.randint(max(0, x1 - cw), min(x0, w - cw))
        top = random.randint(max(0, y1 - ch), min(y0, h - ch))
        box = s["box"] - torch.tensor([left, top, left, top], dtype=s["box"].dtype)
        return dict(s, image=s["image"][:, top:top + ch, left:left + cw],
                    **_maps(s, lambda m: m[..., top:top + ch, left:left + cw]), box=box)


class ResizePad:
    """Resize the longer side to ``size`` and pad bottom/right to a ``size`` x ``size`` input."""

    def __init__(self, size: int = 256):
        self.size = size

    def __call__(self, s: dict) -> dict:
        h, w = s["image"].shape[-2:]
        scale = self.size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        same = (nh, nw) == (h, w) == (self.size, self.size)  # already the input: nothing to resize or pad
        if same:
            out_img = s["image"].float()
        else:
            img = F.interpolate(s["image"][None].float(), size=(nh, nw), mode="bilinear", align_corners=False,
                                antialias=scale < 1)[0]
            out_img = torch.zeros(3, self.size, self.size)
            out_img[:, :nh, :nw] = img

        def resize_pad(m):  # nearest: labels stay labels; (H, W) or (k, H, W)
            if same:
                return m.to(torch.uint8, copy=True)
            out = torch.zeros(*m.shape[:-2], self.size, self.size, dtype=torch.uint8)
            small = F.interpolate(m.reshape(1, -1, h, w).float(), size=(nh, nw), mode="nearest")[0]
            out[..., :nh, :nw] = small.reshape(*m.shape[:-2], nh, nw).to(torch.uint8)
            return out
        box = s["box"].float() * torch.tensor([nw / w, nh / h, nw / w, nh / h])
        x0, y0, x1, y1 = box.unbind(-1)
        cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1) / self.size
        meta = dict(s.get("meta", {}), scale=(nh / h, nw / w), valid=(nh, nw), input_size=self.size)
        return dict(s, image=out_img.clamp(0, 255), **_maps(s, resize_pad), box_cxcywh=cxcywh.clamp(0, 1), meta=meta)


def build_transforms(train: bool, size: int, flip: bool = True, crop: bool | str = True, jitter: bool = True) -> Compose:
    """crop: True (keep the referent's box), "objects" (keep every object of the instance map) or False."""
    if crop not in (True, False, "objects"):
        raise ValueError(f"data.crop must be true, false or 'objects', got {crop!r}")
    ts = []
    if train:
        if crop:
            ts.append(RandomCropKeepBox(keep_objects=crop == "objects"))
        if flip:
            ts.append(RandomHorizontalFlip())
        if jitter:
            ts.append(PhotometricJitter())
    ts.append(ResizePad(size))
    return Compose(*ts)
