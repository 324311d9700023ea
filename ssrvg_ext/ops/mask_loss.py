"""Fused upsampled mask losses and the fused inference path (docs/design.md section 4).

Mask heads predict low-resolution logits ``(B, h, w)``; the losses are defined at the targets'
full resolution ``(B, H, W)`` on ``z = interpolate(logits, (H, W), "bilinear", align_corners=False)``.
The kernel computes, per mask, the sums over valid pixels that every usual mask loss is built from
-- ``[sum p*t, sum p, sum t, sum BCE(z, t), sum focal(z, t)]`` with ``p = sigmoid(z)`` -- without
materialising ``z``, and its backward gathers ``dL/dlogits`` at low resolution (no atomics,
deterministic, no float H x W buffer).

    >>> loss = upsampled_mask_loss(logits, targets, losses={"dice": 5.0, "bce": 2.0})
    >>> loss, terms = upsampled_mask_loss(logits, targets, {"dice": 5.0, "bce": 2.0}, return_terms=True)

:func:`upsampled_mask_loss` is one op (``ssrvg::upsampled_mask_loss``): the sums, each mask's
terms, their sums over masks, the weights and the total happen inside it, and its backward is one
op too; the unweighted terms come out of the same call for logging.

The inference side of the same kernels' upsampling, :func:`~.mask_postprocess.mask_postprocess`,
has its own module.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ._dispatch import call, register_autograd, register_fake

__all__ = ["upsampled_mask_sums", "losses_from_sums", "upsampled_mask_losses", "upsampled_mask_loss",
           "upsampled_mask_loss_terms", "TERM_INDEX",
           "unfused_mask_losses", "LOSSES"]

LOSSES = ("dice", "soft_iou", "bce", "focal")


def upsampled_mask_sums(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None,
                        alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask sums ``(B, 5)`` = [Σp·t, Σp, Σt, ΣBCE, Σfocal] over valid pixels of the upsampled masks.

    logits: (B, h, w) float32/float16/bfloat16/float64 (float32 math); targets: (B, H, W) uint8/bool;
    valid: optional (B, H, W) uint8/bool, 0 where pixels are padding and must not count.
    Focal is torchvision's sigmoid focal loss (``alpha < 0`` disables the alpha weighting).
    Differentiable w.r.t. ``logits``. float32 result (float64 for float64 logits).
    """
    return call("upsampled_mask_sums", logits.device, logits, targets, valid, float(alpha), float(gamma))


def losses_from_sums(sums: torch.Tensor, num_pixels: torch.Tensor | None,
                     names: Sequence[str] = LOSSES) -> dict[str, torch.Tensor]:
    """Per-mask losses ``(B,)`` from the five sums: dice (+1 smoothing), soft IoU, mean BCE, mean
    focal; only those in ``names`` (each is a few small ops; num_pixels is read by bce / focal)."""
    pt, p, t, bce, focal = sums.unbind(1)
    n = num_pixels.to(sums.dtype).clamp_min(1) if {"bce", "focal"} & set(names) else None
    make = {
        "dice": lambda: 1 - (2 * pt + 1) / (p + t + 1),
        "soft_iou": lambda: 1 - (pt + 1) / (p + t - pt + 1),
        "bce": lambda: bce / n,
        "focal": lambda: focal / n,
    }
    return {name: make[name]() for name in names}


def _num_pixels(targets: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return torch.full((targets.shape[0],), targets.shape[1] * targets.shape[2], device=targets.device)
    return valid.flatten(1).sum(1)


def upsampled_mask_losses(logits, targets, valid=None, alpha=0.25, gamma=2.0) -> dict[str, torch.Tensor]:
    """Every per-mask loss ``(B,)`` of :data:`LOSSES`, from one fused kernel call."""
    return losses_from_sums(upsampled_mask_sums(logits, targets, valid, alpha, gamma), _num_pixels(targets, valid))


def unfused_mask_losses(logits, targets, valid=None, alpha=0.25, gamma=2.0) -> dict[str, torch.Tensor]:
    """The same losses computed the plain way (interpolate -> sigmoid -> sums): the reference."""
    from .reference import upsampled_mask_sums as ref_sums

    return losses_from_sums(ref_sums(logits, targets, valid, alpha, gamma), _num_pixels(targets, valid))


TERM_INDEX = {name: i for i, name in enumerate(LOSSES)}  # the op's term numbers


def _num_masks(num_masks, batch: int) -> float:
    if num_masks is None:
        return float(max(batch, 1))
    try:
        n = float(num_masks)  # a number or a one-element tensor (a CUDA one costs a sync here)
    except (TypeError, ValueError, RuntimeError):
        n = math.nan
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"num_masks must be a finite number > 0 (a scalar); got {num_masks!r}")
    return n


