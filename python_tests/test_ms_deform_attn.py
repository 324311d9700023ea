"""Multi-scale deformable attention: op vs the grid_sample reference, gradients, determinism, module."""

import sys

import pytest
import torch

from ssrvg_ext import extension
from ssrvg_ext.models import MSDeformAttn
from ssrvg_ext.ops import ms_deform_attn, reference
from conftest import requires_cuda

D_VALUES = [1, 3, 8, 16, 30, 32, 64, 71, 256]  # 8, 16, 32, 64: the register kernels


def levels(rng, n_levels, max_side=12):
    """Random level shapes, with a 1x1 level and non-square levels mixed in."""
    shapes = torch.randint(1, max_side, (n_levels, 2), generator=rng)
    if n_levels > 1:
        shapes[-1] = torch.tensor([1, 1])
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return shapes, starts, int((shapes[:, 0] * shapes[:, 1]).sum())


def locations(rng, n, lq, m, nl, p, shapes, dtype=torch.float32):
    """Inside, outside [0, 1], and exactly on borders / pixel centres / pixel edges."""
    loc = torch.rand(n, lq, m, nl, p, 2, generator=rng) * 1.4 - 0.2
    special = torch.rand(n, lq, m, nl, p, 2, generator=rng) < 0.2
    wh = torch.stack([shapes[:, 1], shapes[:, 0]], -1).float()[None, None, None, :, None, :]
    pick = torch.randint(0, 4, loc.shape, generator=rng)
    k = torch.randint(0, 3, loc.shape, generator=rng).float()
    border = torch.where(pick == 0, torch.zeros_like(loc), torch.ones_like(loc))
    border = torch.where(pick == 2, (k + 0.5) / wh, border)  # pixel centres
    border = torch.where(pick == 3, k / wh, border)          # pixel edges
    return torch.where(special, border, loc).to(dtype)


def make(rng, n, lq, m, d, nl, p, dtype=torch.float32, device="cpu"):
    shapes, starts, s = levels(rng, nl)
    value = torch.randn(n, s, m, d, generator=rng).to(dtype)
    loc = locations(rng, n, lq, m, nl, p, shapes, dtype)
    attn = torch.rand(n, lq, m, nl, p, generator=rng).to(dtype)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def off_kinks(loc, shapes, tol=1e-3):
    """Samples whose pixel coordinates are not at an integer, where bilinear sampling has a kink
    and the location gradient is one-sided (float32 and float64 may pick different sides)."""
    wh = torch.stack([shapes[:, 1], shapes[:, 0]], -1).to(loc.device, torch.float64)[None, None, None, :, None, :]
    pix = loc.double() * wh - 0.5
    ok = ((pix - pix.round()).abs() > tol).all(-1, keepdim=True)
    return ok.expand_as(loc)


def assert_grads_close(grads, ref_grads, loc, shapes, rtol, atol_scale):
    keep = off_kinks(loc, shapes)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        g, r = g.double(), r.double()
        if i == 1:  # sampling_locations
            g, r = g[keep], r[keep]
        torch.testing.assert_close(g, r, rtol=rtol, atol=atol_scale * (float(r.abs().max()) + 1 if r.numel() else 1))


def run(fn, value, shapes, starts, loc, attn, grad):
    xs = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]
    out = fn(xs[0], shapes, starts, xs[1], xs[2])
    out.backward(grad)
    return out.detach(), [x.grad for x in xs]


@pytest.mark.parametrize("d", D_VALUES)
def test_matches_reference_fresh_shapes(rng, d):
    for _ in range(3):
        n = int(torch.tensor([1, 3, 7])[torch.randint(0, 3, (1,), generator=rng)])
        nl = int(torch.randint(1, 6, (1,), generator=rng))
        p = int(torch.randint(1, 9, (1,), generator=rng))
        m = int(torch.randint(1, 5, (1,), generator=rng))
        lq = int(torch.randint(1, 40, (1,), generator=rng))
        args = make(rng, n, lq, m, d, nl, p)
        grad = torch.randn(n, lq, m * d, generator=rng)
        out, grads = run(ms_deform_attn, *args, grad)
        ref_args = [t.double() if t.is_floating_point() else t for t in args]
        ref_out, ref_grads = run(reference.ms_deform_attn, *ref_args, grad.double())
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
        assert_grads_close(grads, ref_grads, args[3], args[1], rtol=1e-4, atol_scale=1e-4)


