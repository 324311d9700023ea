"""Fused upsampled mask loss and fused inference path vs the unfused PyTorch computation."""

import pytest
import torch
import torch.nn.functional as F

from ssrvg_ext import extension
from ssrvg_ext.ops import (mask_postprocess, reference, unfused_mask_losses, upsampled_mask_loss,
                           upsampled_mask_losses, upsampled_mask_sums)
from conftest import requires_cuda

# (h, w) -> (H, W): integer and non-integer scales, tiny inputs, ratio 1 and a downsampling case.
SHAPES = [((16, 16), (64, 64)), ((12, 10), (96, 80)), ((20, 20), (50, 50)), ((7, 13), (480, 640)),
          ((1, 1), (5, 5)), ((9, 11), (9, 11)), ((30, 25), (17, 40)), ((3, 5), (31, 7))]


def make(rng, b, hw, HW, kind="random", dtype=torch.float32, device="cpu"):
    logits = (torch.randn(b, *hw, generator=rng) * 3).to(dtype)
    if kind == "zeros":
        targets = torch.zeros(b, *HW, dtype=torch.uint8)
    elif kind == "ones":
        targets = torch.ones(b, *HW, dtype=torch.uint8)
    else:
        targets = (torch.rand(b, *HW, generator=rng) < torch.rand(b, 1, 1, generator=rng)).to(torch.uint8)
    return logits.to(device), targets.to(device)


def padding_valid(b, HW, device="cpu"):
    v = torch.zeros(b, *HW, dtype=torch.bool)
    for i in range(b):
        v[i, : max(1, HW[0] - 3 * i), : max(1, HW[1] - 2 * i)] = True  # top-left valid, like padding
    return v.to(device)


@pytest.mark.parametrize("hw,HW", SHAPES)
@pytest.mark.parametrize("kind", ["random", "zeros", "ones"])
@pytest.mark.parametrize("with_valid", [False, True])
def test_sums_and_grads_match_unfused(rng, hw, HW, kind, with_valid):
    b = int(torch.randint(1, 5, (1,), generator=rng))
    logits, targets = make(rng, b, hw, HW, kind)
    valid = padding_valid(b, HW) if with_valid else None
    x = logits.clone().requires_grad_(True)
    ours = upsampled_mask_sums(x, targets, valid, 0.25, 2.0)
    # oracle: the unfused computation in float64 on the same float32 inputs (the float32 unfused
    # computation is itself less accurate than the kernel, which sums in double)
    xr = logits.double().requires_grad_(True)
    ref = reference.upsampled_mask_sums(xr, targets, valid, 0.25, 2.0)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-3)
    w = torch.randn(b, 5, generator=rng)
    (ours * w).sum().backward()
    (ref * w.double()).sum().backward()
    scale = float(xr.grad.abs().max())
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-6 * scale + 1e-6)


def test_losses_match_unfused_and_compose(rng):
    logits, targets = make(rng, 6, (20, 24), (80, 96))
    valid = padding_valid(6, (80, 96))
    for v in (None, valid):
        ours, ref = upsampled_mask_losses(logits, targets, v), unfused_mask_losses(logits, targets, v)
        assert set(ours) == {"dice", "soft_iou", "bce", "focal"}
        for k in ours:
            torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6)
    # against hand-written standard formulas
    z = F.interpolate(logits[:, None], (80, 96), mode="bilinear", align_corners=False)[:, 0]
    p, t = z.sigmoid(), targets.float()
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    torch.testing.assert_close(upsampled_mask_losses(logits, targets)["dice"], dice, rtol=1e-5, atol=1e-6)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none").mean((1, 2))
    torch.testing.assert_close(upsampled_mask_losses(logits, targets)["bce"], bce, rtol=1e-5, atol=1e-6)
    total = upsampled_mask_loss(logits, targets, {"dice": 5.0, "bce": 2.0})
    torch.testing.assert_close(total, (5 * dice.sum() + 2 * bce.sum()) / 6, rtol=1e-5, atol=1e-6)


