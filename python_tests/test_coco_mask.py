"""ssrvg_ext.ops.coco_mask against pycocotools.mask, side by side, with the same calls."""

import numpy as np
import pytest
import torch
from pycocotools import mask as pcm

from ssrvg_ext.ops import coco_mask as ours


def random_polygon(g, h, w, n, spread=1.3):
    """n vertices around a centre (star-shaped, so not always convex), partly outside the image."""
    cx, cy = float(torch.rand(1, generator=g)) * w, float(torch.rand(1, generator=g)) * h
    ang = torch.sort(torch.rand(n, generator=g) * 2 * np.pi).values
    rad = (torch.rand(n, generator=g) * 0.6 + 0.2) * min(h, w) * spread / 2
    xs, ys = cx + rad * torch.cos(ang), cy + rad * torch.sin(ang)
    return torch.stack([xs, ys], 1).reshape(-1).double().tolist()


@pytest.mark.parametrize("seed", range(6))
def test_polygons_bit_exact(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(40):
        h, w = (int(v) for v in torch.randint(1, 120, (2,), generator=g))
        polys = [random_polygon(g, h, w, int(torch.randint(3, 30, (1,), generator=g))) for _ in range(3)]
        polys.append([float(v) for v in (torch.randint(-5, 130, (8,), generator=g))])  # integer corners, degenerate ones
        polys.append([0.2, 0.2, 0.2, 0.2, 3.7, 5.1, 0.21, 0.19])  # repeated vertices
        want, got = pcm.frPyObjects(polys, h, w), ours.frPyObjects(polys, h, w)
        assert [r["counts"] for r in got] == [r["counts"] for r in want]
        assert all(r["size"] == [h, w] for r in got)


def test_boxes_bit_exact():
    g = torch.Generator().manual_seed(7)
    boxes = (torch.rand(50, 4, generator=g) * torch.tensor([90.0, 70.0, 40.0, 30.0]) - 5).numpy().astype(np.float64)
    want, got = pcm.frPyObjects(boxes, 64, 80), ours.frPyObjects(boxes, 64, 80)
    assert [r["counts"] for r in got] == [r["counts"] for r in want]
    assert ours.frPyObjects(boxes.tolist(), 64, 80) == got  # a list of 4-lists too (pycocotools wants an array)


def test_uncompressed_rles():
    unc = {"size": [4, 5], "counts": [3, 6, 2, 9]}
    assert ours.frPyObjects(unc, 4, 5) == pcm.frPyObjects(unc, 4, 5)
    assert ours.frPyObjects([unc, unc], 4, 5) == pcm.frPyObjects([unc, unc], 4, 5)


def test_encode_decode_area_bbox_merge_iou():
    g = torch.Generator().manual_seed(3)
    m = np.asfortranarray((torch.rand(37, 29, 6, generator=g) < 0.4).numpy().astype(np.uint8))
    m[..., 0] = 0
    rles, want = ours.encode(m), pcm.encode(m)
    assert [r["counts"] for r in rles] == [r["counts"] for r in want]
    assert ours.encode(m[..., 1])["counts"] == pcm.encode(np.asfortranarray(m[..., 1]))["counts"]
    dec = ours.decode(rles)
    assert np.array_equal(dec, pcm.decode(want)) and dec.flags.f_contiguous
    assert np.array_equal(ours.decode(rles[2]), pcm.decode(want[2]))
    assert np.array_equal(ours.area(rles), pcm.area(want)) and ours.area(rles[3]) == pcm.area(want[3])
    assert np.array_equal(ours.toBbox(rles), pcm.toBbox(want))
    assert np.array_equal(ours.toBbox(rles[4]), pcm.toBbox(want[4]))
    for inter in (0, 1):
        assert ours.merge(rles, intersect=inter)["counts"] == pcm.merge(want, intersect=inter)["counts"]
    crowd = [0, 1, 0]
    assert np.array_equal(ours.iou(rles, rles[:3], crowd), pcm.iou(want, want[:3], crowd))
    boxes = (torch.rand(5, 4, generator=g) * 20).numpy().astype(np.float64)
    np.testing.assert_array_equal(ours.iou(boxes, boxes[:3], crowd), pcm.iou(boxes, boxes[:3], crowd))
    assert ours.iou([], rles, [0] * 6) == pcm.iou([], want, [0] * 6) == []


def test_bad_inputs_raise():
    with pytest.raises(TypeError, match="polygons"):
        ours.frPyObjects([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 5, 5)  # one flat polygon, not a list of them
    with pytest.raises(ValueError, match="finite"):
        ours.frPyObjects([[0, 0, float("nan"), 1, 2, 2]], 5, 5)
    with pytest.raises(ValueError, match="non-negative integers"):
        ours.frPyObjects([[0, 0, 1, 1, 2, 0]], -1, 5)
    with pytest.raises(ValueError, match="uint8"):
        ours.encode(np.zeros((3, 3, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="RLEs with RLEs"):
        ours.iou(np.zeros((1, 4)), ours.encode(np.zeros((3, 3, 1), np.uint8, order="F")), [0])