def test_many_queries_and_rec_sized(rng):
    for lq in (1, 2500):
        args = make(rng, 2, lq, 8, 32, 4, 4)
        torch.testing.assert_close(ms_deform_attn(*args), reference.ms_deform_attn(*args), rtol=1e-5, atol=1e-5)


def test_in_place_and_copied_value_paths_agree_bitwise(rng):
    """A few queries read value in place; many queries copy each (batch, head) slice first (the CPU
    kernel picks by the number of samples against the slice's rows). The same queries give the
    same output, location and weight gradients either way, bit for bit, and value gradients that
    add up."""
    shapes = torch.tensor([[10, 10], [5, 5], [3, 3], [1, 1]])  # S = 135 rows per slice
    starts = torch.tensor([0, 100, 125, 134])
    value = torch.randn(2, 135, 4, 16, generator=rng)
    loc, attn = locations(rng, 2, 3, 4, 4, 2, shapes), torch.rand(2, 3, 4, 4, 2, generator=rng)
    big = 64  # 4 * 64 * 4 * 2 samples >= S: the copied path
    loc_big = torch.cat([loc, locations(rng, 2, big - 3, 4, 4, 2, shapes)], 1)
    attn_big = torch.cat([attn, torch.rand(2, big - 3, 4, 4, 2, generator=rng)], 1)
    grad = torch.randn(2, 3, 64, generator=rng)
    grad_big = torch.cat([grad, torch.zeros(2, big - 3, 64)], 1)
    out, grads = run(ms_deform_attn, value, shapes, starts, loc, attn, grad)
    out_big, grads_big = run(ms_deform_attn, value, shapes, starts, loc_big, attn_big, grad_big)
    assert 4 * 3 * 4 * 2 < value.shape[1] <= 4 * big * 4 * 2, "the two calls must take the two paths"
    assert torch.equal(out, out_big[:, :3])
    assert torch.equal(grads[1], grads_big[1][:, :3]) and torch.equal(grads[2], grads_big[2][:, :3])
    torch.testing.assert_close(grads[0], grads_big[0], rtol=0, atol=0)


@pytest.mark.parametrize("d", [8, 16, 32, 64])
def test_register_kernels_equal_the_generic_one_bitwise(rng, d):
    """D = 8, 16, 32, 64 (float) run the register kernels, whose forward computes eight samples'
    and backward compute eight samples' corners at once (Corners8 in ms_deform_attn_cpu.cpp); any
    other D runs the generic kernel, one corner at a time. The first d channels of a wider value
    (the rest zero, in value and in the output gradient) give the same bits, with locations far
    outside, NaN, on borders and on pixel centres; both value paths (few and many queries)."""
    def bits(t):
        return t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32)

    backward = torch.ops.ssrvg.ms_deform_attn_backward.default
    x = 16 if d == 8 else 8  # extra channels: d + x is not a register width
    for n_levels, points, lq in ((4, 2, 5), (3, 3, 60), (1, 1, 7)):  # 8, 9 and 1 samples per query
        value, shapes, starts, loc, attn = make(rng, 2, lq, 3, d, n_levels, points)
        loc.view(-1)[::11] *= 1e9  # far outside (and beyond int32 once scaled)
        loc.view(-1)[5::23] = float("nan")
        grad = torch.randn(2, lq, 3, d, generator=rng)
        wide_value = torch.cat([value, torch.zeros(2, value.shape[1], 3, x)], -1)
        wide_grad = torch.cat([grad, torch.zeros(2, lq, 3, x)], -1).view(2, lq, -1)
        for dtype in (torch.float32, torch.bfloat16):
            v, wv = value.to(dtype), wide_value.to(dtype)
            narrow = ms_deform_attn(v, shapes, starts, loc, attn)
            wide = ms_deform_attn(wv, shapes, starts, loc, attn).view(2, lq, 3, d + x)[..., :d]
            assert torch.equal(bits(wide.reshape(narrow.shape)), bits(narrow)) and narrow.abs().sum() > 0
            g_narrow = backward(grad.view(2, lq, -1).to(dtype), v, shapes, starts, loc, attn)
            g_wide = backward(wide_grad.to(dtype), wv, shapes, starts, loc, attn)
            assert torch.equal(bits(g_wide[0][..., :d].contiguous()), bits(g_narrow[0]))
            assert torch.equal(bits(g_wide[1]), bits(g_narrow[1])) and torch.equal(bits(g_wide[2]), bits(g_narrow[2]))


