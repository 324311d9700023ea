"""Hostile inputs for every public op, run by test_fuzz.py in child processes.

Each case is a function that calls an op with an input no op may accept. The child prints one line
per case: ``REJECTED`` (a ValueError / TypeError, the contract), ``ACCEPTED`` (the op returned:
silent acceptance), or ``OTHER <type>: <message>`` (an error of another kind). A crash or a hang
kills the child; the parent then names the case that was running. ``MODES``: each case runs on the
compiled kernels and on the pure-PyTorch references (cases marked ``ops_only`` call
``torch.ops.ssrvg`` directly and run on the compiled kernels alone).

Run by hand: ``python python_tests/fuzz_cases.py compiled [first_case_index]``.
"""

from __future__ import annotations

import math
import sys

import torch

I64 = 2**63 - 1
CASES: list[tuple[str, bool, object]] = []  # (name, ops_only, fn)


def case(name, ops_only=False):
    def wrap(fn):
        CASES.append((name, ops_only, fn))
        return fn
    return wrap


def _t(*v):
    return torch.tensor(list(v), dtype=torch.int64)


def _rle():
    from ssrvg_ext.ops import rle
    return rle


def _all_rle_ops(r):
    """Every RLE entry point on one RLE dict; each must reject it."""
    rle = _rle()
    fns = [lambda: rle.decode(r), lambda: rle.area(r), lambda: rle.to_bbox(r), lambda: rle.merge([r, r]),
           lambda: rle.merge([r, r], intersect=True), lambda: rle.iou([r], [r]), lambda: rle.frPyObjects_uncompressed(r)]
    for i, f in enumerate(fns):
        try:
            f()
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"RLE entry point {i} accepted {r!r}")
    raise ValueError("all rejected")


# ---- RLE dicts through the public API ----------------------------------------------------------
for _name, _r in [
    ("rle int64-wrapping counts", {"size": [2, 2], "counts": [1, I64, I64, 5]}),
    ("rle wrapping counts, long", {"size": [3, 3], "counts": [I64, I64, 11]}),
    ("rle size overflow h*w", {"size": [2**32, 2**32], "counts": "0"}),
    ("rle size overflow h*w list", {"size": [2**32, 2**32], "counts": [0]}),
    ("rle size beyond int64", {"size": [2**64, 1], "counts": [0]}),
    ("rle negative count", {"size": [2, 2], "counts": [1, -1, 4]}),
    ("rle negative size", {"size": [-2, -2], "counts": [4]}),
    ("rle float counts", {"size": [2, 2], "counts": [1.5, 2.5]}),
    ("rle float size", {"size": [2.5, 2], "counts": [5]}),
    ("rle string size", {"size": ["2", "2"], "counts": [4]}),
    ("rle bool counts", {"size": [1, 1], "counts": [True]}),
    ("rle three-element size", {"size": [2, 2, 2], "counts": [8]}),
    ("rle counts short of h*w", {"size": [2, 2], "counts": [1, 2]}),
    ("rle counts past h*w", {"size": [2, 2], "counts": [1, 2, 3]}),
    ("rle empty counts list", {"size": [2, 2], "counts": []}),
    ("rle string ends mid-number", {"size": [2, 2], "counts": "P"}),
    ("rle string bad character", {"size": [2, 2], "counts": "1\x7f"}),
    ("rle string non-ascii", {"size": [2, 2], "counts": "4é"}),
    ("rle string too-long number", {"size": [2, 2], "counts": "PPPPPPPPPPPPPPP1"}),
    ("rle string negative delta", {"size": [4, 4], "counts": "0a"}),
    ("rle string huge delta overflow", {"size": [2**31, 2**31], "counts": "0_oooooooooo?_oooooooooo?"}),
    ("rle counts float ndarray-like tensor", {"size": [2, 2], "counts": torch.tensor([1.0, 3.0])}),
    ("rle counts as dict", {"size": [2, 2], "counts": {"a": 4}}),
    ("rle missing size", {"counts": [4]}),
]:
    case(_name)(lambda r=_r: _all_rle_ops(r))


@case("rle iscrowd flag 2")
def _():
    r = _rle().encode(torch.ones(1, 2, 2, dtype=torch.uint8))
    _rle().iou(r, r, [2])


@case("rle iscrowd float")
def _():
    r = _rle().encode(torch.ones(1, 2, 2, dtype=torch.uint8))
    _rle().iou(r, r, [0.5])


@case("rle merge of different sizes")
def _():
    rle = _rle()
    rle.merge([{"size": [2, 2], "counts": [4]}, {"size": [1, 4], "counts": [4]}])


