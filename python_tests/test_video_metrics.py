"""RVOS metrics: DAVIS J and F against a NumPy transcription of the DAVIS toolkit's definitions and
hand-computed cases; COCO-style mask AP against pycocotools' COCOeval; A2D summary figures."""

import math

import numpy as np
import pytest
import torch

from ssrvg_ext.evaluation.video_metrics import (boundary_f, jf_object, jf_summary, mask_ap, region_j, seg2bmap,
                                        segmentation_summary)
from ssrvg_ext.ops import rle


def np_seg2bmap(seg):
    """davis2017-evaluation's _seg2bmap for a mask of the map's own size, in NumPy."""
    seg = seg.astype(bool)
    h, w = seg.shape
    e, s, se = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def np_dilate_disk(b, r):
    out = np.zeros_like(b)
    ys, xs = np.nonzero(b)
    h, w = b.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx <= r * r:
                yy, xx = ys + dy, xs + dx
                ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                out[yy[ok], xx[ok]] = True
    return out


def np_f_measure(fg, gt, void, bound_th=0.008):
    """davis2017-evaluation's f_measure, transcribed."""
    bound_pix = bound_th if bound_th >= 1 else int(np.ceil(bound_th * np.linalg.norm(fg.shape)))
    fg_b = np_seg2bmap(fg & ~void)
    gt_b = np_seg2bmap(gt & ~void)
    fg_dil, gt_dil = np_dilate_disk(fg_b, bound_pix), np_dilate_disk(gt_b, bound_pix)
    gt_match, fg_match = gt_b & fg_dil, fg_b & gt_dil
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision, recall = fg_match.sum() / n_fg, gt_match.sum() / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def np_j(fg, gt, void):
    inter = (fg & gt & ~void).sum()
    union = ((fg | gt) & ~void).sum()
    return 1.0 if union == 0 else inter / union