def test_gradcheck_float64(rng):
    for d, nl, p in [(3, 2, 2), (5, 1, 3), (2, 3, 1)]:
        value, shapes, starts, _, attn = make(rng, 2, 3, 2, d, nl, p, dtype=torch.float64)
        # plain random points (inside and outside): almost surely away from integer pixel
        # coordinates, where bilinear sampling has kinks that finite differences straddle
        loc = torch.rand(2, 3, 2, nl, p, 2, generator=rng, dtype=torch.float64) * 1.3 - 0.15
        xs = [value.requires_grad_(True), loc.requires_grad_(True), attn.requires_grad_(True)]
        fn = lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a)  # noqa: E731
        assert torch.autograd.gradcheck(fn, xs, eps=1e-7, atol=1e-5)


def test_half_precision_cpu(rng):
    args = make(rng, 2, 20, 4, 32, 3, 4)
    ref = reference.ms_deform_attn(*[t.double() if t.is_floating_point() else t for t in args])
    for dt in (torch.float16, torch.bfloat16):
        v, sh, st, loc, attn = args
        out = ms_deform_attn(v.to(dt), sh, st, loc, attn.to(dt))  # locations stay float32
        assert out.dtype == dt
        tol = 1e-2 if dt == torch.float16 else 5e-2
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("d", [8, 16, 32, 64, 24])
def test_bfloat16_value_forward_and_backward(rng, d):
    """bfloat16 value, read as stored (the register kernels for D = 8/16/32/64, any D otherwise):
    output and every gradient equal the float64 reference on the same bfloat16-rounded inputs, to
    float32 accuracy before the final rounding; both the copied and the in-place paths."""
    for lq in (3, 300):
        v, sh, st, loc, attn = make(rng, 2, lq, 3, d, 3, 2)
        v16, attn16 = v.bfloat16(), attn.bfloat16()
        grad = torch.randn(2, lq, 3 * d, generator=rng)
        out, grads = run(ms_deform_attn, v16, sh, st, loc, attn16, grad.bfloat16())
        ref_out, ref_grads = run(reference.ms_deform_attn, v16.double(), sh, st, loc.double(), attn16.double(),
                                 grad.bfloat16().double())
        assert out.dtype == torch.bfloat16 and grads[0].dtype == torch.bfloat16
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-2, atol=1e-2)
        assert_grads_close(grads, ref_grads, loc, sh, rtol=2e-2, atol_scale=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("side", [256, 64])
def test_large_value_gradient_reused_blocks(rng, dtype, side):
    """A value gradient of >= 1 MiB comes from a kept block (cpu_alloc.h): a second backward while
    the first gradient is alive gets other memory, and one after it was freed gets the freed block,
    cleared: every gradient equals the reference, zero where no query reads."""
    shapes, starts = torch.tensor([[side, side]]), torch.tensor([0])
    value = torch.randn(1, side * side, 4, 32, generator=rng).to(dtype)  # 32 MiB / 2 MiB of float32
    ref_value = value.double()
    results, freed = [], set()
    for k in range(3):
        loc = torch.rand(1, 4, 4, 1, 2, 2, generator=rng)
        attn = torch.rand(1, 4, 4, 1, 2, generator=rng)
        grad = torch.randn(1, 4, 128, generator=rng)
        _, grads = run(ms_deform_attn, value, shapes, starts, loc, attn, grad.to(dtype))
        _, ref_grads = run(reference.ms_deform_attn, ref_value, shapes, starts, loc.double(), attn.double(),
                           grad.to(dtype).double())
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(grads[0].double(), ref_grads[0], **tol)
        assert int((grads[0] != 0).sum()) <= 4 * 4 * 2 * 4 * 32  # only the sampled rows
        if k == 2 and sys.platform == "linux" and dtype == torch.float32:  # (bfloat16: the float32 buffer)
            assert grads[0].data_ptr() in freed  # a kept block, which held non-zero gradients
        results.append(grads[0])
        if k == 1:
            assert results[1].data_ptr() != results[0].data_ptr()  # both alive: different memory
            freed = {r.data_ptr() for r in results}
            del grads
            results.clear()


def assert_bitwise_repeatable(args, grad):
    """Two runs under torch.use_deterministic_algorithms(True) agree bit for bit; returns the grads."""
    torch.use_deterministic_algorithms(True)
    try:
        a, ga = run(ms_deform_attn, *args, grad)
        b, gb = run(ms_deform_attn, *args, grad)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ga, gb))
    return ga


def test_deterministic_bitwise(rng):
    assert_bitwise_repeatable(make(rng, 3, 200, 4, 32, 3, 4), torch.randn(3, 200, 128, generator=rng))