@case("rle decode of mixed sizes")
def _():
    _rle().decode([{"size": [2, 2], "counts": [4]}, {"size": [1, 4], "counts": [4]}])


@case("rle encode float masks")
def _():
    _rle().encode(torch.ones(1, 2, 2))


@case("rle encode 4-d masks")
def _():
    _rle().encode(torch.ones(1, 1, 2, 2, dtype=torch.uint8))


@case("rle counts_to_string negative / float")
def _():
    rle = _rle()
    for bad in ([1, -5], [1.5], [-(2**63)]):
        try:
            rle.counts_to_string(bad)
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"accepted {bad}")
    raise ValueError("all rejected")


@case("mask_iou mismatched H, W")
def _():
    _rle().mask_iou(torch.ones(1, 2, 2, dtype=torch.uint8), torch.ones(1, 2, 3, dtype=torch.uint8))


@case("mask_iou float masks")
def _():
    _rle().mask_iou(torch.ones(1, 2, 2), torch.ones(1, 2, 2))


@case("mask_iou iscrowd wrong length")
def _():
    _rle().mask_iou(torch.ones(1, 2, 2, dtype=torch.uint8), torch.ones(2, 2, 2, dtype=torch.uint8), [0])


# ---- RLE ops called directly (the schema level) -------------------------------------------------
ops = torch.ops.ssrvg


@case("op rle_decode wrapping counts", ops_only=True)
def _():
    ops.rle_decode(_t(1, I64, I64, 5), _t(0, 4), 2, 2)


@case("op rle_decode h*w overflow", ops_only=True)
def _():
    ops.rle_decode(_t(0), _t(0, 1), 2**40, 2**40)


@case("op rle_decode N*h*w overflow", ops_only=True)
def _():
    ops.rle_decode(_t(2**62, 2**62), _t(0, 1, 2), 2**31, 2**31)  # h*w fits int64, 2*h*w does not


@case("op rle_decode negative h", ops_only=True)
def _():
    ops.rle_decode(_t(0), _t(0, 1), -1, 0)


@case("op rle_decode offsets decreasing", ops_only=True)
def _():
    ops.rle_decode(_t(4, 0), _t(0, 2, 1), 2, 2)


@case("op rle_decode offsets past counts", ops_only=True)
def _():
    ops.rle_decode(_t(4), _t(0, 5), 2, 2)


@case("op rle_decode offsets start negative", ops_only=True)
def _():
    ops.rle_decode(_t(4), _t(-1, 1), 2, 2)


@case("op rle_decode int32 counts", ops_only=True)
def _():
    ops.rle_decode(torch.tensor([4], dtype=torch.int32), _t(0, 1), 2, 2)


@case("op rle_decode expanded bad offsets", ops_only=True)
def _():
    ops.rle_decode(_t(4), torch.tensor([1], dtype=torch.int64).expand(2), 2, 2)


@case("op rle_area negative counts", ops_only=True)
def _():
    ops.rle_area(_t(1, -3, 6), _t(0, 3))


@case("op rle_area int64 overflow", ops_only=True)
def _():
    ops.rle_area(_t(0, I64, I64), _t(0, 3))


@case("op rle_to_string negative counts", ops_only=True)
def _():
    ops.rle_to_string(_t(5, -(2**63), 3), _t(0, 3))


@case("op rle_from_string sizes wrong shape", ops_only=True)
def _():
    ops.rle_from_string(torch.tensor([52], dtype=torch.uint8), _t(0, 1), _t(2, 2))


@case("op rle_from_string char_offsets wrong", ops_only=True)
def _():
    ops.rle_from_string(torch.tensor([52], dtype=torch.uint8), _t(0, 3), _t(2, 2).reshape(1, 2))


@case("op rle_merge wrapping counts", ops_only=True)
def _():
    ops.rle_merge(_t(1, I64, I64, 5, 4), _t(0, 4, 5), _t(2, 2, 2, 2).reshape(2, 2), False)


@case("op rle_iou wrapping counts", ops_only=True)
def _():
    c, o, s = _t(1, I64, I64, 5), _t(0, 4), _t(2, 2).reshape(1, 2)
    ops.rle_iou(c, o, s, c, o, s, torch.zeros(0, dtype=torch.uint8))


@case("op rle_to_bbox size overflow", ops_only=True)
def _():
    ops.rle_to_bbox(_t(0), _t(0, 1), _t(2**32, 2**32).reshape(1, 2))


@case("op rle_check sum wraps to h*w", ops_only=True)
def _():
    ops.rle_check(_t(2**62, 2**62, 2**62, 2**62, 4), _t(0, 5), _t(2, 2).reshape(1, 2))