def blobs(rng, t, h, w):
    """Random masks of blobs (shapes the project's data never draws): thresholded smoothed noise."""
    noise = torch.from_numpy(rng.standard_normal((t, 1, h // 4 + 1, w // 4 + 1))).float()
    up = torch.nn.functional.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    return (up > rng.uniform(0.3, 1.2)).numpy()


@pytest.mark.parametrize("bound_th", [0.008, 0.02, 2])
def test_j_and_f_agree_with_the_davis_definitions(bound_th):
    rng = np.random.default_rng(7)
    for h, w in [(48, 64), (37, 29)]:
        gt, pred = blobs(rng, 6, h, w), blobs(rng, 6, h, w)
        pred[1] = gt[1]  # a perfect frame
        pred[2] = False  # an empty prediction
        gt[3] = False  # an absent object
        pred[4], gt[4] = False, False  # both empty
        void = rng.random((6, h, w)) < 0.05
        void[0] = False
        j = region_j(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(void))
        f = boundary_f(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(void), bound_th)
        for k in range(6):
            assert abs(float(j[k]) - np_j(pred[k], gt[k], void[k])) < 1e-6
            assert abs(float(f[k]) - np_f_measure(pred[k], gt[k], void[k], bound_th)) < 1e-6, (h, w, k)
        assert float(j[1]) == 1 and float(f[1]) == 1 and float(j[4]) == 1 and float(f[4]) == 1
        assert float(f[2]) == 0 or gt[2].sum() == 0


def test_j_and_f_hand_computed():
    gt = torch.zeros(1, 10, 10, dtype=torch.bool)
    gt[0, 2:6, 2:6] = True  # 16 pixels
    pred = torch.zeros_like(gt)
    pred[0, 2:6, 3:7] = True  # shifted one column: 12 shared, 20 in the union
    assert abs(float(region_j(pred, gt)[0]) - 12 / 20) < 1e-7
    # DAVIS boundary of a square at rows/cols 2..5: row 1 cols 1..5, col 1 rows 2..5, col 5 rows 2..5,
    # row 5 cols 2..4 -> 16 pixels (the convention marks the pixel before a change)
    b = seg2bmap(gt[0])
    want = torch.zeros(10, 10, dtype=torch.bool)
    want[1, 1:6] = True
    want[2:6, 1] = True
    want[2:6, 5] = True
    want[5, 2:5] = True
    assert torch.equal(b, want)
    # radius 1: every boundary pixel of the shifted square lies within 1 px of the other's -> F = 1;
    # radius 0 (bound_th < 1 but tiny): only the coincident boundary pixels count
    assert float(boundary_f(pred, gt, bound_th=1)[0]) == 1.0
    far = torch.zeros_like(gt)
    far[0, 7:9, 7:9] = True
    assert float(boundary_f(far, gt, bound_th=1)[0]) == 0.0
    assert float(boundary_f(torch.zeros_like(gt), gt)[0]) == 0.0  # P = 1, R = 0
    assert float(boundary_f(gt, torch.zeros_like(gt))[0]) == 0.0  # P = 0, R = 1


def test_jf_summary_pools_objects():
    gt = torch.zeros(3, 8, 8, dtype=torch.bool)
    gt[:, 2:6, 2:6] = True
    objs = [jf_object(gt, gt), jf_object(torch.zeros_like(gt), gt)]
    assert objs[0]["J"] == 1 and objs[0]["F"] == 1 and objs[1]["J"] == 0 and objs[1]["F"] == 0
    s = jf_summary(objs)
    assert s["J"] == 0.5 and s["F"] == 0.5 and s["J&F"] == 0.5 and s["J-Recall"] == 0.5 and s["n"] == 2
    with pytest.raises(ValueError):
        jf_summary([])


def test_mask_ap_equals_cocoeval():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    samples, images, anns, dets = [], [], [], []
    for i in range(40):
        h, w = 20, 24
        gt = blobs(rng, 1, h, w)[0]
        gt[rng.integers(0, h), rng.integers(0, w)] = True  # never empty
        n = int(rng.integers(0, 4))
        preds = []
        for _ in range(n):
            p = gt.copy() if rng.random() < 0.4 else blobs(rng, 1, h, w)[0]
            if rng.random() < 0.5:  # jitter
                p = np.roll(p, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
            preds.append(p)
        scores = [round(float(rng.random()), 2) for _ in range(n)]  # rounded: ties happen
        g = rle.encode(torch.from_numpy(gt.astype(np.uint8)))
        ps = [rle.encode(torch.from_numpy(p.astype(np.uint8))) for p in preds]
        samples.append({"gt": g, "preds": ps, "scores": scores})
        images.append({"id": i + 1, "height": h, "width": w})
        gc = {"size": g["size"], "counts": g["counts"].decode() if isinstance(g["counts"], bytes) else g["counts"]}
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": gc, "iscrowd": 0,
                     "area": float(gt.sum()), "bbox": [0, 0, w, h]})
        for p, sc in zip(ps, scores):
            pc = {"size": p["size"], "counts": p["counts"].decode() if isinstance(p["counts"], bytes) else p["counts"]}
            dets.append({"image_id": i + 1, "category_id": 1, "segmentation": pc, "score": sc})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "referent"}]}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    got = mask_ap(samples)
    assert abs(got["mAP"] - ev.stats[0]) < 1e-9 and abs(got["AP@0.5"] - ev.stats[1]) < 1e-9
    assert abs(got["AP@0.75"] - ev.stats[2]) < 1e-9


def test_mask_ap_hand_computed():
    gt = torch.zeros(4, 4, dtype=torch.uint8)
    gt[:2, :2] = 1
    g = rle.encode(gt)
    perfect = rle.encode(gt.clone())
    wrong = rle.encode(1 - gt)
    # two frames: one found perfectly (score 0.9), one missed with a wrong prediction (score 0.8):
    # ranked [TP, FP]: recall 0.5 at precision 1 -> precision 1 at recall points 0..0.5 (51 of 101)
    got = mask_ap([{"gt": g, "preds": [perfect], "scores": [0.9]}, {"gt": g, "preds": [wrong], "scores": [0.8]}])
    assert abs(got["mAP"] - 51 / 101) < 1e-12 and abs(got["AP@0.5"] - 51 / 101) < 1e-12
    # the wrong prediction ranked first: [FP, TP]: precision 0.5 up to recall 0.5
    got = mask_ap([{"gt": g, "preds": [perfect], "scores": [0.7]}, {"gt": g, "preds": [wrong], "scores": [0.8]}])
    assert abs(got["mAP"] - 0.5 * 51 / 101) < 1e-12
    assert mask_ap([{"gt": g, "preds": [], "scores": []}])["mAP"] == 0.0
    with pytest.raises(ValueError, match="scores"):
        mask_ap([{"gt": g, "preds": [perfect], "scores": []}])