def _standard_terms(logits, targets, valid, alpha=0.25, gamma=2.0):
    """Every term per mask, written out the plain way in float64 (interpolate -> sigmoid -> sums)."""
    z = F.interpolate(logits.double()[:, None], targets.shape[1:], mode="bilinear", align_corners=False)[:, 0]
    t = targets.double()
    v = valid.double() if valid is not None else torch.ones_like(t)
    p = z.sigmoid()
    n = v.sum((1, 2)).clamp_min(1)
    bce = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = bce * (1 - p_t) ** gamma * ((alpha * t + (1 - alpha) * (1 - t)) if alpha >= 0 else 1)
    pt, ps, ts = (p * t * v).sum((1, 2)), (p * v).sum((1, 2)), (t * v).sum((1, 2))
    return {"dice": 1 - (2 * pt + 1) / (ps + ts + 1), "soft_iou": 1 - (pt + 1) / (ps + ts - pt + 1),
            "bce": (bce * v).sum((1, 2)) / n, "focal": (focal * v).sum((1, 2)) / n}


@pytest.mark.parametrize("hw,HW", SHAPES[:5])
@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize("losses", [{"dice": 5.0, "bce": 2.0}, {"focal": 1.5}, {"soft_iou": 1.0, "dice": -0.5},
                                    {"dice": 2.0, "soft_iou": 0.5, "bce": 1.0, "focal": 3.0}, {"bce": 0.0, "dice": 1.0}])
def test_one_op_loss_is_the_weighted_standard_terms(rng, hw, HW, with_valid, losses):
    b = int(torch.randint(1, 5, (1,), generator=rng))
    logits, targets = make(rng, b, hw, HW)
    valid = padding_valid(b, HW) if with_valid else None
    x = logits.clone().requires_grad_(True)
    loss, terms = upsampled_mask_loss(x, targets, losses, valid, num_masks=2.5, return_terms=True)
    xr = logits.double().requires_grad_(True)
    per = _standard_terms(xr, targets, valid)
    want = {k: per[k].sum() / 2.5 for k in losses}
    assert list(terms) == list(losses)
    for k in losses:
        torch.testing.assert_close(terms[k].double(), want[k], rtol=1e-5, atol=1e-6)
    ref_loss = sum(w * want[k] for k, w in losses.items())
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref_loss.backward()
    scale = float(xr.grad.abs().max()) + 1e-12
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-6 * scale + 1e-7)


def test_one_op_terms_carry_their_own_gradients(rng):
    """The criterion trains on the unweighted terms (weighted by its weight dict): their gradients
    through the op's second output must be those of the terms themselves."""
    logits, targets = make(rng, 3, (10, 12), (40, 48))
    valid = padding_valid(3, (40, 48))
    x = logits.clone().requires_grad_(True)
    _, terms = upsampled_mask_loss(x, targets, {"dice": 1.0, "bce": 0.0, "focal": 1.0}, valid, return_terms=True)
    (3 * terms["dice"] + 0.5 * terms["bce"] - terms["focal"]).backward()
    xr = logits.double().requires_grad_(True)
    per = _standard_terms(xr, targets, valid)
    ((3 * per["dice"] + 0.5 * per["bce"] - per["focal"]).sum() / 3).backward()
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-7)


def test_one_op_asks_only_for_what_it_is_given(rng):
    logits, targets = make(rng, 2, (6, 6), (24, 24))
    loss, values, stats = torch.ops.ssrvg.upsampled_mask_loss(logits, targets, None, [0], [2.0], 0.25, 2.0, 2.0) \
        if extension.AVAILABLE else reference.upsampled_mask_loss(logits, targets, None, [0], [2.0], 0.25, 2.0, 2.0)
    assert values.shape == (4,) and stats.shape == (2, 6)
    assert float(values[1]) == float(values[2]) == float(values[3]) == 0.0  # not asked for
    assert float(stats[:, 4].abs().sum()) == 0.0 and torch.equal(stats[:, 5], torch.full((2,), 576.0))
    torch.testing.assert_close(loss, 2 * values[0])


def test_one_op_empty_batch():
    x = torch.zeros(0, 4, 4, requires_grad=True)
    loss, terms = upsampled_mask_loss(x, torch.zeros(0, 8, 8, dtype=torch.uint8), {"dice": 1.0, "focal": 1.0},
                                      return_terms=True)
    assert float(loss.detach()) == 0.0 and float(terms["focal"].detach()) == 0.0
    loss.backward()
    assert x.grad.shape == (0, 4, 4)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)])
