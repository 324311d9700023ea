"""The cases a first run of a kernel on a new device needs, on every device this machine has.

Each test runs on the CPU and, where there is a GPU, on CUDA: vector widths and scalar-load paths,
points on / outside the border and non-finite points, many samples on one pixel (atomics), empty
batches, loss shapes around the kernels' tiling, RLE widths and mask counts around warp sizes,
and mixed-device calls. The oracle is the pure-PyTorch reference (float64) or pycocotools.
"""

import contextlib

import numpy as np
import pytest
import torch
from pycocotools import mask as cocomask

from ssrvg_ext.ops import ms_deform_attn, reference, rle, upsampled_mask_sums
from conftest import requires_cuda

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@contextlib.contextmanager
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


# ---- deformable attention ------------------------------------------------------------------------
SHAPES = [(7, 9), (4, 5), (2, 3), (1, 1)]


def msda_case(rng, n, lq, m, d, p, device, loc=None):
    shapes = torch.tensor(SHAPES)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    s, nl = int((shapes[:, 0] * shapes[:, 1]).sum()), len(SHAPES)
    value = torch.randn(n, s, m, d, generator=rng)
    if loc is None:
        loc = torch.rand(n, lq, m, nl, p, 2, generator=rng) * 1.4 - 0.2
    attn = torch.rand(n, lq, m, nl, p, generator=rng)
    return value.to(device), shapes, starts, loc.to(device), attn.to(device)


def fwd_bwd(fn, value, shapes, starts, loc, attn, grad):
    xs = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]
    out = fn(xs[0], shapes, starts, xs[1], xs[2])
    out.backward(grad)
    return [out.detach()] + [x.grad for x in xs]


def assert_matches_reference(args, grad, rtol=1e-4):
    """Op (float32) vs reference (float64): output, value / weight gradients; location gradients
    where no sample sits within 1e-3 pixel of a kink of the bilinear weights."""
    got = fwd_bwd(ms_deform_attn, *args, grad)
    value, shapes, starts, loc, attn = args
    want = fwd_bwd(reference.ms_deform_attn, value.double(), shapes, starts, loc.double(), attn.double(), grad.double())
    wh = shapes.flip(-1).to(loc.device, torch.float64)[None, None, None, :, None, :]
    pix = loc.double() * wh - 0.5
    smooth = ((pix - pix.round()).abs() > 1e-3).all(-1, keepdim=True).expand_as(loc)
    for i, (g, w) in enumerate(zip(got, want)):
        g, w = g.double(), w
        if i == 2:
            g, w = g[smooth], w[smooth]
        scale = float(w.abs().max()) + 1 if w.numel() else 1.0
        torch.testing.assert_close(g, w, rtol=rtol, atol=rtol * scale, msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [1, 6, 32, 33, 64])
