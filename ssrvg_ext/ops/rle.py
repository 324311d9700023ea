"""COCO run-length encoding and mask IoU, identical to pycocotools (>= 2.0.7).

RLEs are the dicts pycocotools uses, ``{"size": [H, W], "counts": bytes}``, so results can be
mixed freely with ``pycocotools.mask``. Masks are torch tensors ``(N, H, W)`` (uint8 or bool, any
device, ordinary row-major layout); COCO's column-major pixel order is handled inside the kernels.

    >>> from ssrvg_ext.ops import rle
    >>> rles = rle.encode(masks)              # (N, H, W) cpu or cuda -> list of N dicts
    >>> rle.iou(rles, gt_rles, [0] * len(gt_rles))   # (N, G) float64, pycocotools' rules
    >>> rle.mask_iou(masks, gt_masks)         # the same numbers straight from tensors (GPU too)

Malformed RLEs (bad characters, counts that do not fill H*W, negative sizes, wrong types) raise
``ValueError`` / ``TypeError``; nothing reads past a buffer.
"""

from __future__ import annotations

import operator
from typing import Iterable, Sequence, Union

import torch

from ._dispatch import call, register_fake

RLE = dict
_CPU = torch.device("cpu")

__all__ = ["encode", "decode", "area", "to_bbox", "merge", "iou", "mask_iou",
           "counts_to_string", "string_to_counts", "frPyObjects_uncompressed"]


# ---------------------------------------------------------------------------------------------
# Packing RLE dicts <-> the ops' (counts, offsets, sizes) tensors
def _size_of(r, i: int) -> tuple[int, int]:
    if not isinstance(r, dict) or "size" not in r or "counts" not in r:
        raise TypeError(f"RLE {i}: expected a dict with 'size' and 'counts'; got {type(r).__name__}"
                        + (f" with keys {sorted(r)}" if isinstance(r, dict) else ""))
    size = r["size"]
    try:
        if isinstance(size, (str, bytes)) or len(size) != 2 or any(isinstance(v, bool) for v in size):
            raise TypeError
        h, w = (operator.index(v) for v in size)  # ints only: 2.5 or "3" are not silently truncated
    except (TypeError, ValueError):
        raise ValueError(f"RLE {i}: 'size' must be [H, W] of two integers; got {size!r}") from None
    if h < 0 or w < 0:
        raise ValueError(f"RLE {i}: 'size' must be non-negative; got {size!r}")
    return h, w


def _counts_of(r: RLE, i: int) -> Union[bytes, torch.Tensor]:
    """A dict's counts as compressed bytes, or as an int64 tensor when given uncompressed."""
    c = r["counts"]
    if isinstance(c, str):
        if not c.isascii():
            raise ValueError(f"RLE {i}: compressed counts hold non-ASCII characters")
        return c.encode("ascii")
    if isinstance(c, (bytes, bytearray)):
        return bytes(c)
    if isinstance(c, (list, tuple, torch.Tensor)) or type(c).__name__ == "ndarray":
        return _int64_counts(c, f"RLE {i}: uncompressed 'counts'")
    raise TypeError(f"RLE {i}: 'counts' must be compressed bytes/str or a list of ints; got {type(c).__name__}")


def _int64_counts(c, what: str) -> torch.Tensor:
    """A sequence / tensor / ndarray of integers as a flat int64 tensor; floats, bools, strings and
    values outside int64 are a TypeError (never silently truncated)."""
    if isinstance(c, torch.Tensor) or type(c).__name__ == "ndarray":
        t = torch.as_tensor(c)
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool or t.dtype == torch.uint64:
            raise TypeError(f"{what} must be integers; got dtype {t.dtype}")
        return t.to(torch.int64).reshape(-1)
    try:
        if any(isinstance(v, bool) for v in c):
            raise TypeError("bool is not a count")
        return torch.tensor([operator.index(v) for v in c], dtype=torch.int64).reshape(-1)  # rejects 1.5, "3"
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise TypeError(f"{what} must be int64 integers ({e})") from None