def test_one_op_gradcheck_float64(rng, alpha, gamma):
    logits, targets = make(rng, 2, (4, 3), (7, 9), dtype=torch.float64)
    valid = padding_valid(2, (7, 9))
    x = logits.requires_grad_(True)
    for losses in ({"dice": 2.0, "soft_iou": 1.0, "bce": 0.5, "focal": 3.0}, {"bce": 1.0}):
        assert torch.autograd.gradcheck(
            lambda l: upsampled_mask_loss(l, targets, losses, valid, alpha, gamma, num_masks=1.5), (x,))
        assert torch.autograd.gradcheck(
            lambda l: torch.stack(list(upsampled_mask_loss(l, targets, losses, None, alpha, gamma,
                                                           return_terms=True)[1].values())), (x,))


@pytest.mark.skipif(not extension.AVAILABLE, reason="compiled ops not built")
def test_one_op_opcheck(rng):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        logits, targets = make(rng, 3, (5, 6), (12, 17), dtype=dtype)
        valid = padding_valid(3, (12, 17))
        x = logits.requires_grad_(True)
        op = torch.ops.ssrvg.upsampled_mask_loss.default
        torch.library.opcheck(op, (x, targets, valid, [0, 2], [5.0, 2.0], 0.25, 2.0, 3.0))
        torch.library.opcheck(op, (x, targets, None, [3, 1], [1.0, 0.5], -1.0, 0.0, 1.0))
        _, _, stats = op(logits.detach(), targets, valid, [0, 3], [1.0, 1.0], 0.25, 2.0, 3.0)
        sd = torch.float64 if dtype == torch.float64 else torch.float32
        torch.library.opcheck(torch.ops.ssrvg.upsampled_mask_loss_backward.default,
                              (torch.tensor(1.5, dtype=sd), torch.randn(4, dtype=sd), stats, logits.detach(), targets,
                               valid, [0, 3], [1.0, 1.0], 0.25, 2.0, 3.0))


@pytest.mark.parametrize("terms,weights,num_masks,match", [
    ([], [], 1.0, "at least one term"), ([0, 1], [1.0], 1.0, "one length"), ([4], [1.0], 1.0, "a term must be"),
    ([-1], [1.0], 1.0, "a term must be"), ([0, 0], [1.0, 1.0], 1.0, "twice"), ([0], [float("nan")], 1.0, "finite"),
    ([0], [1.0], 0.0, "num_masks"), ([0], [1.0], float("inf"), "num_masks")])
def test_one_op_rejects_bad_terms(terms, weights, num_masks, match):
    logits, targets = torch.zeros(2, 3, 3), torch.zeros(2, 6, 6, dtype=torch.uint8)
    for fn in ([torch.ops.ssrvg.upsampled_mask_loss] if extension.AVAILABLE else []) + [reference.upsampled_mask_loss]:
        with pytest.raises(ValueError, match=match):
            fn(logits, targets, None, terms, weights, 0.25, 2.0, num_masks)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5), (0.25, 0.5)])
def test_gradcheck_float64(rng, alpha, gamma):
    for hw, HW in [((3, 4), (7, 9)), ((5, 5), (5, 5)), ((4, 3), (3, 5)), ((1, 1), (3, 2))]:
        logits, targets = make(rng, 2, hw, HW, dtype=torch.float64)
        valid = padding_valid(2, HW)
        x = logits.requires_grad_(True)
        assert torch.autograd.gradcheck(lambda l: upsampled_mask_sums(l, targets, valid, alpha, gamma), (x,))
        assert torch.autograd.gradcheck(lambda l: upsampled_mask_sums(l, targets.bool(), None, alpha, gamma), (x,))


def test_half_precision_logits(rng):
    logits, targets = make(rng, 3, (10, 12), (40, 48))
    ref = upsampled_mask_sums(logits.float(), targets)
    for dt in (torch.float16, torch.bfloat16):
        x = logits.to(dt).requires_grad_(True)
        out = upsampled_mask_sums(x, targets)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, reference.upsampled_mask_sums(x.float(), targets, None, 0.25, 2.0), rtol=1e-4, atol=1e-2)
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=1.0)
        out.sum().backward()
        assert x.grad.dtype == dt and torch.isfinite(x.grad.float()).all()