def test_msda_channel_widths(rng, device, d):
    args = msda_case(rng, 2, 9, 3, d, 2, device)
    assert_matches_reference(args, torch.randn(2, 9, 3 * d, generator=rng).to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_msda_misaligned_value_view(rng, device):
    """A value view whose storage starts one element in: the 16-byte vector loads must not be used."""
    value, shapes, starts, loc, attn = msda_case(rng, 2, 5, 2, 32, 3, device)
    flat = torch.empty(value.numel() + 1, device=device)
    flat[1:] = value.flatten()
    view = flat[1:].view_as(value)
    assert view.storage_offset() == 1 and view.is_contiguous()
    grad = torch.randn(2, 5, 64, generator=rng).to(device)
    assert_matches_reference((view, shapes, starts, loc, attn), grad)
    torch.testing.assert_close(ms_deform_attn(view, shapes, starts, loc, attn),
                               ms_deform_attn(value, shapes, starts, loc, attn), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_msda_border_and_outside_points(rng, device):
    """Exactly on the borders 0 and 1, on pixel edges and centres, and outside on every side."""
    n, lq, m, p = 2, 6, 2, 4
    nl = len(SHAPES)
    edges = torch.tensor([0.0, 1.0, -0.5, 1.5, -1e-7, 1 + 1e-7, 0.5])
    loc = edges[torch.randint(0, len(edges), (n, lq, m, nl, p, 2), generator=rng)]
    args = msda_case(rng, n, lq, m, 8, p, device, loc=loc)
    assert_matches_reference(args, torch.randn(n, lq, m * 8, generator=rng).to(device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [float("nan"), 1e30, -1e30, float("inf")])
def test_msda_non_finite_points_read_zero(rng, device, bad):
    """A NaN / huge / infinite sampling location reads zeros (as a point far outside): the output
    equals the output with that sample's weight set to 0, and its gradients are 0, never NaN."""
    value, shapes, starts, loc, attn = msda_case(rng, 2, 5, 2, 8, 3, device)
    hit = torch.rand(loc.shape[:-1], generator=rng).to(device) < 0.3
    bad_loc = loc.clone()
    bad_loc[..., 0] = torch.where(hit, torch.full_like(loc[..., 0], bad), loc[..., 0])
    grad = torch.randn(2, 5, 16, generator=rng).to(device)
    out, g_value, g_loc, g_attn = fwd_bwd(ms_deform_attn, value, shapes, starts, bad_loc, attn, grad)
    clean = fwd_bwd(ms_deform_attn, value, shapes, starts, loc, attn * ~hit, grad)
    torch.testing.assert_close(out, clean[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_value, clean[1], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(g_loc).all() and torch.isfinite(g_attn).all()
    assert not g_loc[hit].any() and not g_attn[hit].any()


@pytest.mark.parametrize("device", DEVICES)
def test_msda_many_samples_on_one_pixel(rng, device):
    """Every sample of 400 queries on one pixel centre: 400*2*4*4 contributions to a few value rows
    (atomics contend on CUDA); the value gradient still equals the reference's."""
    n, lq, m, p = 1, 400, 2, 4
    loc = torch.empty(n, lq, m, len(SHAPES), p, 2)
    for lvl, (h, w) in enumerate(SHAPES):
        loc[..., lvl, :, 0], loc[..., lvl, :, 1] = 0.5 / w, 0.5 / h  # the centre of pixel (0, 0)
    args = msda_case(rng, n, lq, m, 16, p, device, loc=loc)
    assert_matches_reference(args, torch.randn(n, lq, m * 16, generator=rng).to(device), rtol=2e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_msda_deterministic_mode_is_bitwise_repeatable(rng, device):
    args = msda_case(rng, 2, 300, 4, 32, 4, device)
    grad = torch.randn(2, 300, 128, generator=rng).to(device)
    with deterministic():
        a = fwd_bwd(ms_deform_attn, *args, grad)
        b = fwd_bwd(ms_deform_attn, *args, grad)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,lq", [(0, 5), (2, 0)])
def test_msda_empty_batch_or_queries(rng, device, n, lq):
    args = msda_case(rng, n, lq, 2, 8, 2, device)
    for det in (False, True):
        with deterministic() if det else contextlib.nullcontext():
            out, g_value, g_loc, g_attn = fwd_bwd(ms_deform_attn, *args, torch.zeros(n, lq, 16, device=device))
        assert out.shape == (n, lq, 16) and g_loc.shape == args[3].shape and g_attn.shape == args[4].shape
        assert g_value.shape == args[0].shape and not g_value.any()


@pytest.mark.parametrize("device", DEVICES)
def test_msda_level_table_on_either_device(rng, device):
    """spatial_shapes / level_start_index on the CPU (no host copy) or on the value's device."""
    value, shapes, starts, loc, attn = msda_case(rng, 2, 7, 2, 8, 2, device)
    a = ms_deform_attn(value, shapes, starts, loc, attn)
    b = ms_deform_attn(value, shapes.to(device), starts.to(device), loc, attn)
    assert torch.equal(a, b)


# ---- fused mask loss ------------------------------------------------------------------------------
LOSS_SHAPES = {
    "h<H": ((12, 10), (48, 40)), "h>H": ((40, 36), (17, 13)), "h=1": ((1, 9), (20, 30)), "w=1": ((9, 1), (30, 20)),
    "h=w=1": ((1, 1), (7, 5)), "HW~4096": ((16, 16), (64, 63)), "HW=4097": ((16, 16), (17, 241)),
    "HW~3M": ((108, 108), (1732, 1732)), "W=12300": ((3, 5), (4, 12300)),  # a target row over 48 KiB of float32
}


def loss_case(rng, b, hw, HW, valid, device):
    logits = torch.randn(b, *hw, generator=rng) * 3
    targets = (torch.rand(b, *HW, generator=rng) < 0.4).to(torch.uint8)
    v = {"absent": None, "random": torch.rand(b, *HW, generator=rng) < 0.6,
         "zero": torch.zeros(b, *HW, dtype=torch.bool)}[valid]
    return logits.to(device), targets.to(device), None if v is None else v.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", list(LOSS_SHAPES))
@pytest.mark.parametrize("valid", ["absent", "random", "zero"])
@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
def test_mask_loss_shapes_valid_gamma(rng, device, shape, valid, gamma):
    hw, HW = LOSS_SHAPES[shape]
    if shape == "HW~3M" and (valid != "random" or gamma != 2.0):
        pytest.skip("the 3 M-pixel case once (it is slow on the CPU reference)")
    b = 1 if shape == "HW~3M" else 3
    logits, targets, v = loss_case(rng, b, hw, HW, valid, device)
    x = logits.clone().requires_grad_(True)
    got = upsampled_mask_sums(x, targets, v, 0.25, gamma)
    xr = logits.double().requires_grad_(True)
    want = reference.upsampled_mask_sums(xr, targets, v, 0.25, gamma)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)
    w = torch.randn(b, 5, generator=rng).to(device)
    (got * w).sum().backward()
    (want * w.double()).sum().backward()
    scale = float(xr.grad.abs().max()) + 1e-12
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-4, atol=1e-5 * scale + 1e-7)
    if valid == "zero":
        assert not got[:, [0, 1, 3, 4]].any() and not x.grad.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gamma", [0.0, 1.5, 2.0])
@pytest.mark.parametrize("hw,HW", [((6, 7), (12, 14)), ((2, 3), (3, 7000))])  # the second: a row over 48 KiB
def test_mask_loss_float64_parameters_are_not_rounded(rng, device, gamma, hw, HW):
    """float64 logits take alpha / gamma in float64 (an alpha that float32 rounds changes the sum)."""
    logits, targets, _ = loss_case(rng, 2, hw, HW, "absent", device)
    alpha = 0.1 + 1e-12
    x = logits.double().requires_grad_(True)
    got = upsampled_mask_sums(x, targets, None, alpha, gamma)
    xr = logits.double().requires_grad_(True)
    want = reference.upsampled_mask_sums(xr, targets, None, alpha, gamma)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-10)
    w = torch.randn(2, 5, generator=rng, dtype=torch.float64).to(device)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-12)


# ---- RLE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 6, 5), (3, 0, 5), (3, 5, 0), (0, 4, 4), (2, 1, 1)])
@pytest.mark.parametrize("fill", [0, 1])
def test_rle_round_trip_empty_full_zero_size(device, shape, fill):
    masks = torch.full(shape, fill, dtype=torch.uint8, device=device)
    rles = rle.encode(masks)
    if shape[0]:
        want = cocomask.encode(np.asfortranarray(masks.cpu().permute(1, 2, 0).numpy()))
        assert [r["counts"] for r in rles] == [r["counts"] for r in want]
    back = rle.decode(rles, device=device) if rles else torch.zeros(shape, dtype=torch.uint8, device=device)
    assert back.device.type == device and torch.equal(back.cpu(), masks.cpu())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("w", [63, 64, 65])
@pytest.mark.parametrize("n", [15, 16, 17])
def test_mask_iou_widths_and_counts(rng, device, w, n):
    a = (torch.rand(n, 9, w, generator=rng) < torch.rand(n, 1, 1, generator=rng)).to(torch.uint8)
    b = (torch.rand(n + 1, 9, w, generator=rng) < 0.5).to(torch.uint8)
    b[0] = 0  # an empty mask
    crowd = (torch.arange(n + 1) % 3 == 0).to(torch.uint8)
    got = rle.mask_iou(a.to(device), b.to(device), crowd)
    enc = lambda m: cocomask.encode(np.asfortranarray(m.permute(1, 2, 0).numpy()))  # noqa: E731
    want = np.asarray(cocomask.iou(enc(a), enc(b), crowd.tolist()))
    assert got.device.type == device
    np.testing.assert_array_equal(got.cpu().numpy(), want)


# ---- mixed devices --------------------------------------------------------------------------------
@requires_cuda
def test_mixed_device_calls_raise_clear_errors(rng):
    value, shapes, starts, loc, attn = msda_case(rng, 1, 3, 2, 4, 2, "cuda")
    with pytest.raises(ValueError, match="one device"):
        ms_deform_attn(value, shapes, starts, loc.cpu(), attn)
    with pytest.raises(ValueError, match="one device"):
        ms_deform_attn(value, shapes, starts, loc, attn.cpu())
    with pytest.raises(ValueError, match="CUDA|device"):
        ms_deform_attn(value.cpu(), shapes, starts, loc, attn)
    logits, targets, _ = loss_case(rng, 2, (4, 4), (8, 8), "absent", "cuda")
    with pytest.raises(ValueError, match="device"):
        upsampled_mask_sums(logits, targets.cpu(), None, 0.25, 2.0)
    with pytest.raises(ValueError, match="device"):
        upsampled_mask_sums(logits, targets, torch.ones(2, 8, 8, dtype=torch.bool), 0.25, 2.0)
    m = torch.ones(2, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="device"):
        rle.mask_iou(m.cuda(), m)
