"""The final mask at the input's full resolution, by joint bilateral upsampling (model.mask_refine).

The mask head reads its masks at stride 2 or 4: one mask pixel covers 2-4 image pixels, and bilinear
upsampling places the outline of an object only to within a mask pixel, which costs region J (every
pixel counts) far more than boundary F (a pixel or two of tolerance). Joint bilateral upsampling (Kopf,
Cohen, Lischinski and Uyttendaele, SIGGRAPH 2007) takes the outline from the image instead: each input
pixel averages the logits of the 3x3 mask cells around its own, weighted by how near each cell's centre
is (Gaussian, ``sigma_space`` in mask cells) and by how close the cell's mean colour is to the pixel's
(Gaussian, ``sigma_color`` in the normalised image's units). A pixel of the object's colour next to a
cell of the background's takes its value from the object's cells. No parameters; the project's own
addition, applied at inference (as DenseCRF post-processing is in DeepLab and the older referring
segmentation models) and, with ``training``, also to the mask the loss sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bilateral_upsample(logits: torch.Tensor, images: torch.Tensor, sigma_color: float,
                       sigma_space: float) -> torch.Tensor:
    """logits (B, h, w), images (B, C, H, W) with H = s h and W = s w for an integer s -> (B, H, W)
    logits: per pixel, the softmax-weighted mean of its 3x3 neighbourhood of cells (cells outside the
    map take no part), log-weight -|pixel - cell mean|^2 / (2 sigma_color^2) - d^2 / (2 sigma_space^2), d
    the distance from the pixel's centre to the cell's, in cells."""
    if logits.dim() != 3 or images.dim() != 4 or images.shape[0] != logits.shape[0]:
        raise ValueError(f"need logits (B, h, w) and images (B, C, H, W) of the same B; got "
                         f"{tuple(logits.shape)} and {tuple(images.shape)}")
    b, h, w = logits.shape
    H, W = images.shape[-2:]
    s = H // h
    if s < 1 or s * h != H or s * w != W:
        raise ValueError(f"the image ({H} x {W}) must be an integer multiple of the mask ({h} x {w}) on both axes")
    if not (sigma_color > 0 and sigma_space > 0):
        raise ValueError(f"sigma_color and sigma_space must be > 0; got {sigma_color}, {sigma_space}")
    images = images.to(logits.dtype)
    cells = images.reshape(b, -1, h, s, w, s)                                   # pixel (y, x) = cell (i, a, j, c)
    guide = F.pad(cells.mean((3, 5)), (1, 1, 1, 1))                             # (B, C, h + 2, w + 2)
    lp = F.pad(logits, (1, 1, 1, 1))
    inside = F.pad(logits.new_ones(h, w), (1, 1, 1, 1)).bool()
    off = (torch.arange(s, device=logits.device, dtype=logits.dtype) + 0.5) / s - 0.5  # pixel centre in its cell
    logw, vals = [], []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows, cols = slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w)
            colour = ((cells - guide[:, :, rows, cols][:, :, :, None, :, None]) ** 2).sum(1)  # (B, h, s, w, s)
            space = (dy - off)[:, None, None] ** 2 + (dx - off) ** 2             # (s, 1, s)
            lw = -colour / (2 * sigma_color ** 2) - space / (2 * sigma_space ** 2)
            logw.append(lw.masked_fill(~inside[rows, cols][None, :, None, :, None], float("-inf")))
            vals.append(lp[:, rows, cols][:, :, None, :, None])
    weights = torch.softmax(torch.stack(logw), 0)
    return (weights * torch.stack(vals)).sum(0).reshape(b, H, W)


class MaskRefiner(nn.Module):
    """``refine_masks`` hook: the final mask logits (B, h, w) -> (B, S, S) at the input's size, by
    :func:`bilateral_upsample` guided by the input image; in training only with ``training`` (else the
    loss sees the mask head's own logits). Only the final mask is refined (the earlier layers' masks
    of ``mask_every_layer`` stay at the mask head's stride); a mask at the input's size already (SgMg's
    segment-and-optimise head) is left as it is."""

    def __init__(self, sigma_color: float, sigma_space: float, training: bool = False):
        super().__init__()
        if not (sigma_color > 0 and sigma_space > 0):
            raise ValueError(f"model.mask_refine.sigma_color and sigma_space must be > 0; got {sigma_color}, "
                             f"{sigma_space}")
        self.sigma_color, self.sigma_space, self.in_training = float(sigma_color), float(sigma_space), bool(training)

    @classmethod
    def from_config(cls, cfg: dict, ctx=None) -> "MaskRefiner | None":
        r = cfg["model"]["mask_refine"]
        return cls(r["sigma_color"], r["sigma_space"], r["training"]) if r["enabled"] else None

    def refine_masks(self, logits: torch.Tensor, st) -> torch.Tensor:
        if self.training and not self.in_training:
            return logits
        images = st.images if st.image_index is None else st.images[st.image_index]
        if logits.shape[-2:] == images.shape[-2:]:
            return logits  # at the input's resolution already (SgMg's head): nothing to upsample
        # in float32 whatever autocast gives the logits: the weights are exponentials of squared colour differences
        return bilateral_upsample(logits.float(), images.float(), self.sigma_color, self.sigma_space)

    def extra_repr(self) -> str:
        return f"sigma_color={self.sigma_color}, sigma_space={self.sigma_space}, training={self.in_training}"