def test_deterministic(rng):
    logits, targets = make(rng, 4, (40, 40), (160, 160))
    x = logits.requires_grad_(True)
    runs = []
    for _ in range(2):
        x.grad = None
        s = upsampled_mask_sums(x, targets)
        s.sum().backward()
        runs.append((s.detach().clone(), x.grad.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.skipif(not extension.AVAILABLE, reason="compiled ops not built")
def test_opcheck(rng):
    for dtype in (torch.float32, torch.float64):
        logits, targets = make(rng, 2, (5, 6), (12, 17), dtype=dtype)
        valid = padding_valid(2, (12, 17))
        x = logits.requires_grad_(True)
        torch.library.opcheck(torch.ops.ssrvg.upsampled_mask_sums.default, (x, targets, valid, 0.25, 2.0))
        torch.library.opcheck(torch.ops.ssrvg.upsampled_mask_sums.default, (x, targets, None, -1.0, 0.0))
        torch.library.opcheck(torch.ops.ssrvg.upsampled_mask_sums_backward.default,
                              (torch.randn(2, 5, dtype=dtype), logits.detach(), targets, valid, 0.25, 2.0))
        torch.library.opcheck(torch.ops.ssrvg.mask_postprocess.default, (logits.detach(), 20, 24, 17, 20, 33, 41, 0.0))


def test_compile_fullgraph(rng):
    logits, targets = make(rng, 2, (8, 8), (32, 32))
    fn = torch.compile(lambda l, t: upsampled_mask_loss(l, t, {"dice": 1.0, "focal": 1.0}), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(logits, targets), upsampled_mask_loss(logits, targets, {"dice": 1.0, "focal": 1.0}))


@pytest.mark.parametrize("case", [
    ((40, 40), (160, 160), (160, 130), (375, 500)),   # padded square input, landscape image
    ((7, 13), (28, 52), (20, 52), (480, 640)),
    ((1, 1), (4, 4), (4, 4), (5, 5)),
    ((16, 16), (64, 64), (64, 64), (64, 64)),          # ratio 1 overall
    ((20, 20), (80, 80), (37, 80), (30, 61)),          # downsampling at the end
])
def test_postprocess_equals_interpolate_crop_threshold(rng, case):
    hw, in_size, crop, out = case
    logits = torch.randn(3, *hw, generator=rng) * 4
    thr = float(torch.empty(1).uniform_(-1, 1, generator=rng))
    ours = mask_postprocess(logits, in_size, [crop] * 3, [out] * 3, threshold=thr)
    z = F.interpolate(logits[:, None], in_size, mode="bilinear", align_corners=False)[..., : crop[0], : crop[1]]
    z = F.interpolate(z, out, mode="bilinear", align_corners=False)[:, 0]
    ref = (z > thr).to(torch.uint8)
    away = (z - thr).abs() > 1e-5  # exclude exact ties only
    assert away.float().mean() > 0.999
    for i in range(3):
        assert ours[i].dtype == torch.uint8 and ours[i].shape == out
        assert torch.equal(ours[i][away[i]], ref[i][away[i]])


def test_postprocess_mixed_sizes(rng):
    logits = torch.randn(3, 10, 10, generator=rng)
    outs = mask_postprocess(logits, (40, 40), [(40, 30), (30, 40), (40, 30)], [(300, 225), (90, 120), (300, 225)])
    assert [tuple(o.shape) for o in outs] == [(300, 225), (90, 120), (300, 225)]
    single = mask_postprocess(logits[1:2], (40, 40), [(30, 40)], [(90, 120)])[0]
    assert torch.equal(outs[1], single)


def test_bad_inputs_raise(rng):
    logits, targets = make(rng, 2, (4, 4), (8, 8))
    with pytest.raises(TypeError, match="targets must be uint8 or bool"):
        upsampled_mask_sums(logits, targets.float())
    with pytest.raises(ValueError, match="batch size"):
        upsampled_mask_sums(logits, targets[:1])
    with pytest.raises(ValueError, match="shape"):
        upsampled_mask_sums(logits[0], targets)
    with pytest.raises(ValueError, match="valid must have the shape"):
        upsampled_mask_sums(logits, targets, torch.ones(2, 8, 9, dtype=torch.bool))
    with pytest.raises(TypeError, match="logits must be"):
        upsampled_mask_sums(logits.long(), targets)
    with pytest.raises(ValueError, match="unknown mask loss"):
        upsampled_mask_loss(logits, targets, {"dcie": 1.0})
    with pytest.raises(ValueError, match="crop"):
        mask_postprocess(logits, (16, 16), [(20, 16)] * 2, [(30, 30)] * 2)
    with pytest.raises(ValueError, match="one valid size"):
        mask_postprocess(logits, (16, 16), [(16, 16)], [(30, 30)] * 2)


# ---- CUDA ----
@requires_cuda
@pytest.mark.parametrize("hw,HW", SHAPES)
def test_cuda_matches_reference(rng, hw, HW):
    logits, targets = make(rng, 3, hw, HW, device="cuda")
    valid = padding_valid(3, HW, "cuda")
    for v in (None, valid):
        x = logits.clone().requires_grad_(True)
        ours = upsampled_mask_sums(x, targets, v)
        ref64 = reference.upsampled_mask_sums(logits.double(), targets, v, 0.25, 2.0)
        torch.testing.assert_close(ours.double(), ref64, rtol=1e-4, atol=1e-2)
        w = torch.randn(3, 5, device="cuda")
        (ours * w).sum().backward()
        xr = logits.double().requires_grad_(True)
        (reference.upsampled_mask_sums(xr, targets, v, 0.25, 2.0) * w.double()).sum().backward()
        torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-3, atol=1e-4)
    for dt in (torch.float16, torch.bfloat16):
        x = logits.to(dt).requires_grad_(True)
        out = upsampled_mask_sums(x, targets)
        torch.testing.assert_close(out.double(), reference.upsampled_mask_sums(x.double(), targets, None, 0.25, 2.0), rtol=1e-4, atol=5e-2)
        out.sum().backward()
        assert torch.isfinite(x.grad.float()).all()


@requires_cuda
def test_cuda_gradcheck_determinism_and_postprocess(rng):
    logits, targets = make(rng, 2, (4, 5), (9, 7), dtype=torch.float64, device="cuda")
    x = logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda l: upsampled_mask_sums(l, targets, None, 0.25, 2.0), (x,))
    big, tb = make(rng, 8, (60, 60), (240, 240), device="cuda")
    xb = big.requires_grad_(True)
    outs = []
    for _ in range(2):
        xb.grad = None
        s = upsampled_mask_sums(xb, tb)
        s.sum().backward()
        outs.append((s.detach().clone(), xb.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    lg = torch.randn(3, 40, 40, device="cuda")
    gpu = mask_postprocess(lg, (160, 160), [(160, 120)] * 3, [(375, 500)] * 3)
    cpu = mask_postprocess(lg.cpu(), (160, 160), [(160, 120)] * 3, [(375, 500)] * 3)
    for a, b in zip(gpu, cpu):
        assert (a.cpu() != b).float().mean() < 1e-4
    torch.library.opcheck(torch.ops.ssrvg.upsampled_mask_sums.default, (x, targets, None, 0.25, 2.0))


@requires_cuda
@pytest.mark.parametrize("hw,HW", SHAPES[:4])
def test_cuda_one_op_loss_matches_cpu(rng, hw, HW):
    logits, targets = make(rng, 5, hw, HW)
    valid = padding_valid(5, HW)
    for v in (None, valid):
        for losses in ({"dice": 5.0, "bce": 2.0}, {"soft_iou": 1.0, "focal": 2.0}):
            got = []
            for dev in ("cpu", "cuda"):
                x = logits.to(dev).requires_grad_(True)
                loss, terms = upsampled_mask_loss(x, targets.to(dev), losses, None if v is None else v.to(dev),
                                                  num_masks=3.0, return_terms=True)
                (loss + 0.5 * sum(terms.values())).backward()
                got.append((loss.detach().cpu(), torch.stack(list(terms.values())).detach().cpu(), x.grad.cpu()))
            (lc, tc, gc), (lg, tg, gg) = got
            torch.testing.assert_close(lg, lc, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(tg, tc, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(gg, gc, rtol=1e-3, atol=1e-6 * float(gc.abs().max()) + 1e-8)
    x = logits.double().cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda l: upsampled_mask_loss(l, targets.cuda(), {"dice": 1.0, "focal": 1.0},
                                                                  valid.cuda()), (x,))
    torch.library.opcheck(torch.ops.ssrvg.upsampled_mask_loss.default,
                          (x, targets.cuda(), valid.cuda(), [0, 2], [1.0, 2.0], 0.25, 2.0, 2.0))
