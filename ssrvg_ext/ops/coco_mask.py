"""A drop-in for ``pycocotools.mask``: the same functions and calling conventions, backed by the
library's RLE kernels, so that COCO evaluation code switches with one import:

    from ssrvg_ext.ops import coco_mask as mask_util      # instead of: from pycocotools import mask as mask_util

- ``encode(bimask)``: a Fortran-ordered (H, W, N) uint8 array -> list of RLEs; (H, W) -> one RLE.
- ``decode(rles)``: list -> (H, W, N) uint8 (Fortran order); one RLE -> (H, W).
- ``area``, ``toBbox``, ``merge(rles, intersect=0)``, ``iou(dt, gt, iscrowd)`` (RLEs, or (N, 4) boxes
  [x, y, w, h] on both sides).
- ``frPyObjects(obj, h, w)``: polygons (a list of flat [x0, y0, x1, y1, ...] lists), boxes ((N, 4)
  array or list of 4-lists), uncompressed RLEs (dicts with a list of counts; one dict -> one RLE).

RLE dicts are ``{"size": [H, W], "counts": bytes}``, as pycocotools'. Polygons are rasterised as
pycocotools does, bit for bit (python_tests/test_coco_mask.py compares them): the vertices are
scaled by 5 and rounded, every edge is walked one step at a time along its longer axis, the points
where the walk crosses a pixel column's centre line become run boundaries at the first pixel centre
below the edge, and the sorted boundaries become the counts (an edge of zero length after the x5
rounding contributes nothing, in either). Boxes are the polygons of their four corners.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
import torch

from . import rle as _rle

RLE = dict
_SCALE = 5.0


def _as_list(rles) -> tuple[list, bool]:
    if isinstance(rles, dict):
        return [rles], True
    if isinstance(rles, (list, tuple)):
        return list(rles), False
    raise TypeError(f"expected an RLE dict or a list of them; got {type(rles).__name__}")


def encode(bimask: np.ndarray) -> Union[list[RLE], RLE]:
    """(H, W, N) (or (H, W)) uint8 masks -> RLEs. Any memory order is accepted (pycocotools requires
    Fortran order; the result is the same)."""
    a = np.asarray(bimask)
    if a.dtype != np.uint8 or a.ndim not in (2, 3):
        raise ValueError(f"encode expects (H, W) or (H, W, N) uint8 masks; got {a.shape} {a.dtype}")
    single = a.ndim == 2
    t = torch.from_numpy(np.ascontiguousarray(a[..., None] if single else a)).permute(2, 0, 1)
    out = _rle.encode(t.contiguous())
    return out[0] if single else out


def decode(rles) -> np.ndarray:
    """RLEs -> (H, W, N) uint8, Fortran order; one RLE -> (H, W)."""
    items, single = _as_list(rles)
    if not items:
        raise ValueError("decode needs at least one RLE")
    m = _rle.decode(items).permute(1, 2, 0).numpy()
    return np.asfortranarray(m[..., 0] if single else m)


def area(rles) -> Union[np.ndarray, int]:
    items, single = _as_list(rles)
    a = _rle.area(items).numpy().astype(np.uint32)
    return a[0] if single else a


def toBbox(rles) -> np.ndarray:  # noqa: N802 (pycocotools' name)
    items, single = _as_list(rles)
    b = _rle.to_bbox(items).numpy().astype(np.float64)
    return b[0] if single else b


def merge(rles: Sequence[RLE], intersect: int = 0) -> RLE:
    return _rle.merge(list(rles), intersect=bool(intersect))


def _boxes(x) -> np.ndarray | None:
    """(N, 4) float64 boxes if ``x`` is boxes (an array or a list of 4-number lists), else None."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64).reshape(-1, 4)
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], (list, tuple, np.ndarray)) and len(x[0]) == 4:
        return np.asarray(x, dtype=np.float64).reshape(-1, 4)
    return None


