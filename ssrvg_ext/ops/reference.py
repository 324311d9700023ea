"""Pure-PyTorch (and pure-Python) references of every ssrvg op.

Each function has the signature of its op in csrc/ops.cpp. They are the test oracles for the
compiled kernels and the fallback when the compiled library is missing: slow, simple, and written
straight from the semantics in docs/design.md rather than from the kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# =============================================================================================
# COCO RLE (docs/design.md section 3)


def _offsets_ok(counts: torch.Tensor, offsets: torch.Tensor) -> list[int]:
    if counts.dtype != torch.int64 or offsets.dtype != torch.int64:
        raise TypeError(f"counts and offsets must be int64; got {counts.dtype} and {offsets.dtype}")
    o = offsets.tolist()
    if len(o) < 1 or o[0] != 0 or o[-1] != counts.numel() or any(b < a for a, b in zip(o, o[1:])):
        raise ValueError("offsets must run non-decreasing from 0 to the number of counts")
    return o


def _split(counts: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    o = _offsets_ok(counts, offsets)
    c = counts.tolist()
    return [c[o[i]:o[i + 1]] for i in range(len(o) - 1)]


_INT64_MAX = 2**63 - 1


def rle_check(counts: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor) -> None:
    if sizes.dtype != torch.int64 or sizes.dim() != 2 or sizes.shape != (offsets.numel() - 1, 2):
        raise ValueError(f"sizes must be int64 of shape ({offsets.numel() - 1}, 2); got {sizes.dtype} {tuple(sizes.shape)}")
    for i, (cn, (h, w)) in enumerate(zip(_split(counts, offsets), sizes.tolist())):
        if h < 0 or w < 0:
            raise ValueError(f"RLE {i}: size must be non-negative; got [{h}, {w}]")
        if h * w > _INT64_MAX:
            raise ValueError(f"RLE {i}: size H x W = {h} x {w} overflows int64")
        if not cn:
            raise ValueError(f"RLE {i}: counts are empty (a valid RLE has at least one)")
        if min(cn) < 0:
            raise ValueError(f"RLE {i}: a count is negative")
        if sum(cn) != h * w:
            raise ValueError(f"RLE {i}: counts sum to {sum(cn)} but the {h}x{w} mask has {h * w} pixels")


def _pack_lists(parts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    counts = torch.tensor([v for p in parts for v in p], dtype=torch.int64)
    offsets = torch.tensor([0] + [len(p) for p in parts], dtype=torch.int64).cumsum(0)
    return counts, offsets


def rle_encode(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if masks.dtype not in (torch.uint8, torch.bool):
        raise TypeError(f"masks must be a uint8 or bool tensor; got {masks.dtype}")
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape (N, H, W); got {tuple(masks.shape)}")
    n, h, w = masks.shape
    parts = []
    for i in range(n):
        flat = (masks[i] != 0).t().reshape(-1)  # column-major pixel order
        change = torch.nonzero(flat[1:] != flat[:-1]).reshape(-1) + 1
        if flat.numel() and bool(flat[0]):
            change = torch.cat([change.new_zeros(1), change])
        edges = torch.cat([change.new_zeros(1), change, change.new_full((1,), h * w)])
        parts.append(torch.diff(edges).cpu())
    counts = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
    offsets = torch.tensor([0] + [len(p) for p in parts], dtype=torch.int64).cumsum(0)
    return counts.to(masks.device), offsets.to(masks.device)


def rle_decode(counts: torch.Tensor, offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
    device = counts.device
    counts, offsets = counts.cpu(), offsets.cpu()
    n = offsets.numel() - 1
    rle_check(counts, offsets, torch.tensor([[h, w]] * n, dtype=torch.int64).reshape(-1, 2))
    out = torch.zeros(n, h, w, dtype=torch.uint8)
    for i, cn in enumerate(_split(counts, offsets)):
        c = torch.tensor(cn, dtype=torch.int64)
        values = (torch.arange(len(cn)) % 2).to(torch.uint8)
        out[i] = torch.repeat_interleave(values, c).reshape(w, h).t()
    return out.to(device)


def rle_to_string(counts: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    strings = []
    for j, cn in enumerate(_split(counts, offsets)):
        if cn and min(cn) < 0:
            raise ValueError(f"RLE {j}: a count is negative")
        s = bytearray()
        for i, x in enumerate(cn):
            if i > 2:
                x -= cn[i - 2]
            more = True
            while more:
                c = x & 0x1F
                x >>= 5  # Python's >> on ints is arithmetic
                more = (x != -1) if (c & 0x10) else (x != 0)
                if more:
                    c |= 0x20
                s.append(c + 48)
        strings.append(list(s))
    chars, char_offsets = _pack_lists(strings)
    return chars.to(torch.uint8), char_offsets


def rle_from_string(chars: torch.Tensor, char_offsets: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if chars.dtype != torch.uint8:
        raise TypeError(f"chars must be uint8; got {chars.dtype}")
    o = _offsets_ok(chars.to(torch.int64), char_offsets)
    data = chars.tolist()
    parts = []
    for i, (h, w) in enumerate(sizes.tolist()):
        if h < 0 or w < 0:
            raise ValueError(f"RLE {i}: size must be non-negative; got [{h}, {w}]")
        if h * w > _INT64_MAX:
            raise ValueError(f"RLE {i}: size H x W = {h} x {w} overflows int64")
        cn, p, end = [], o[i], o[i + 1]
        while p < end:
            x = k = 0
            more = True
            while more:
                if p >= end:
                    raise ValueError(f"RLE {i}: compressed counts end in the middle of a number")
                c = data[p] - 48
                if not 0 <= c < 64:
                    raise ValueError(f"RLE {i}: invalid character {data[p]} at position {p - o[i]}")
                if k >= 12:
                    raise ValueError(f"RLE {i}: a count is too long (more than 12 groups)")
                x |= (c & 0x1F) << (5 * k)
                more = bool(c & 0x20)
                p += 1
                k += 1
                if not more and (c & 0x10):
                    x |= -1 << (5 * k)
            if len(cn) > 2:
                x += cn[-2]
            if x > _INT64_MAX:
                raise ValueError(f"RLE {i}: count {len(cn)} overflows int64")
            if x < 0:
                raise ValueError(f"RLE {i}: count {len(cn)} decodes to a negative value ({x})")
            cn.append(x)
            if sum(cn) > h * w:
                raise ValueError(f"RLE {i}: counts overrun the {h}x{w} mask")
        if sum(cn) != h * w:
            raise ValueError(f"RLE {i}: counts sum to {sum(cn)} but the {h}x{w} mask has {h * w} pixels")
        parts.append(cn or [0])
    return _pack_lists(parts)


def rle_area(counts: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    parts = _split(counts, offsets)
    for i, cn in enumerate(parts):
        if cn and min(cn) < 0:
            raise ValueError(f"RLE {i}: a count is negative")
        if sum(cn) > _INT64_MAX:
            raise ValueError(f"RLE {i}: counts sum past the int64 range")
    return torch.tensor([sum(cn[1::2]) for cn in parts], dtype=torch.int64)


def _bbox(cn: list[int], h: int, w: int) -> list[float]:
    """[x, y, w, h] of the mask a valid RLE encodes (empty runs anywhere allowed); [0]*4 when empty."""
    xs, ys, xe, ye, start = w, h, -1, -1, 0
    for j, n in enumerate(cn):
        if j % 2 == 1 and n > 0:
            (x0, y0), (x1, y1) = divmod(start, h), divmod(start + n - 1, h)
            xs, xe = min(xs, x0), max(xe, x1)
            if x0 != x1:  # a run crossing a column covers the last row of one, the first of the next
                ys, ye = 0, h - 1
            else:
                ys, ye = min(ys, y0), max(ye, y1)
        start += n
    if xe < 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs), float(ys), float(xe - xs + 1), float(ye - ys + 1)]


def rle_to_bbox(counts: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    rle_check(counts, offsets, sizes)
    boxes = [_bbox(cn, h, w) for cn, (h, w) in zip(_split(counts, offsets), sizes.tolist())]
    return torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)


def _decode_one(cn: list[int]) -> torch.Tensor:
    """Column-major flat bool mask of one RLE."""
    values = (torch.arange(len(cn)) % 2).bool()
    return torch.repeat_interleave(values, torch.tensor(cn, dtype=torch.int64))


def rle_merge(counts: torch.Tensor, offsets: torch.Tensor, sizes: torch.Tensor, intersect: bool) -> torch.Tensor:
    rle_check(counts, offsets, sizes)
    parts, s = _split(counts, offsets), sizes.tolist()
    if not parts:
        raise ValueError("rle_merge needs at least one RLE")
    if any(sz != s[0] for sz in s):
        raise ValueError(f"rle_merge: all RLEs must have one size; got {s}")
    flat = _decode_one(parts[0])
    for cn in parts[1:]:
        flat = (flat & _decode_one(cn)) if intersect else (flat | _decode_one(cn))
    h, w = s[0]
    return rle_encode(flat.reshape(w, h).t().unsqueeze(0).to(torch.uint8))[0]


def rle_iou(dc, do, ds, gc, go, gs, iscrowd) -> torch.Tensor:
    rle_check(dc, do, ds)
    rle_check(gc, go, gs)
    dts, gts = _split(dc, do), _split(gc, go)
    dsz, gsz = ds.tolist(), gs.tolist()
    crowd = iscrowd.tolist() if iscrowd.numel() else [0] * len(gts)
    out = torch.zeros(len(dts), len(gts), dtype=torch.float64)
    for d, (dcn, (dh, dw)) in enumerate(zip(dts, dsz)):
        D = _bbox(dcn, dh, dw)
        for g, (gcn, (gh, gw)) in enumerate(zip(gts, gsz)):
            G = _bbox(gcn, gh, gw)
            bw = min(D[0] + D[2], G[0] + G[2]) - max(D[0], G[0])
            bh = min(D[1] + D[3], G[1] + G[3]) - max(D[1], G[1])
            if bw <= 0 or bh <= 0:
                continue  # boxes do not overlap: 0, as pycocotools' bbox pre-filter
            if (dh, dw) != (gh, gw):
                out[d, g] = -1.0
                continue
            a, b = _decode_one(dcn), _decode_one(gcn)
            inter = int((a & b).sum())
            if inter == 0:
                continue
            union = int(a.sum()) if crowd[g] else int((a | b).sum())
            out[d, g] = inter / union
    return out


def mask_iou(a: torch.Tensor, b: torch.Tensor, iscrowd: torch.Tensor) -> torch.Tensor:
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in (torch.uint8, torch.bool):
            raise TypeError(f"{name} must be a uint8 or bool tensor; got {t.dtype}")
        if t.dim() != 3:
            raise ValueError(f"{name} must have shape (N, H, W); got {tuple(t.shape)}")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou: a and b must have the same (H, W); got {tuple(a.shape)} and {tuple(b.shape)}")
    fa, fb = (a != 0).flatten(1).double(), (b != 0).flatten(1).double()  # exact below 2**53 pixels
    inter = torch.cat([fa[i:i + 64] @ fb.t() for i in range(0, fa.shape[0], 64)]) if fa.shape[0] else fa.new_zeros(0, fb.shape[0])
    area_a, area_b = fa.sum(1, keepdim=True), fb.sum(1).unsqueeze(0)
    union = area_a + area_b - inter
    if iscrowd.numel():
        union = torch.where(iscrowd.to(a.device).bool().unsqueeze(0), area_a.expand_as(union), union)
    return torch.where(inter > 0, inter / union.clamp_min(1), torch.zeros_like(inter))


# =============================================================================================
# Fused upsampled mask loss (docs/design.md section 4): the unfused computation


def _math_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def _check_loss_inputs(logits, targets, valid, alpha: float, gamma: float) -> None:
    """The checks of the compiled kernels (csrc/mask_loss/mask_loss.h), same errors."""
    if logits.dim() != 3 or targets.dim() != 3 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"logits (B, h, w) and targets (B, H, W) must share B; got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be float64/float32/float16/bfloat16; got {logits.dtype}")
    if targets.dtype not in (torch.uint8, torch.bool):
        raise TypeError(f"targets must be uint8 or bool (binary masks); got {targets.dtype}")
    if min(logits.shape[1:]) < 1 or min(targets.shape[1:]) < 1:
        raise ValueError(f"logits and targets must have spatial sizes >= 1; got {tuple(logits.shape)}, {tuple(targets.shape)}")
    if valid is not None:
        if valid.dtype not in (torch.uint8, torch.bool):
            raise TypeError(f"valid must be uint8 or bool; got {valid.dtype}")
        if valid.shape != targets.shape:
            raise ValueError(f"valid must have the shape of targets {tuple(targets.shape)}; got {tuple(valid.shape)}")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0; got {gamma}")
    if not (math.isfinite(alpha) and alpha <= 1):
        raise ValueError(f"alpha must be a finite number <= 1 (< 0: no alpha weighting); got {alpha}")


def upsampled_mask_sums(logits, targets, valid, alpha: float, gamma: float) -> torch.Tensor:
    _check_loss_inputs(logits, targets, valid, alpha, gamma)
    z = F.interpolate(logits.to(_math_dtype(logits)).unsqueeze(1), size=tuple(targets.shape[1:]),
                      mode="bilinear", align_corners=False).squeeze(1)
    t = targets.to(z.dtype)
    v = valid.to(z.dtype) if valid is not None else torch.ones_like(t)
    p = torch.sigmoid(z)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        focal = focal * (alpha * t + (1 - alpha) * (1 - t))
    terms = [p * t, p, t, bce, focal]
    return torch.stack([(x * v).flatten(1).sum(1) for x in terms], 1)


def upsampled_mask_sums_backward(grad, logits, targets, valid, alpha: float, gamma: float) -> torch.Tensor:
    if grad.shape != (logits.shape[0], 5):
        raise ValueError(f"grad must have shape ({logits.shape[0]}, 5); got {tuple(grad.shape)}")
    with torch.enable_grad():
        x = logits.detach().requires_grad_(True)
        sums = upsampled_mask_sums(x, targets, valid, alpha, gamma)
        (g,) = torch.autograd.grad(sums, x, grad.to(sums.dtype))
    return g


_TERMS = ("dice", "soft_iou", "bce", "focal")


def _check_terms(terms, weights, num_masks):
    if not terms:
        raise ValueError("upsampled_mask_loss needs at least one term")
    if len(terms) != len(weights):
        raise ValueError(f"terms and weights must have one length; got {len(terms)} and {len(weights)}")
    if not (math.isfinite(num_masks) and num_masks > 0):
        raise ValueError(f"num_masks must be a finite number > 0; got {num_masks}")
    for k, w in zip(terms, weights):
        if not 0 <= k < 4:
            raise ValueError(f"a term must be 0 (dice), 1 (soft_iou), 2 (bce) or 3 (focal); got {k}")
        if not math.isfinite(w):
            raise ValueError(f"loss weights must be finite; got {w} for term {k}")
    if len(set(terms)) != len(terms):
        raise ValueError(f"a term is given twice: {list(terms)}")


def upsampled_mask_loss(logits, targets, valid, terms, weights, alpha: float, gamma: float, num_masks: float):
    """(loss, values (4,), stats (B, 6)) as the compiled op: the terms from the reference sums."""
    _check_terms(terms, weights, num_masks)
    sums = upsampled_mask_sums(logits, targets, valid, alpha, gamma)
    n = (valid.flatten(1).sum(1) if valid is not None else
         torch.full((targets.shape[0],), targets.shape[1] * targets.shape[2], device=targets.device)).to(sums.dtype)
    stats = torch.cat([sums, n[:, None]], 1)
    pt, p, t, bce, focal = sums.unbind(1)
    nn_ = n.clamp_min(1)
    per = {0: lambda: 1 - (2 * pt + 1) / (p + t + 1), 1: lambda: 1 - (pt + 1) / (p + t - pt + 1),
           2: lambda: bce / nn_, 3: lambda: focal / nn_}
    values = torch.stack([per[k]().sum() / num_masks if k in terms else sums.new_zeros(()) for k in range(4)])
    loss = sum((w * values[k] for k, w in zip(terms, weights)), sums.new_zeros(()))
    return loss, values, stats.detach()


def upsampled_mask_loss_backward(grad_loss, grad_values, stats, logits, targets, valid, terms, weights, alpha: float,
                                 gamma: float, num_masks: float) -> torch.Tensor:
    with torch.enable_grad():
        x = logits.detach().requires_grad_(True)
        loss, values, _ = upsampled_mask_loss(x, targets, valid, terms, weights, alpha, gamma, num_masks)
        (g,) = torch.autograd.grad([loss, values], x, [grad_loss.to(loss.dtype).reshape(()), grad_values.to(values.dtype)])
    return g


def mask_postprocess(logits, in_h: int, in_w: int, crop_h: int, crop_w: int, out_h: int, out_w: int,
                     threshold: float) -> torch.Tensor:
    if logits.dim() != 3 or min(logits.shape[1:]) < 1 or not logits.is_floating_point():
        raise ValueError(f"logits must be floating point of shape (B, h, w) with h, w >= 1; got {logits.dtype} "
                         f"{tuple(logits.shape)}")
    if not (in_h > 0 and in_w > 0 and 0 < crop_h <= in_h and 0 < crop_w <= in_w and out_h > 0 and out_w > 0):
        raise ValueError(f"sizes must be positive with the crop inside the input; got input {in_h}x{in_w}, "
                         f"crop {crop_h}x{crop_w}, output {out_h}x{out_w}")
    if logits.shape[0] * out_h * out_w > _INT64_MAX or in_h * in_w > _INT64_MAX:
        raise ValueError(f"output size {logits.shape[0]} x {out_h} x {out_w} overflows int64")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite; got {threshold}")
    z = F.interpolate(logits.to(_math_dtype(logits)).unsqueeze(1), size=(in_h, in_w), mode="bilinear",
                      align_corners=False)[..., :crop_h, :crop_w]
    z = F.interpolate(z, size=(out_h, out_w), mode="bilinear", align_corners=False).squeeze(1)
    return (z > threshold).to(torch.uint8)


# =============================================================================================
# Multi-scale deformable attention (docs/design.md section 5): grid_sample per level


def _check_msda(value, spatial_shapes, level_start_index, loc, attn) -> list[tuple[int, int]]:
    """The checks of the compiled kernels (csrc/ms_deform_attn/ms_deform_attn.h); the level shapes."""
    if value.dim() != 4:
        raise ValueError(f"value must have shape (N, S, M, D); got {tuple(value.shape)}")
    for name, t in (("value", value), ("sampling_locations", loc), ("attention_weights", attn)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point; got {t.dtype}")
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.dtype != torch.int64:
            raise TypeError(f"{name} must be int64; got {t.dtype}")
    n, s, m, d = value.shape
    if m < 1 or d < 1:
        raise ValueError(f"value must have M >= 1 heads and D >= 1 channels; got {tuple(value.shape)}")
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] < 1:
        raise ValueError(f"spatial_shapes must have shape (L, 2) with L >= 1; got {tuple(spatial_shapes.shape)}")
    nl = spatial_shapes.shape[0]
    if level_start_index.shape != (nl,):
        raise ValueError(f"level_start_index must have shape ({nl},); got {tuple(level_start_index.shape)}")
    if loc.dim() != 6 or loc.shape[0] != n or loc.shape[2] != m or loc.shape[3] != nl or loc.shape[5] != 2 or loc.shape[4] < 1:
        raise ValueError(f"sampling_locations must have shape (N, Lq, M, L, P, 2) = ({n}, Lq, {m}, {nl}, P>=1, 2); "
                         f"got {tuple(loc.shape)}")
    if attn.shape != loc.shape[:5]:
        raise ValueError(f"attention_weights must have shape {tuple(loc.shape[:5])}; got {tuple(attn.shape)}")
    shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    total = 0
    for lvl, ((h, w), start) in enumerate(zip(shapes, level_start_index.tolist())):
        if h < 1 or w < 1:
            raise ValueError(f"spatial_shapes[{lvl}] = ({h}, {w}) must be positive")
        if start != total:
            raise ValueError(f"level_start_index[{lvl}] = {start} is inconsistent with spatial_shapes (expected {total})")
        total += h * w
        if total > s:
            raise ValueError(f"spatial_shapes[{lvl}] = ({h}, {w}) does not fit: the levels up to it cover more than "
                             f"value's S = {s} positions")
    if total != s:
        raise ValueError(f"value has S = {s} positions but spatial_shapes cover {total}")
    return shapes


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> torch.Tensor:
    shapes = _check_msda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    n, s, m, d = value.shape
    _, lq, _, nl, p, _ = sampling_locations.shape
    starts = [int(v) for v in level_start_index.tolist()]
    dtype = torch.promote_types(value.dtype, torch.float32)
    grids = 2 * sampling_locations.to(dtype) - 1  # grid_sample's [-1, 1] with align_corners=False
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = value[:, starts[lvl]:starts[lvl] + h * w].to(dtype)          # N, HW, M, D
        v = v.permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, p, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))  # NM, D, Lq, P
    stacked = torch.stack(sampled, dim=-2).flatten(-2)                    # NM, D, Lq, L*P
    attn = attention_weights.to(dtype).transpose(1, 2).reshape(n * m, 1, lq, nl * p)
    out = (stacked * attn).sum(-1).view(n, m * d, lq).transpose(1, 2)
    return out.contiguous().to(value.dtype)


def ms_deform_attn_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights):
    with torch.enable_grad():
        xs = [t.detach().requires_grad_(True) for t in (value, sampling_locations, attention_weights)]
        out = ms_deform_attn(xs[0], spatial_shapes, level_start_index, xs[1], xs[2])
        return tuple(torch.autograd.grad(out, xs, grad_output))