def _pack(rles: Sequence[RLE]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated (counts int64, offsets int64 (N+1), sizes int64 (N, 2)) CPU tensors."""
    if isinstance(rles, dict):
        rles = [rles]
    sizes = torch.tensor([_size_of(r, i) for i, r in enumerate(rles)], dtype=torch.int64).reshape(-1, 2)
    given = [_counts_of(r, i) for i, r in enumerate(rles)]
    compressed = [i for i, c in enumerate(given) if isinstance(c, bytes)]
    if compressed:
        chars, char_offsets = _bytes_batch([given[i] for i in compressed])
        counts, offsets = call("rle_from_string", _CPU, chars, char_offsets, sizes[compressed])
        if len(compressed) == len(given):
            return counts, offsets, sizes  # the usual case: all compressed, validated by the op
        for j, i in enumerate(compressed):
            given[i] = counts[offsets[j]:offsets[j + 1]]
    # Some counts came uncompressed (pycocotools' frPyObjects input): concatenate, then validate.
    counts = torch.cat(given) if given else torch.zeros(0, dtype=torch.int64)
    offsets = torch.zeros(len(given) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(torch.tensor([len(c) for c in given], dtype=torch.int64), 0)
    call("rle_check", _CPU, counts, offsets, sizes)
    return counts, offsets, sizes


def _bytes_batch(strings: Sequence[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    buf = b"".join(strings)
    chars = torch.frombuffer(bytearray(buf), dtype=torch.uint8) if buf else torch.zeros(0, dtype=torch.uint8)
    offsets = torch.zeros(len(strings) + 1, dtype=torch.int64)
    if strings:
        offsets[1:] = torch.cumsum(torch.tensor([len(s) for s in strings], dtype=torch.int64), 0)
    return chars, offsets


def _unpack(counts: torch.Tensor, offsets: torch.Tensor, sizes: Iterable) -> list[RLE]:
    """(counts, offsets) -> pycocotools dicts with compressed counts bytes."""
    counts, offsets = counts.to(_CPU), offsets.to(_CPU)
    chars, char_offsets = call("rle_to_string", _CPU, counts, offsets)
    buf = chars.numpy().tobytes()
    o = char_offsets.tolist()
    return [{"size": [int(h), int(w)], "counts": buf[o[i]:o[i + 1]]} for i, (h, w) in enumerate(sizes)]


# ---------------------------------------------------------------------------------------------
# Public API
def encode(masks: torch.Tensor) -> Union[list[RLE], RLE]:
    """Binary masks ``(N, H, W)`` (or one ``(H, W)``) -> pycocotools RLE dicts.

    ``masks``: uint8 or bool tensor on any device; nonzero pixels are foreground. On CUDA the run
    lengths are found on the GPU and only they are copied back.
    """
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"encode expects a torch.Tensor (N, H, W); got {type(masks).__name__}")
    single = masks.dim() == 2
    batch = masks.unsqueeze(0) if single else masks
    counts, offsets = call("rle_encode", batch.device, batch)
    out = _unpack(counts, offsets, [tuple(batch.shape[1:])] * batch.shape[0])
    return out[0] if single else out


def decode(rles: Union[Sequence[RLE], RLE], device: torch.device | str | None = None) -> torch.Tensor:
    """RLE dicts (all of one size) -> uint8 masks ``(N, H, W)`` on ``device`` (a single dict gives
    ``(H, W)``)."""
    single = isinstance(rles, dict)
    counts, offsets, sizes = _pack([rles] if single else rles)
    if sizes.shape[0] == 0:
        raise ValueError("decode needs at least one RLE (the output size comes from them)")
    if not bool((sizes == sizes[0]).all()):
        raise ValueError(f"decode: all RLEs must have one size; got {sorted(set(map(tuple, sizes.tolist())))}")
    device = torch.device(device) if device is not None else _CPU
    h, w = (int(v) for v in sizes[0])
    out = call("rle_decode", device, counts.to(device), offsets.to(device), h, w)
    return out[0] if single else out


def area(rles: Union[Sequence[RLE], RLE]) -> torch.Tensor:
    """Foreground pixel count of each RLE, int64 ``(N,)``."""
    counts, offsets, _ = _pack(rles)
    return call("rle_area", _CPU, counts, offsets)


def to_bbox(rles: Union[Sequence[RLE], RLE]) -> torch.Tensor:
    """``[x, y, w, h]`` box of each RLE, float64 ``(N, 4)``, exactly pycocotools' toBbox."""
    counts, offsets, sizes = _pack(rles)
    return call("rle_to_bbox", _CPU, counts, offsets, sizes)


def merge(rles: Sequence[RLE], intersect: bool = False) -> RLE:
    """Union (or intersection) of RLEs of one size into one RLE."""
    if isinstance(rles, dict):
        rles = [rles]
    if len(rles) == 0:
        return {"size": [0, 0], "counts": b""}  # what pycocotools returns for no input
    counts, offsets, sizes = _pack(rles)
    merged = call("rle_merge", _CPU, counts, offsets, sizes, bool(intersect))
    return _unpack(merged, torch.tensor([0, merged.numel()]), [tuple(sizes[0].tolist())])[0]


def iou(dt: Sequence[RLE], gt: Sequence[RLE], iscrowd: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """IoU matrix ``(len(dt), len(gt))`` float64 with pycocotools' rules: 0 where the boxes do not
    overlap, -1 on a size mismatch, I / area(dt) for a crowd gt, else I / U."""
    if isinstance(dt, dict):
        dt = [dt]
    if isinstance(gt, dict):
        gt = [gt]
    iscrowd_t = _crowd(iscrowd, len(gt))
    dc, do, ds = _pack(dt)
    gc, go, gs = _pack(gt)
    return call("rle_iou", _CPU, dc, do, ds, gc, go, gs, iscrowd_t)


def mask_iou(a: torch.Tensor, b: torch.Tensor, iscrowd: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise IoU of binary masks ``(N, H, W)`` x ``(M, H, W)`` -> ``(N, M)`` float64 on a's device,
    the numbers :func:`iou` gives for their RLEs, without building any RLE."""
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"mask_iou: {name} must be a torch.Tensor; got {type(t).__name__}")
    return call("mask_iou", a.device, a, b, _crowd(iscrowd, b.shape[0] if b.dim() == 3 else -1).to(a.device))


def counts_to_string(counts: Sequence[int]) -> bytes:
    """Uncompressed run lengths -> COCO's compressed counts string."""
    c = _int64_counts(counts, "counts")
    chars, _ = call("rle_to_string", _CPU, c, torch.tensor([0, c.numel()]))
    return chars.numpy().tobytes()


def string_to_counts(s: Union[bytes, str], h: int, w: int) -> list[int]:
    """COCO's compressed counts string of an ``h x w`` mask -> run lengths (validated)."""
    counts, _, _ = _pack([{"size": [h, w], "counts": s}])
    return counts.tolist()


def frPyObjects_uncompressed(rle: RLE) -> RLE:
    """``{"size", "counts": [ints]}`` (COCO's uncompressed form) -> compressed dict, validated."""
    counts, offsets, sizes = _pack([rle])
    return _unpack(counts, offsets, sizes.tolist())[0]


def _crowd(iscrowd, n: int) -> torch.Tensor:
    if iscrowd is None:
        return torch.zeros(0, dtype=torch.uint8)
    t = torch.as_tensor(iscrowd)
    if t.dtype not in (torch.uint8, torch.bool) and t.is_floating_point():
        raise TypeError(f"iscrowd must hold 0/1 flags; got dtype {t.dtype}")
    if t.numel() and not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"iscrowd must hold 0/1 flags; got values {sorted(set(t.reshape(-1).tolist()))[:8]}")
    t = t.to(torch.uint8).reshape(-1)
    if n >= 0 and t.numel() != n:
        raise ValueError(f"iscrowd must have one entry per gt ({n}); got {t.numel()}")
    return t


# ---------------------------------------------------------------------------------------------
# Fake (meta) kernels, for torch.compile and opcheck
@register_fake("rle_encode")
def _(masks):
    total = torch.library.get_ctx().new_dynamic_size()
    return masks.new_empty((total,), dtype=torch.int64), masks.new_empty((masks.shape[0] + 1,), dtype=torch.int64)


@register_fake("rle_decode")
def _(counts, offsets, h, w):
    return counts.new_empty((offsets.shape[0] - 1, h, w), dtype=torch.uint8)


@register_fake("mask_iou")
def _(a, b, iscrowd):
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.float64)


@register_fake("rle_area")
def _(counts, offsets):
    return counts.new_empty((offsets.shape[0] - 1,), dtype=torch.int64)


@register_fake("rle_to_bbox")
def _(counts, offsets, sizes):
    return counts.new_empty((offsets.shape[0] - 1, 4), dtype=torch.float64)


@register_fake("rle_iou")
def _(dc, do, ds, gc, go, gs, iscrowd):
    return dc.new_empty((do.shape[0] - 1, go.shape[0] - 1), dtype=torch.float64)
