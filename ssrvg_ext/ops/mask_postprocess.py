"""Masks at the original image size from low-resolution logits (inference; docs/design.md section 4).

:func:`mask_postprocess` turns low-res logits of a padded input into uint8 masks at the original
image size (upsample to the input, crop the valid region, resize, threshold) in one pass, with the
same bilinear upsampling convention as the fused mask losses (:mod:`.mask_loss`).
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch

from ._dispatch import call, register_fake

__all__ = ["mask_postprocess"]


def mask_postprocess(logits: torch.Tensor, input_size: Sequence[int], valid_sizes: Sequence[Sequence[int]],
                     orig_sizes: Sequence[Sequence[int]], threshold: float = 0.0) -> list[torch.Tensor]:
    """Low-res logits ``(B, h, w)`` of padded ``input_size`` inputs -> one uint8 mask per sample at its
    original size: upsample to the input, keep the valid top-left ``valid_sizes[i]`` region, resize to
    ``orig_sizes[i]``, ``logit > threshold`` (0.0 is probability 0.5). Samples that share sizes are
    processed in one kernel call."""
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, h, w); got {tuple(logits.shape)}")
    if not (len(valid_sizes) == len(orig_sizes) == logits.shape[0]):
        raise ValueError(f"need one valid size and one original size per mask ({logits.shape[0]}); "
                         f"got {len(valid_sizes)} and {len(orig_sizes)}")
    in_h, in_w = _size2(input_size, "input_size")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (vs, os_) in enumerate(zip(valid_sizes, orig_sizes)):
        groups.setdefault((*_size2(vs, f"valid_sizes[{i}]"), *_size2(os_, f"orig_sizes[{i}]")), []).append(i)
    out: list[torch.Tensor | None] = [None] * logits.shape[0]
    for (vh, vw, oh, ow), idx in groups.items():
        sel = logits if len(idx) == logits.shape[0] else logits[idx]
        masks = call("mask_postprocess", logits.device, sel, in_h, in_w, vh, vw, oh, ow, float(threshold))
        for k, i in enumerate(idx):
            out[i] = masks[k]
    return out


def _size2(size, what: str) -> tuple[int, int]:
    """(h, w) of two integers (numpy / torch integer scalars too); 8.5 or "8" is a TypeError."""
    try:
        if len(size) != 2 or any(isinstance(v, bool) for v in size):
            raise TypeError
        return tuple(operator.index(v) for v in size)
    except TypeError:
        raise TypeError(f"{what} must be (h, w) of two integers; got {size!r}") from None


@register_fake("mask_postprocess")
def _(logits, in_h, in_w, crop_h, crop_w, out_h, out_w, threshold):
    return logits.new_empty((logits.shape[0], out_h, out_w), dtype=torch.uint8)
