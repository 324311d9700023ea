"""Positional encodings and token / box geometry helpers."""

from __future__ import annotations

import math

import torch


def sine_position(h: int, w: int, dim: int, device, dtype=torch.float32) -> torch.Tensor:
    """2-D sine encoding (h*w, dim) of normalised pixel centres."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return torch.cat([_sine(xs, dim // 2)[None, :, :].expand(h, w, -1), _sine(ys, dim // 2)[:, None, :].expand(h, w, -1)],
                     -1).reshape(h * w, dim).to(dtype)


def _sine(v: torch.Tensor, dim: int) -> torch.Tensor:
    freq = torch.exp(torch.arange(0, dim, 2, device=v.device, dtype=torch.float32) * (-math.log(1e4) / dim))
    ang = v[:, None] * 2 * math.pi * freq[None] * 8
    return torch.cat([ang.sin(), ang.cos()], -1)


def box_position(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """Encoding (..., dim) of normalised boxes (cx, cy, w, h)."""
    parts = [_sine(boxes[..., k].reshape(-1), dim // 4).view(*boxes.shape[:-1], -1) for k in range(4)]
    return torch.cat(parts, -1)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def token_centres(h: int, w: int, device) -> torch.Tensor:
    """(h * w, 2) normalised x, y centres of an h x w token grid, row-major (the flattening order)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
