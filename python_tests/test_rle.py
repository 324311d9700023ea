"""COCO RLE and IoU ops against pycocotools, byte for byte."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as cocomask

from ssrvg_ext import extension
from ssrvg_ext.ops import reference, rle
from conftest import requires_cuda


def coco_encode(masks: torch.Tensor):
    """pycocotools' encode of (N, H, W) masks (it wants H x W x N in Fortran order)."""
    return cocomask.encode(np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8)))


def random_masks(g, n, h, w, kind="blobs"):
    """Object-like blobs (rectangles and ellipses of random density) or noise."""
    if kind == "noise":
        p = torch.rand(n, 1, 1, generator=g)
        return (torch.rand(n, h, w, generator=g) < p).to(torch.uint8)
    ys = torch.arange(h).view(1, h, 1).float()
    xs = torch.arange(w).view(1, 1, w).float()
    cy, cx = torch.rand(n, 1, 1, generator=g) * h, torch.rand(n, 1, 1, generator=g) * w
    ry = torch.rand(n, 1, 1, generator=g) * h / 2 + 0.5
    rx = torch.rand(n, 1, 1, generator=g) * w / 2 + 0.5
    ell = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    rect = ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
    pick = torch.rand(n, 1, 1, generator=g) < 0.5
    m = torch.where(pick, ell, rect)
    holes = torch.rand(n, h, w, generator=g) < torch.rand(n, 1, 1, generator=g) * 0.1
    return (m & ~holes).to(torch.uint8)


def edge_cases():
    cases = {
        "1x1_empty": torch.zeros(1, 1, 1), "1x1_full": torch.ones(1, 1, 1),
        "empty": torch.zeros(2, 7, 5), "full": torch.ones(2, 7, 5),
        "checker": ((torch.arange(9).view(9, 1) + torch.arange(11).view(1, 11)) % 2).unsqueeze(0),
        "tall": (torch.rand(3, 3000, 2) < 0.5), "wide": (torch.rand(3, 2, 3000) < 0.5),
        "long_runs": torch.ones(1, 400, 300),  # one run of 120000 > 2**16
    }
    single = torch.zeros(1, 6, 4)
    single[0, 5, 3] = 1
    cases["single_last"] = single
    first = torch.zeros(1, 6, 4)
    first[0, 0, 0] = 1
    cases["single_first"] = first
    half = torch.zeros(1, 300, 500)
    half[0, :, 200:] = 1
    cases["long_runs_half"] = half
    return {k: v.to(torch.uint8) for k, v in cases.items()}


@pytest.mark.parametrize("name,masks", list(edge_cases().items()))
def test_encode_edge_cases(name, masks):
    ours = rle.encode(masks)
    ref = coco_encode(masks)
    assert [r["counts"] for r in ours] == [r["counts"] for r in ref]
    assert [r["size"] for r in ours] == [list(r["size"]) for r in ref]
    assert torch.equal(rle.decode(ours), masks)
    assert rle.area(ours).tolist() == cocomask.area(ref).tolist()
    assert np.array_equal(rle.to_bbox(ours).numpy(), cocomask.toBbox(ref))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 0)])
def test_zero_sized_images(shape):
    masks = torch.zeros(2, *shape, dtype=torch.uint8)
    ours = rle.encode(masks)
    ref = coco_encode(masks)
    assert [r["counts"] for r in ours] == [r["counts"] for r in ref]
    assert rle.decode(ours).shape == (2, *shape)
    assert rle.area(ours).tolist() == [0, 0]
    assert rle.to_bbox(ours).tolist() == [[0.0] * 4] * 2


def test_bool_input_and_single_mask(rng):
    m = random_masks(rng, 1, 13, 17)[0]
    assert rle.encode(m.bool()) == rle.encode(m)
    assert rle.encode(m)["counts"] == coco_encode(m[None])[0]["counts"]
    assert torch.equal(rle.decode(rle.encode(m)), m)