def test_segmentation_summary_by_hand():
    """MTTR's definitions: IoU = (I + 1e-6) / (U + 1e-6), Prec@k strict (an IoU of exactly 0.9 does
    not count at 0.9), overall IoU = sum I / sum U."""
    s = segmentation_summary([(5, 10), (9, 10), (0, 0), (6, 10)])
    ious = [(5 + 1e-6) / (10 + 1e-6), (9 + 1e-6) / (10 + 1e-6), 1.0, (6 + 1e-6) / (10 + 1e-6)]
    assert abs(s["oIoU"] - 20 / 30) < 1e-12 and abs(s["mIoU"] - sum(ious) / 4) < 1e-12
    assert s["Prec@0.5"] == 1.0  # 0.5000000499... > 0.5
    assert s["Prec@0.6"] == 3 / 4 and s["Prec@0.8"] == 2 / 4
    assert s["Prec@0.9"] == 2 / 4  # 0.9000000099 > 0.9 and the empty frame
    with pytest.raises(ValueError):
        segmentation_summary([])


def test_annotated_frame_evaluator_a2d_protocol():
    """The A2D / JHMDB evaluator: only frames with an annotation count; oIoU, mIoU and Prec@K from
    exact intersections and unions, mAP from the scores (COCO's rules, mask_ap); a frame without a
    prediction is an error."""
    from types import SimpleNamespace

    from ssrvg_ext.engine.evaluation import AnnotatedFrameEvaluator
    from ssrvg_ext.evaluation.video_metrics import mask_ap

    g = np.random.default_rng(0)
    recs = [SimpleNamespace(video=f"v{i}", exp_id="0", text="x", frames=[f"{t:05d}" for t in range(3)], obj_id=1)
            for i in range(2)]
    gts = {(i, f): g.random((6, 8)) < 0.4 for i in range(2) for f in range(3)}
    annotated = {(0, 1), (1, 0), (1, 2)}
    ev = AnnotatedFrameEvaluator(SimpleNamespace(records=recs),
                                 annotation=lambda rec, f: gts[(recs.index(rec), f)] if (recs.index(rec), f) in annotated
                                 else None)
    ev.reset()
    preds = {k: (g.random((6, 8)) < 0.5, float(g.random())) for k in gts}
    for i in range(2):  # one clip of 3 frames per batch, as ClipCollate makes them
        batch = {"clip_len": 3, "clips": [{"index": i, "frames": [0, 1, 2], "own": [True] * 3}]}
        ev.process(batch, [{"mask": torch.from_numpy(preds[(i, f)][0].astype(np.uint8)), "score": preds[(i, f)][1]}
                           for f in range(3)])
    metrics, results = ev.evaluate()
    inter = [int((preds[k][0] & gts[k]).sum()) for k in sorted(annotated)]
    union = [int((preds[k][0] | gts[k]).sum()) for k in sorted(annotated)]
    ious = [(a + 1e-6) / (b + 1e-6) for a, b in zip(inter, union)]
    assert metrics["n"] == 3 == len(results)
    assert abs(metrics["oIoU"] - sum(inter) / sum(union)) < 1e-12 and abs(metrics["mIoU"] - np.mean(ious)) < 1e-12
    assert metrics["Prec@0.5"] == np.mean([v > 0.5 for v in ious])
    want = mask_ap([{"gt": rle.encode(torch.from_numpy(gts[k].astype(np.uint8))),
                     "preds": [rle.encode(torch.from_numpy(preds[k][0].astype(np.uint8)))], "scores": [preds[k][1]]}
                    for k in sorted(annotated)])
    assert metrics["mAP"] == want["mAP"] and metrics["AP@0.5"] == want["AP@0.5"]
    ev.reset()
    ev.process({"clip_len": 3, "clips": [{"index": 0, "frames": [0, 1, 2], "own": [True] * 3}]},
               [{"mask": torch.zeros(6, 8, dtype=torch.uint8), "score": 0.5}] * 3)
    with pytest.raises(RuntimeError, match="missed frame 00000 of video v1"):
        ev.evaluate()