# ---- multi-scale deformable attention -----------------------------------------------------------
def _msda(value=None, shapes=None, starts=None, loc=None, attn=None):
    from ssrvg_ext.ops.ms_deform_attn import ms_deform_attn
    value = value if value is not None else torch.zeros(1, 4, 1, 2)
    shapes = shapes if shapes is not None else _t(2, 2).reshape(1, 2)
    starts = starts if starts is not None else _t(0)
    L = shapes.shape[0] if shapes.dim() == 2 else 1
    loc = loc if loc is not None else torch.rand(1, 3, 1, L, 2, 2)
    attn = attn if attn is not None else torch.rand(1, 3, 1, L, 2)
    return ms_deform_attn(value, shapes, starts, loc, attn)


case("msda H*W overflow, empty value")(lambda: _msda(value=torch.zeros(1, 0, 1, 2), shapes=_t(2**32, 2**32).reshape(1, 2)))
case("msda H*W wraps to S")(lambda: _msda(shapes=_t(2**62, 4, 2, 2).reshape(2, 2), starts=_t(0, 0)))
case("msda total wraps")(lambda: _msda(shapes=_t(2**31, 2**31, 2**31, 2**31, 2, 2).reshape(3, 2), starts=_t(0, 2**62, 2**63 - 4)))
case("msda negative shape")(lambda: _msda(shapes=_t(-2, -2).reshape(1, 2)))
case("msda zero shape")(lambda: _msda(value=torch.zeros(1, 0, 1, 2), shapes=_t(0, 5).reshape(1, 2)))
case("msda start inconsistent")(lambda: _msda(starts=_t(1)))
case("msda float shapes")(lambda: _msda(shapes=torch.tensor([[2.0, 2.0]])))
case("msda S mismatch")(lambda: _msda(value=torch.zeros(1, 5, 1, 2)))
case("msda loc wrong shape")(lambda: _msda(loc=torch.rand(1, 3, 1, 1, 2, 3)))
case("msda attn wrong shape")(lambda: _msda(attn=torch.rand(1, 3, 1, 1, 3)))
case("msda int value")(lambda: _msda(value=torch.zeros(1, 4, 1, 2, dtype=torch.int64)))
case("msda 3-d value")(lambda: _msda(value=torch.zeros(4, 1, 2)))


@case("op msda backward grad wrong shape", ops_only=True)
def _():
    ops.ms_deform_attn_backward(torch.zeros(1, 3, 5), torch.zeros(1, 4, 1, 2), _t(2, 2).reshape(1, 2), _t(0),
                                torch.rand(1, 3, 1, 1, 2, 2), torch.rand(1, 3, 1, 1, 2))


# ---- mask losses and post-processing ------------------------------------------------------------
def _sums(logits=None, targets=None, valid=None, alpha=0.25, gamma=2.0):
    from ssrvg_ext.ops.mask_loss import upsampled_mask_sums
    logits = logits if logits is not None else torch.zeros(2, 3, 3)
    targets = targets if targets is not None else torch.zeros(2, 6, 6, dtype=torch.uint8)
    return upsampled_mask_sums(logits, targets, valid, alpha, gamma)


case("loss gamma < 0")(lambda: _sums(gamma=-1.0))
case("loss gamma NaN")(lambda: _sums(gamma=math.nan))
case("loss gamma inf")(lambda: _sums(gamma=math.inf))
case("loss alpha NaN")(lambda: _sums(alpha=math.nan))
case("loss alpha > 1")(lambda: _sums(alpha=2.0))
case("loss int logits")(lambda: _sums(logits=torch.zeros(2, 3, 3, dtype=torch.int64)))
case("loss float targets")(lambda: _sums(targets=torch.zeros(2, 6, 6)))
case("loss batch mismatch")(lambda: _sums(targets=torch.zeros(3, 6, 6, dtype=torch.uint8)))
case("loss valid shape")(lambda: _sums(valid=torch.ones(2, 5, 6, dtype=torch.uint8)))
case("loss empty target size")(lambda: _sums(targets=torch.zeros(2, 0, 6, dtype=torch.uint8)))


@case("loss num_masks 0")
def _():
    from ssrvg_ext.ops.mask_loss import upsampled_mask_loss
    upsampled_mask_loss(torch.zeros(2, 3, 3), torch.zeros(2, 6, 6, dtype=torch.uint8), num_masks=0)


@case("loss num_masks NaN")
def _():
    from ssrvg_ext.ops.mask_loss import upsampled_mask_loss
    upsampled_mask_loss(torch.zeros(2, 3, 3), torch.zeros(2, 6, 6, dtype=torch.uint8), num_masks=torch.tensor(math.nan))