def test_random_masks_equal_pycocotools(rng):
    """Thousands of masks of random sizes, densities and shapes, byte for byte."""
    total = 0
    for trial in range(60):
        h, w = (int(v) for v in torch.randint(1, 90, (2,), generator=rng))
        n = int(torch.randint(1, 60, (1,), generator=rng))
        kind = "noise" if trial % 3 == 0 else "blobs"
        masks = random_masks(rng, n, h, w, kind)
        ours, ref = rle.encode(masks), coco_encode(masks)
        assert [r["counts"] for r in ours] == [r["counts"] for r in ref], (h, w, kind)
        assert torch.equal(rle.decode(ours), masks)
        assert torch.equal(rle.decode(ref), masks)  # pycocotools' dicts are accepted as they are
        assert rle.area(ours).tolist() == cocomask.area(ref).tolist()
        assert np.array_equal(rle.to_bbox(ours).numpy(), cocomask.toBbox(ref))
        total += n
    assert total >= 1000


def test_iou_matches_pycocotools(rng):
    for _ in range(10):
        h, w = (int(v) for v in torch.randint(5, 120, (2,), generator=rng))
        dt_m = random_masks(rng, int(torch.randint(1, 30, (1,), generator=rng)), h, w)
        gt_m = random_masks(rng, int(torch.randint(1, 30, (1,), generator=rng)), h, w)
        dt_m[0] = 0  # an empty detection
        dt, gt = coco_encode(dt_m), coco_encode(gt_m)
        crowd = (torch.rand(len(gt), generator=rng) < 0.3).to(torch.uint8).tolist()
        ref = np.asarray(cocomask.iou(dt, gt, crowd))
        ours = rle.iou(rle.encode(dt_m), rle.encode(gt_m), crowd)
        assert ours.dtype == torch.float64
        assert np.array_equal(ours.numpy(), ref)
        # the same numbers straight from the masks, without RLEs
        assert np.array_equal(rle.mask_iou(dt_m, gt_m, crowd).numpy(), ref)
        assert np.array_equal(rle.mask_iou(dt_m, gt_m).numpy(), np.asarray(cocomask.iou(dt, gt, [0] * len(gt))))


def test_iou_size_mismatch_is_minus_one(rng):
    a = torch.ones(2, 10, 10, dtype=torch.uint8)
    b = torch.ones(1, 12, 10, dtype=torch.uint8)
    far = torch.zeros(1, 20, 20, dtype=torch.uint8)
    far[0, 15:, 15:] = 1  # boxes do not overlap -> 0, not -1
    dt = coco_encode(a)
    gt = coco_encode(b) + coco_encode(far)
    ref = np.asarray(cocomask.iou(dt, gt, [0, 0]))
    ours = rle.iou(dt, gt, [0, 0])
    assert np.array_equal(ours.numpy(), ref)
    assert ours[0, 0] == -1 and ours[0, 1] == 0


def test_iou_empty_lists():
    assert rle.iou([], coco_encode(torch.ones(2, 3, 3, dtype=torch.uint8))).shape == (0, 2)


def test_merge_matches_pycocotools(rng):
    for _ in range(20):
        h, w = (int(v) for v in torch.randint(1, 60, (2,), generator=rng))
        masks = random_masks(rng, int(torch.randint(1, 6, (1,), generator=rng)), h, w, "noise")
        rs = coco_encode(masks)
        for inter in (False, True):
            assert rle.merge(rs, intersect=inter)["counts"] == cocomask.merge(rs, intersect=inter)["counts"]
    with pytest.raises(ValueError, match="size"):
        rle.merge(coco_encode(torch.ones(1, 3, 3, dtype=torch.uint8)) + coco_encode(torch.ones(1, 4, 3, dtype=torch.uint8)))


def test_design_example_string():
    counts = [5, 10, 3, 40, 2, 9940]
    assert rle.counts_to_string(counts) == b"5:3n0O\\e9"
    assert rle.string_to_counts("5:3n0O\\e9", 100, 100) == counts


def test_uncompressed_counts_accepted_and_checked():
    r = {"size": [4, 5], "counts": [3, 10, 7]}
    ref = cocomask.frPyObjects(r, 4, 5)
    assert rle.frPyObjects_uncompressed(r)["counts"] == ref["counts"]
    assert rle.area([r]).tolist() == [10]
    with pytest.raises(ValueError, match="sum"):
        rle.area([{"size": [4, 5], "counts": [3, 10]}])
    with pytest.raises(ValueError, match="negative"):
        rle.area([{"size": [4, 5], "counts": [-10, 30]}])