@pytest.mark.skipif(not extension.AVAILABLE, reason="compiled ops not built")
def test_opcheck(rng):
    for dtype in (torch.float32, torch.float64):
        value, shapes, starts, loc, attn = make(rng, 2, 5, 2, 4, 2, 2, dtype=dtype)
        args = (value.requires_grad_(True), shapes, starts, loc.requires_grad_(True), attn.requires_grad_(True))
        torch.library.opcheck(torch.ops.ssrvg.ms_deform_attn.default, args)
        torch.library.opcheck(torch.ops.ssrvg.ms_deform_attn_backward.default,
                              (torch.randn(2, 5, 8, dtype=dtype), value.detach(), shapes, starts, loc.detach(), attn.detach()))


def test_bad_inputs_raise(rng):
    value, shapes, starts, loc, attn = make(rng, 2, 5, 2, 4, 2, 2)
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, shapes, starts + 1, loc, attn)
    with pytest.raises(ValueError, match="cover more than value.s S|positions but spatial_shapes"):
        ms_deform_attn(value[:, :-1], shapes, starts, loc, attn)
    with pytest.raises(ValueError, match="positions but spatial_shapes"):
        ms_deform_attn(torch.cat([value, value[:, :1]], 1), shapes, starts, loc, attn)
    with pytest.raises(ValueError, match="sampling_locations must have shape"):
        ms_deform_attn(value, shapes, starts, loc[..., :1], attn)
    with pytest.raises(ValueError, match="attention_weights must have shape"):
        ms_deform_attn(value, shapes, starts, loc, attn[..., :1])
    with pytest.raises(TypeError, match="spatial_shapes must be int64"):
        ms_deform_attn(value, shapes.int(), starts, loc, attn)
    with pytest.raises(TypeError, match="value must be floating"):
        ms_deform_attn(value.long(), shapes, starts, loc, attn)
    with pytest.raises(ValueError, match="must be positive"):
        ms_deform_attn(value, torch.tensor([[0, 4], [2, 2]]), starts, loc, attn)


@pytest.mark.skipif(getattr(extension._C, "ms_deform_attn", None) is None, reason="compiled ops not built")
def test_direct_entry_equals_torch_ops_and_defers_the_rest(rng):
    """The wrapper's direct call (csrc/ms_deform_attn/ms_deform_attn_python.cpp) gives torch.ops'
    results bit for bit, gradients included, and hands everything torch.ops must see to it."""
    from torch.overrides import TorchFunctionMode

    direct = extension._C.ms_deform_attn
    value, shapes, starts, loc, attn = make(rng, 2, 5, 2, 8, 2, 2)
    grad = torch.randn(2, 5, 16, generator=rng)
    out, grads = run(ms_deform_attn, value, shapes, starts, loc, attn, grad)
    out_ops, grads_ops = run(torch.ops.ssrvg.ms_deform_attn.default, value, shapes, starts, loc, attn, grad)
    assert torch.equal(out, out_ops) and all(torch.equal(a, b) for a, b in zip(grads, grads_ops))
    assert isinstance(direct(value, shapes, starts, loc, attn), torch.Tensor)
    assert direct(torch.nn.Parameter(value), shapes, starts, loc, attn) is not NotImplemented

    class Logged(torch.Tensor):  # a subclass: torch.ops hands it to __torch_function__
        seen = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            cls.seen.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    sub = value.as_subclass(Logged)
    assert direct(sub, shapes, starts, loc, attn) is NotImplemented
    torch.testing.assert_close(ms_deform_attn(sub, shapes, starts, loc, attn).as_subclass(torch.Tensor), out)
    assert torch.ops.ssrvg.ms_deform_attn.default in Logged.seen

    class Mode(TorchFunctionMode):
        seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    with Mode():
        assert direct(value, shapes, starts, loc, attn) is NotImplemented
        ms_deform_attn(value, shapes, starts, loc, attn)
    assert torch.ops.ssrvg.ms_deform_attn.default in Mode.seen
    # on the meta device (no kernel here, only the fake one) and with a wrong argument: torch.ops answers
    assert direct(value.to("meta"), shapes, starts, loc.to("meta"), attn.to("meta")) is NotImplemented
    assert ms_deform_attn(value.to("meta"), shapes, starts, loc.to("meta"), attn.to("meta")).shape == out.shape
    assert direct(value, shapes.tolist(), starts, loc, attn) is NotImplemented
    with pytest.raises(RuntimeError):
        ms_deform_attn(value, shapes.tolist(), starts, loc, attn)
    with pytest.raises(TypeError):
        direct(value, shapes, starts, loc)  # not five arguments: a clear error, as for any function
    with extension.force_reference():  # the switch still reaches the reference
        torch.testing.assert_close(ms_deform_attn(value, shapes, starts, loc, attn), out, rtol=1e-5, atol=1e-6)