@case("loss weight NaN")
def _():
    from ssrvg_ext.ops.mask_loss import upsampled_mask_loss
    upsampled_mask_loss(torch.zeros(2, 3, 3), torch.zeros(2, 6, 6, dtype=torch.uint8), losses={"dice": math.nan})


@case("loss unknown term")
def _():
    from ssrvg_ext.ops.mask_loss import upsampled_mask_loss
    upsampled_mask_loss(torch.zeros(2, 3, 3), torch.zeros(2, 6, 6, dtype=torch.uint8), losses={"dcie": 1.0})


def _loss_op(terms=(0,), weights=(1.0,), num_masks=1.0, logits=None, valid=None):
    logits = logits if logits is not None else torch.zeros(2, 3, 3)
    return ops.upsampled_mask_loss(logits, torch.zeros(2, 6, 6, dtype=torch.uint8), valid, list(terms), list(weights),
                                   0.25, 2.0, num_masks)


case("op one-op loss term out of range", ops_only=True)(lambda: _loss_op(terms=(7,)))
case("op one-op loss huge term", ops_only=True)(lambda: _loss_op(terms=(2**62,)))
case("op one-op loss lengths differ", ops_only=True)(lambda: _loss_op(terms=(0, 1)))
case("op one-op loss no terms", ops_only=True)(lambda: _loss_op(terms=(), weights=()))
case("op one-op loss inf weight", ops_only=True)(lambda: _loss_op(weights=(math.inf,)))
case("op one-op loss num_masks -1", ops_only=True)(lambda: _loss_op(num_masks=-1.0))
case("op one-op loss valid shape", ops_only=True)(lambda: _loss_op(valid=torch.ones(2, 6, 5, dtype=torch.uint8)))


@case("op one-op loss backward stats wrong shape", ops_only=True)
def _():
    ops.upsampled_mask_loss_backward(torch.tensor(1.0), torch.zeros(4), torch.zeros(2, 5), torch.zeros(2, 3, 3),
                                     torch.zeros(2, 6, 6, dtype=torch.uint8), None, [0], [1.0], 0.25, 2.0, 1.0)


@case("op one-op loss backward grad_values wrong shape", ops_only=True)
def _():
    ops.upsampled_mask_loss_backward(torch.tensor(1.0), torch.zeros(3), torch.zeros(2, 6), torch.zeros(2, 3, 3),
                                     torch.zeros(2, 6, 6, dtype=torch.uint8), None, [0], [1.0], 0.25, 2.0, 1.0)


@case("op one-op loss backward int stats", ops_only=True)
def _():
    ops.upsampled_mask_loss_backward(torch.tensor(1.0), torch.zeros(4), torch.zeros(2, 6, dtype=torch.int64),
                                     torch.zeros(2, 3, 3), torch.zeros(2, 6, 6, dtype=torch.uint8), None, [0], [1.0],
                                     0.25, 2.0, 1.0)


@case("op loss backward grad wrong shape", ops_only=True)
def _():
    ops.upsampled_mask_sums_backward(torch.zeros(2, 4), torch.zeros(2, 3, 3), torch.zeros(2, 6, 6, dtype=torch.uint8),
                                     None, 0.25, 2.0)


def _post(**kw):
    from ssrvg_ext.ops.mask_postprocess import mask_postprocess
    args = dict(logits=torch.zeros(1, 4, 4), input_size=(16, 16), valid_sizes=[(16, 16)], orig_sizes=[(8, 8)])
    args.update(kw)
    return mask_postprocess(**args)


case("postprocess crop larger than input")(lambda: _post(valid_sizes=[(20, 16)]))
case("postprocess output overflow")(lambda: _post(orig_sizes=[(2**40, 2**40)]))
case("postprocess threshold NaN")(lambda: _post(threshold=math.nan))
case("postprocess negative input")(lambda: _post(input_size=(-16, 16)))
case("postprocess float sizes")(lambda: _post(orig_sizes=[(8.5, 8)]))
case("postprocess too few sizes")(lambda: _post(orig_sizes=[]))


def run(mode: str, start: int = 0) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from ssrvg_ext import extension

    for i in range(start, len(CASES)):
        name, ops_only, fn = CASES[i]
        print(f"START {i}", flush=True)
        if ops_only and mode != "compiled":
            verdict = "SKIPPED"
        else:
            try:
                with extension.force_reference(mode == "reference"):
                    fn()
                verdict = "ACCEPTED"
            except (ValueError, TypeError):
                verdict = "REJECTED"
            except AssertionError as e:  # a multi-entry case found one that accepted
                verdict = f"ACCEPTED ({e})"
            except Exception as e:  # noqa: BLE001
                verdict = f"OTHER {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"RESULT {i} {verdict}", flush=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0)