def _box_iou(d: np.ndarray, g: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    dx0, dy0, dw, dh = d[:, None, 0], d[:, None, 1], d[:, None, 2], d[:, None, 3]
    gx0, gy0, gw, gh = g[None, :, 0], g[None, :, 1], g[None, :, 2], g[None, :, 3]
    iw = np.minimum(dx0 + dw, gx0 + gw) - np.maximum(dx0, gx0)
    ih = np.minimum(dy0 + dh, gy0 + gh) - np.maximum(dy0, gy0)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    union = np.where(crowd[None, :], dw * dh, dw * dh + gw * gh - inter)
    return np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou(dt, gt, pyiscrowd) -> np.ndarray:
    """(len(dt), len(gt)) float64 IoU of RLEs, or of [x, y, w, h] boxes; a crowd ground truth
    divides by the detection's area. Empty inputs give an empty list, as pycocotools."""
    crowd = np.asarray(list(pyiscrowd), dtype=np.uint8).reshape(-1)
    db, gb = _boxes(dt), _boxes(gt)
    if (db is None) != (gb is None):
        raise TypeError("iou compares RLEs with RLEs or boxes with boxes")
    n_d, n_g = (len(db), len(gb)) if db is not None else (len(_as_list(dt)[0]), len(_as_list(gt)[0]))
    if n_d == 0 or n_g == 0:
        return []
    if len(crowd) != n_g:
        raise ValueError(f"iscrowd has {len(crowd)} entries for {n_g} ground truths")
    if db is not None:
        return _box_iou(db, gb, crowd.astype(bool))
    return _rle.iou(_as_list(dt)[0], _as_list(gt)[0], torch.from_numpy(crowd)).numpy()


# ---- polygons -------------------------------------------------------------------------------------
def _edge_points(xs: int, ys: int, xe: int, ye: int) -> tuple[np.ndarray, np.ndarray]:
    """The integer points of one edge of the x5 polygon, from its start to its end: one per step
    along the longer axis, the other coordinate rounded from the end with the smaller coordinate
    on that axis (so that an edge gives the same points in either direction)."""
    dx, dy = abs(xe - xs), abs(ye - ys)
    along_x = dx >= dy
    steps = dx if along_x else dy
    if steps == 0:
        return np.array([xs]), np.array([ys])
    reverse = (xs > xe) if along_x else (ys > ye)
    if reverse:
        xs, ys, xe, ye = xe, ye, xs, ys
    t = np.arange(steps + 1, dtype=np.int64)
    if reverse:
        t = t[::-1]  # walk from the original start
    if along_x:
        slope = (ye - ys) / dx
        return xs + t, np.trunc(ys + slope * t + 0.5).astype(np.int64)
    slope = (xe - xs) / dy
    return np.trunc(xs + slope * t + 0.5).astype(np.int64), ys + t


def _poly_counts(poly: Sequence[float], h: int, w: int) -> list[int]:
    xy = np.asarray(poly, dtype=np.float64)
    px = np.trunc(_SCALE * xy[0::2] + 0.5).astype(np.int64)
    py = np.trunc(_SCALE * xy[1::2] + 0.5).astype(np.int64)
    px, py = np.append(px, px[0]), np.append(py, py[0])
    pts = [_edge_points(int(px[j]), int(py[j]), int(px[j + 1]), int(py[j + 1])) for j in range(len(px) - 1)
           if (px[j], py[j]) != (px[j + 1], py[j + 1])]
    if not pts:
        return [h * w]
    u = np.concatenate([p[0] for p in pts])
    v = np.concatenate([p[1] for p in pts])
    # where the walk moves to another x5 column: the pixel column whose centre line it crosses
    step = np.nonzero(u[1:] != u[:-1])[0] + 1
    col = np.where(u[step] < u[step - 1], u[step], u[step] - 1).astype(np.float64)
    col = (col + 0.5) / _SCALE - 0.5
    keep = (np.floor(col) == col) & (col >= 0) & (col <= w - 1)
    row = np.minimum(v[step], v[step - 1]).astype(np.float64)
    row = np.ceil(np.clip((row + 0.5) / _SCALE - 0.5, 0, h))
    bounds = np.sort(np.append(col[keep].astype(np.int64) * h + row[keep].astype(np.int64), h * w))
    runs = np.diff(bounds, prepend=0).tolist()
    counts = [runs[0]]
    j = 1
    while j < len(runs):  # a zero run: the two boundaries cancel, the next run continues the last
        if runs[j] > 0:
            counts.append(runs[j])
            j += 1
        else:
            if j + 1 < len(runs):
                counts[-1] += runs[j + 1]
            j += 2
    return [int(c) for c in counts]


def _check_hw(h, w) -> tuple[int, int]:
    if isinstance(h, bool) or isinstance(w, bool) or int(h) != h or int(w) != w or h < 0 or w < 0:
        raise ValueError(f"h and w must be non-negative integers; got {h!r}, {w!r}")
    return int(h), int(w)


def _from_poly(poly, h: int, w: int) -> RLE:
    if not isinstance(poly, (list, tuple, np.ndarray)) or len(poly) < 6 or len(poly) % 2:
        raise ValueError(f"a polygon must be a flat list of at least 3 (x, y) points; got length "
                         f"{len(poly) if hasattr(poly, '__len__') else '?'}")
    if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e8
               for v in poly):
        raise ValueError("polygon coordinates must be finite numbers")
    counts = _poly_counts(poly, h, w)
    return {"size": [h, w], "counts": _rle.counts_to_string(counts)}


def _from_box(box, h: int, w: int) -> RLE:
    x, y, bw, bh = (float(v) for v in box)
    return _from_poly([x, y, x, y + bh, x + bw, y + bh, x + bw, y], h, w)


def frPyObjects(pyobj, h, w) -> Union[list[RLE], RLE]:  # noqa: N802 (pycocotools' name)
    h, w = _check_hw(h, w)
    boxes = _boxes(pyobj)
    if boxes is not None:
        return [_from_box(b, h, w) for b in boxes]
    if isinstance(pyobj, dict) and "counts" in pyobj and "size" in pyobj:
        return _rle.frPyObjects_uncompressed(pyobj)
    if isinstance(pyobj, (list, tuple)) and pyobj:
        if all(isinstance(p, dict) and "counts" in p and "size" in p for p in pyobj):
            return [_rle.frPyObjects_uncompressed(p) for p in pyobj]
        if all(isinstance(p, (list, tuple, np.ndarray)) and len(p) > 4 for p in pyobj):
            return [_from_poly(p, h, w) for p in pyobj]
    raise TypeError("frPyObjects takes polygons (a list of flat coordinate lists), boxes ((N, 4) array or list "
                    "of 4-lists) or uncompressed RLEs (dicts with 'size' and a list of 'counts')")