# ---- the module ----
def module_inputs(rng, n=2, lq=7, c=32, nl=3):
    shapes = torch.tensor([[8, 10], [4, 5], [2, 3]])[:nl]
    starts = torch.cat([torch.zeros(1, dtype=torch.long), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    s = int((shapes[:, 0] * shapes[:, 1]).sum())
    return (torch.randn(n, lq, c, generator=rng), torch.randn(n, s, c, generator=rng), shapes, starts)


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_forward_backward(rng, ref_dim):
    torch.manual_seed(0)
    query, value, shapes, starts = module_inputs(rng)
    attn = MSDeformAttn(32, n_levels=3, n_heads=4, n_points=2, d_lang=16)
    with torch.no_grad():  # as after some training: the query now moves the points (zero at init)
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    ref = torch.rand(2, 7, 3, ref_dim, generator=rng)
    words = torch.randn(2, 5, 16, generator=rng)
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    out = attn(query, ref, value, shapes, starts, lang=words, lang_mask=pad)
    assert out.shape == query.shape
    out.square().mean().backward()
    for name, prm in attn.named_parameters():
        assert prm.grad is not None, name
    # the language changes where it samples, hence the output
    other = attn(query, ref, value, shapes, starts, lang=words.flip(0), lang_mask=pad.flip(0))
    assert not torch.allclose(out, other)
    # a sentence vector works too, and padding mask on values is honoured
    sent = attn(query, ref, value, shapes, starts, value_padding_mask=torch.zeros(2, value.shape[1], dtype=torch.bool),
                lang=torch.randn(2, 16, generator=rng))
    assert sent.shape == query.shape


def test_module_compiled_equals_reference(rng):
    query, value, shapes, starts = module_inputs(rng)
    attn = MSDeformAttn(32, n_levels=3, n_heads=4, n_points=2)
    ref = torch.rand(2, 7, 3, 2, generator=rng)
    out = attn(query, ref, value, shapes, starts)
    with extension.force_reference():
        out_ref = attn(query, ref, value, shapes, starts)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    compiled = torch.compile(attn, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(query, ref, value, shapes, starts), out, rtol=1e-5, atol=1e-5)


# ---- CUDA ----
@requires_cuda
@pytest.mark.parametrize("d", D_VALUES)
def test_cuda_matches_reference(rng, d):
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 8e-2)):
        n, lq, m, nl, p = 3, 33, 2, 4, 3
        args = make(rng, n, lq, m, d, nl, p, device="cuda")
        v, sh, st, loc, attn = args
        grad = torch.randn(n, lq, m * d, device="cuda")
        out, grads = run(ms_deform_attn, v.to(dtype), sh, st, loc, attn.to(dtype), grad.to(dtype))
        ref_out, ref_grads = run(reference.ms_deform_attn, v.double(), sh, st, loc.double(), attn.double(), grad.double())
        scale = float(ref_out.abs().max()) + 1
        torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol * scale)
        assert_grads_close(grads, ref_grads, loc, sh, rtol=tol, atol_scale=tol)


@requires_cuda
def test_cuda_gradcheck_and_determinism(rng):
    value, shapes, starts, _, attn = make(rng, 2, 3, 2, 3, 2, 2, dtype=torch.float64, device="cuda")
    loc = (torch.rand(2, 3, 2, 2, 2, 2, generator=rng, dtype=torch.float64) * 1.3 - 0.15).cuda()
    xs = [value.requires_grad_(True), loc.requires_grad_(True), attn.requires_grad_(True)]
    assert torch.autograd.gradcheck(lambda v, l, a: ms_deform_attn(v, shapes, starts, l, a), xs, eps=1e-7, atol=1e-5)
    args = make(rng, 2, 500, 8, 32, 4, 4, device="cuda")
    grad = torch.randn(2, 500, 256, device="cuda")
    ga = assert_bitwise_repeatable(args, grad)
    _, gc = run(ms_deform_attn, *args, grad)  # atomic path: same values up to summation order
    for x, y in zip(ga, gc):
        # float32 sums of many terms in another order differ by a few ulps of the terms' scale, not
        # of the (possibly cancelling) result: an H100 run saw 2e-5 on an element of 0.05
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5 * (float(y.abs().max()) + 1))