def upsampled_mask_loss(logits: torch.Tensor, targets: torch.Tensor, losses: Mapping[str, float] | None = None,
                        valid: torch.Tensor | None = None, alpha: float = 0.25, gamma: float = 2.0,
                        num_masks: float | torch.Tensor | None = None, return_terms: bool = False):
    """Weighted sum of the mask losses named in ``losses`` (name -> weight; default dice 1 + bce 1),
    each summed over masks and divided by ``num_masks`` (default B; pass the all-reduced count in
    distributed training so every rank normalises alike), in one op. With ``return_terms``,
    ``(loss, {name: unweighted term})``: the terms come from the same call (a weight of 0 logs a
    term without training on it); the focal sum is computed only when ``focal`` is named."""
    losses = dict(losses if losses is not None else {"dice": 1.0, "bce": 1.0})
    unknown = set(losses) - set(LOSSES)
    if unknown:
        raise ValueError(f"unknown mask loss(es) {sorted(unknown)}; choose from {LOSSES}")
    bad = {k: w for k, w in losses.items() if not (isinstance(w, (int, float)) and math.isfinite(w))}
    if bad:
        raise ValueError(f"mask loss weights must be finite numbers; got {bad}")
    if not losses:
        raise ValueError(f"name at least one mask loss of {LOSSES}")
    idx = [TERM_INDEX[name] for name in losses]
    loss, values, _ = call("upsampled_mask_loss", logits.device, logits, targets, valid, idx,
                           [float(w) for w in losses.values()], float(alpha), float(gamma),
                           _num_masks(num_masks, logits.shape[0]))
    if return_terms:
        return loss, {name: values[i] for name, i in zip(losses, idx)}
    return loss


def upsampled_mask_loss_terms(logits: torch.Tensor, targets: torch.Tensor, names: Sequence[str] = ("dice", "bce"),
                              valid: torch.Tensor | None = None, alpha: float = 0.25, gamma: float = 2.0,
                              num_masks: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Each named mask loss (unweighted), summed over masks and divided by ``num_masks`` (default B):
    :func:`upsampled_mask_loss`'s terms, from one op call."""
    return upsampled_mask_loss(logits, targets, {name: 1.0 for name in names}, valid, alpha, gamma, num_masks,
                               return_terms=True)[1]


# ---------------------------------------------------------------------------------------------
# Fake kernels and autograd
@register_fake("upsampled_mask_sums")
def _(logits, targets, valid, alpha, gamma):
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return logits.new_empty((logits.shape[0], 5), dtype=dtype)


@register_fake("upsampled_mask_sums_backward")
def _(grad, logits, targets, valid, alpha, gamma):
    return torch.empty_like(logits)


def _setup_context(ctx, inputs, output):
    logits, targets, valid, alpha, gamma = inputs
    ctx.save_for_backward(logits, targets, valid)
    ctx.alpha, ctx.gamma = alpha, gamma


def _backward(ctx, grad):
    logits, targets, valid = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = torch.ops.ssrvg.upsampled_mask_sums_backward(grad.contiguous(), logits, targets, valid,
                                                                  ctx.alpha, ctx.gamma)
    return grad_logits, None, None, None, None


register_autograd("upsampled_mask_sums", _backward, _setup_context)


@register_fake("upsampled_mask_loss")
def _(logits, targets, valid, terms, weights, alpha, gamma, num_masks):
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return (logits.new_empty((), dtype=dtype), logits.new_empty((len(LOSSES),), dtype=dtype),
            logits.new_empty((logits.shape[0], 6), dtype=dtype))


@register_fake("upsampled_mask_loss_backward")
def _(grad_loss, grad_values, stats, logits, targets, valid, terms, weights, alpha, gamma, num_masks):
    return torch.empty_like(logits)


# upsampled_mask_loss's autograd is registered in C++ (csrc/mask_loss/mask_loss_autograd.cpp): the
# loss is one op forward and one op backward, with no Python in between.