@pytest.mark.parametrize("bad,err,match", [
    ({"size": [4, 5], "counts": b"5:3n0O"}, ValueError, "sum"),           # underfills 20 pixels
    ({"size": [2, 2], "counts": b"5:3n0O\\e9"}, ValueError, "overrun"),
    ({"size": [4, 5], "counts": b"3\x7f"}, ValueError, "invalid character"),
    ({"size": [4, 5], "counts": b"3 "}, ValueError, "invalid character"),
    ({"size": [4, 5], "counts": b"0o"}, ValueError, "middle"),             # continuation bit, then end
    ({"size": [-1, 5], "counts": b"0"}, ValueError, "non-negative"),
    ({"size": [4], "counts": b"0"}, ValueError, "size"),
    ({"size": [4, 5], "counts": 3.5}, TypeError, "counts"),
    ({"counts": b"0"}, TypeError, "size"),
    ("not a dict", TypeError, "dict"),
    ({"size": [4, 5], "counts": "Ωx"}, ValueError, "ASCII"),
])
def test_malformed_rles_raise(bad, err, match):
    with pytest.raises(err, match=match):
        rle.decode([bad])


def test_wrong_mask_inputs_raise():
    with pytest.raises(TypeError, match="uint8 or bool"):
        rle.encode(torch.zeros(1, 3, 3, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        rle.encode(torch.zeros(1, 1, 3, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="Tensor"):
        rle.encode(np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="same"):
        rle.mask_iou(torch.zeros(1, 3, 3, dtype=torch.uint8), torch.zeros(1, 3, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="one entry per gt"):
        rle.iou(coco_encode(torch.ones(1, 3, 3, dtype=torch.uint8)), coco_encode(torch.ones(2, 3, 3, dtype=torch.uint8)), [0])
    with pytest.raises(ValueError, match="one size"):
        rle.decode(coco_encode(torch.ones(1, 3, 3, dtype=torch.uint8)) + coco_encode(torch.ones(1, 3, 4, dtype=torch.uint8)))


def test_raw_ops_validate_offsets():
    if not extension.AVAILABLE:
        pytest.skip("compiled ops not built")
    counts = torch.tensor([3, 4], dtype=torch.int64)
    with pytest.raises(ValueError, match="offsets"):
        torch.ops.ssrvg.rle_area(counts, torch.tensor([0, 5], dtype=torch.int64))
    with pytest.raises(ValueError, match="non-decreasing"):
        torch.ops.ssrvg.rle_area(counts, torch.tensor([0, 2, 1, 2], dtype=torch.int64))
    with pytest.raises(TypeError, match="int64"):
        torch.ops.ssrvg.rle_area(counts.int(), torch.tensor([0, 2], dtype=torch.int64))


# ---- the string decoder under fuzzing: never crashes, never accepts what does not fill H*W ----
@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=40), h=st.integers(0, 40), w=st.integers(0, 40))
def test_fuzz_string_decoder(data, h, w):
    r = {"size": [h, w], "counts": data}
    try:
        counts = rle.string_to_counts(data, h, w)
    except ValueError:
        with pytest.raises(ValueError):
            reference.rle_from_string(torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8),
                                      torch.tensor([0, len(data)]), torch.tensor([[h, w]]))
        return
    assert sum(counts) == h * w and min(counts) >= 0
    m = rle.decode([r])
    assert int(m.sum()) == sum(counts[1::2])
    assert np.array_equal(m[0].numpy(), cocomask.decode(r))  # pycocotools reads valid strings alike


@settings(max_examples=300, deadline=None)
@given(counts=st.lists(st.integers(0, 2**20), min_size=1, max_size=30))
def test_fuzz_string_roundtrip(counts):
    s = rle.counts_to_string(counts)
    assert rle.string_to_counts(s, 1, sum(counts)) == counts
    assert cocomask.area({"size": [1, sum(counts)], "counts": s}) == sum(counts[1::2])


# ---- the references agree with pycocotools too (they are the fallback) ----
def test_reference_matches_pycocotools(rng):
    masks = random_masks(rng, 6, 23, 31)
    gt = random_masks(rng, 4, 23, 31)
    with extension.force_reference():
        ours = rle.encode(masks)
        assert [r["counts"] for r in ours] == [r["counts"] for r in coco_encode(masks)]
        assert torch.equal(rle.decode(ours), masks)
        crowd = [0, 1, 0, 1]
        ref = np.asarray(cocomask.iou(coco_encode(masks), coco_encode(gt), crowd))
        assert np.array_equal(rle.iou(ours, coco_encode(gt), crowd).numpy(), ref)
        assert np.array_equal(rle.mask_iou(masks, gt, crowd).numpy(), ref)
        assert np.array_equal(rle.to_bbox(ours).numpy(), cocomask.toBbox(coco_encode(masks)))
        assert rle.merge(ours)["counts"] == cocomask.merge(coco_encode(masks))["counts"]


# ---- opcheck: schemas, fake kernels and dispatch are consistent ----
@pytest.mark.skipif(not extension.AVAILABLE, reason="compiled ops not built")
def test_opcheck(rng):
    masks = random_masks(rng, 3, 9, 7)
    counts, offsets = torch.ops.ssrvg.rle_encode(masks)
    sizes = torch.tensor([[9, 7]] * 3)
    crowd = torch.tensor([0, 1], dtype=torch.uint8)
    static = [
        (torch.ops.ssrvg.rle_decode.default, (counts, offsets, 9, 7)),
        (torch.ops.ssrvg.rle_area.default, (counts, offsets)),
        (torch.ops.ssrvg.rle_to_bbox.default, (counts, offsets, sizes)),
        (torch.ops.ssrvg.rle_iou.default, (counts, offsets, sizes, counts, offsets, sizes, torch.zeros(3, dtype=torch.uint8))),
        (torch.ops.ssrvg.mask_iou.default, (masks, masks[:2], crowd)),
    ]
    for op, args in static:
        torch.library.opcheck(op, args)
    # data-dependent output sizes: schema and autograd registration (no fake-tensor tracing)
    for op, args in [(torch.ops.ssrvg.rle_encode.default, (masks,)),
                     (torch.ops.ssrvg.rle_to_string.default, (counts, offsets))]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration"))


# ---- CUDA: bit-identical with the CPU kernels ----
@requires_cuda
def test_cuda_matches_cpu(rng):
    for trial in range(20):
        h, w = (int(v) for v in torch.randint(1, 200, (2,), generator=rng))
        n = int(torch.randint(1, 40, (1,), generator=rng))
        masks = random_masks(rng, n, h, w, "noise" if trial % 2 else "blobs")
        cpu = rle.encode(masks)
        gpu = rle.encode(masks.cuda())
        assert gpu == cpu
        dec = rle.decode(cpu, device="cuda")
        assert dec.is_cuda and torch.equal(dec.cpu(), masks)
        gt = random_masks(rng, 7, h, w)
        crowd = [0, 1, 0, 0, 1, 0, 0]
        ref = rle.iou(cpu, rle.encode(gt), crowd)
        out = rle.mask_iou(masks.cuda(), gt.cuda(), crowd)
        assert out.is_cuda and torch.equal(out.cpu(), ref)
        assert torch.equal(rle.mask_iou(masks, gt, crowd), ref)


@requires_cuda
@pytest.mark.parametrize("name,masks", list(edge_cases().items()))
def test_cuda_edge_cases(name, masks):
    assert rle.encode(masks.cuda()) == rle.encode(masks)
    assert torch.equal(rle.decode(rle.encode(masks), device="cuda").cpu(), masks)


@requires_cuda
def test_cuda_zero_sizes_and_opcheck():
    for shape in [(0, 5), (5, 0), (0, 0)]:
        m = torch.zeros(2, *shape, dtype=torch.uint8)
        assert rle.encode(m.cuda()) == rle.encode(m)
    assert rle.encode(torch.zeros(0, 4, 4, dtype=torch.uint8, device="cuda")) == []
    m = (torch.rand(3, 17, 9) < 0.4).to(torch.uint8).cuda()
    counts, offsets = torch.ops.ssrvg.rle_encode(m)
    torch.library.opcheck(torch.ops.ssrvg.rle_decode.default, (counts, offsets, 17, 9))
    torch.library.opcheck(torch.ops.ssrvg.mask_iou.default, (m, m, torch.zeros(3, dtype=torch.uint8, device="cuda")))


# ---- non-canonical RLEs: zero-length runs anywhere encode the same mask --------------------------
def non_canonical(counts, g):
    """The same mask's counts with empty runs inserted: a run split as (a, 0, b), a (0, 0) pair
    put between two runs, and (0, 0) at the very start or end."""
    out = []
    for c in counts:
        r = float(torch.rand(1, generator=g))
        if r < 0.3 and c > 1:
            a = int(torch.randint(0, c + 1, (1,), generator=g))
            out += [a, 0, c - a]
        elif r < 0.5:
            out += [c, 0, 0]
        else:
            out.append(c)
    if float(torch.rand(1, generator=g)) < 0.5:
        out = [0, 0] + out
    return out


@pytest.mark.parametrize("use_ref", [False, True])
def test_non_canonical_rles_give_the_true_answers(rng, use_ref):
    from ssrvg_ext.ops.reference import rle_encode
    with extension.force_reference(use_ref):
        for trial in range(30):
            h, w = (int(v) for v in torch.randint(1, 12, (2,), generator=rng))
            masks = random_masks(rng, 4, h, w, kind="noise" if trial % 2 else "blobs")
            masks[0] = 0  # an empty mask among them
            counts, offsets = rle_encode(masks)
            canon = [{"size": [h, w], "counts": counts[offsets[i]:offsets[i + 1]].tolist()} for i in range(4)]
            odd = [{"size": [h, w], "counts": non_canonical(r["counts"], rng)} for r in canon]
            assert torch.equal(rle.decode(odd), masks)
            assert torch.equal(rle.area(odd), masks.flatten(1).sum(1).long())
            coco = coco_encode(masks)
            # Boxes: pycocotools' on the canonical RLE (right there), and the mask's true box.
            assert torch.equal(rle.to_bbox(odd), torch.from_numpy(cocomask.toBbox(coco)).double())
            for i in range(4):
                ys, xs = torch.nonzero(masks[i], as_tuple=True)
                true = [0.0] * 4 if xs.numel() == 0 else [xs.min().item(), ys.min().item(),
                                                          (xs.max() - xs.min() + 1).item(), (ys.max() - ys.min() + 1).item()]
                assert rle.to_bbox(odd[i]).reshape(-1).tolist() == true
            crowd = [0, 1, 0, 0]
            want = torch.from_numpy(np.asarray(cocomask.iou(coco, coco, crowd), dtype=np.float64)).reshape(4, 4)
            assert torch.equal(rle.iou(odd, odd, crowd), want)
            assert torch.equal(rle.iou(odd, canon, crowd), want)
            for intersect in (False, True):
                merged = cocomask.merge(coco, intersect=intersect)
                assert rle.merge(odd, intersect)["counts"] == merged["counts"]
                assert rle.merge(odd[1:2], intersect)["counts"] == coco[1]["counts"]  # one RLE: canonicalised


def test_issue_examples_of_empty_runs():
    # An empty run at the same place in both: the intersection must not stop there.
    c = [1, 1, 5, 5, 6, 1, 0, 0, 2]
    r = {"size": [sum(c), 1], "counts": c}
    for use_ref in (False, True):
        with extension.force_reference(use_ref):
            assert rle.iou([r], [r]).item() == 1.0
            # Leading empty runs: the box of the one pixel at column 1, row 0 of a 3x3 mask.
            assert rle.to_bbox([{"size": [3, 3], "counts": [0, 0, 3, 1, 5]}]).tolist() == [[1.0, 0.0, 1.0, 1.0]]


@pytest.mark.parametrize("h,w", [(1, 1), (1, 13), (13, 1), (7, 8), (9, 17), (31, 40), (64, 3)])
def test_encode_every_layout_and_foreground_value(rng, h, w):
    """The CPU encoder's three ways in -- a row-major tensor (rows compared 8 pixels at a time), a
    Fortran-ordered H x W x N array seen as (N, H, W) (one linear scan, no copy), any other strides
    (made row-major) -- give pycocotools' bytes, with foreground bytes other than 1 and bool masks."""
    for kind in ("blobs", "noise"):
        base = random_masks(rng, 5, h, w, kind)
        values = torch.tensor([0, 1, 7, 255], dtype=torch.uint8)[torch.randint(1, 4, (5, h, w), generator=rng)]
        masks = torch.where(base.bool(), values, torch.zeros_like(values))
        want = [r["counts"] for r in coco_encode(base)]
        fortran = np.asfortranarray(masks.permute(1, 2, 0).numpy())
        wide = torch.zeros(5, h, 2 * w, dtype=torch.uint8)
        wide[:, :, ::2] = masks
        for name, m in {"row-major": masks, "bool": masks.bool(),
                        "fortran view": torch.from_numpy(fortran).permute(2, 0, 1),
                        "strided": wide[:, :, ::2]}.items():
            got = rle.encode(m)
            assert [r["counts"] for r in got] == want, (name, kind)
            assert all(tuple(r["size"]) == (h, w) for r in got)
