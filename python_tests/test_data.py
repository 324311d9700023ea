"""Data: synthetic generator -> release format -> reader round trip, safety, transforms, batching."""

import json
import math
import os
import pickle
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as cocomask
from torch.utils.data import DataLoader, DistributedSampler

from ssrvg_ext.data import (Collate, ImageGroupBatchSampler, RefDataset, WordTokenizer, build_transforms, load_refer,
                            load_refs_pickle, swap_left_right)
from ssrvg_ext.data.readers.refer import UnsafePickleError, load_instance_labels
from conftest import test_seed
from ssrvg_ext.data.synthetic.images import COLORS, SHAPES, generate
from ssrvg_ext.data.transforms import RandomCropKeepBox, RandomHorizontalFlip, ResizePad
from ssrvg_ext.ops import rle


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    seed = test_seed()  # fixed by default (SSRVG_TEST_SEED); a failure shows it in the path
    out = str(tmp_path_factory.mktemp(f"synth_seed{seed}_"))
    stats = generate(out, num_images=60, seed=seed)
    return out, stats


def test_round_trip_boxes_and_masks(synth):
    out, stats = synth
    recs = load_refer(out, os.path.join(out, "images"))
    assert len(recs) == stats["expressions"] > 100
    assert {r.split for r in recs} == {"train", "val", "testA", "testB"}
    with open(os.path.join(out, "instances.json")) as f:
        anns = {a["id"]: a for a in json.load(f)["annotations"]}
    for r in recs:
        m = cocomask.decode(r.rle)
        assert m.shape == r.orig_size
        ys, xs = np.nonzero(m)
        # the box is exactly the tight box of the mask, and the mask's area is the annotated one
        assert r.box_xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert m.sum() == anns[r.ann_id]["area"]
    # the painted pixels under each mask are, of the palette, closest to the annotated colour
    from PIL import Image
    from ssrvg_ext.data.synthetic.images import COLORS
    for r in recs[:40]:
        img = np.asarray(Image.open(r.image_path).convert("RGB")).astype(float)
        m = cocomask.decode(r.rle).astype(bool)
        mean = img[m].mean(0)
        nearest = min(COLORS, key=lambda c: np.abs(mean - np.array(COLORS[c])).sum())
        assert nearest == anns[r.ann_id]["attributes"]["color"], (r.text, mean)


# ---- an independent reading of the grammar: every expression names exactly one object ----
_ORD = {"first": 0, "second": 1, "third": 2}
_SUP = {"leftmost": "left", "rightmost": "right", "topmost": "top", "bottommost": "bottom"}


def _np(words, anns, cats):
    shape = words[-1]
    out = [a for a in anns if cats[a["category_id"]] == shape]
    for w in words[:-1]:
        out = [a for a in out if w in (a["attributes"]["color"], a["attributes"]["size"])]
    return out


def _key(a, side):
    cx, cy = a["attributes"]["center"]
    return {"left": cx, "right": -cx, "top": cy, "bottom": -cy}[side]


def interpret(text, anns, cats):
    words = text.split()
    assert words[0] == "the"
    for rel in ("left of", "right of", "above", "below"):
        m = re.fullmatch(rf"the (.+) {rel} the (.+)", text)
        if m:
            targets, lms = _np(m.group(1).split(), anns, cats), _np(m.group(2).split(), anns, cats)
            if len(lms) != 1:
                return []
            lx, ly = lms[0]["attributes"]["center"]
            ok = {"left of": lambda x, y: x < lx - 6, "right of": lambda x, y: x > lx + 6,
                  "above": lambda x, y: y < ly - 6, "below": lambda x, y: y > ly + 6}[rel]
            return [a for a in targets if a is not lms[0] and ok(*a["attributes"]["center"])]
    m = re.fullmatch(r"the (second|third) (.+) from the (left|right|top|bottom)", text)
    if m or words[1] in _SUP:
        k, noun, side = (_ORD[m.group(1)], m.group(2), m.group(3)) if m else (0, " ".join(words[2:]), _SUP[words[1]])
        cands = sorted(_np(noun.split(), anns, cats), key=lambda a: _key(a, side))
        keys = [_key(a, side) for a in cands]
        if k >= len(cands) or any(b - a < 6 for a, b in zip(keys, keys[1:])):
            return []
        return [cands[k]]
    return _np(words[1:], anns, cats)


def test_every_expression_refers_to_exactly_one_object(synth):
    out, _ = synth
    with open(os.path.join(out, "instances.json")) as f:
        inst = json.load(f)
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    by_image = {}
    for a in inst["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    refs = load_refs_pickle(os.path.join(out, "refs(unc).p"))
    kinds = set()
    for r in refs:
        for s in r["sentences"]:
            found = interpret(s["sent"], by_image[r["image_id"]], cats)
            assert [a["id"] for a in found] == [r["ann_id"]], s["sent"]
            kind = ("rel" if " of " in s["sent"] or "above" in s["sent"] or "below" in s["sent"] else
                    "ordinal" if "from the" in s["sent"] or "most" in s["sent"] else "attr")
            assert s["kind"] == kind, s["sent"]  # the form the generator writes beside each expression
            kinds.add(kind)
    assert kinds == {"rel", "ordinal", "attr"}


def test_generation_is_deterministic_for_any_number_of_processes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(str(a), num_images=9, seed=3, workers=1)
    generate(str(b), num_images=9, seed=3, workers=2)
    generate(str(c), num_images=9, seed=4, workers=2)
    for name in ("refs(unc).p", "instances.json", "images/synth_000009.jpg"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "instances.json").read_bytes() != (c / "instances.json").read_bytes()


def test_split_sizes():
    from ssrvg_ext.data.synthetic.images import split_sizes

    assert split_sizes(6000) == {"train": 5700, "val": 100, "testA": 100, "testB": 100}
    assert split_sizes(1500) == {"train": 1200, "val": 100, "testA": 100, "testB": 100}
    assert split_sizes(60) == {"train": 48, "val": 4, "testA": 4, "testB": 4}
    assert split_sizes(300, eval_images=7) == {"train": 279, "val": 7, "testA": 7, "testB": 7}


# ---- safety and errors ----
class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "refs(unc).p"
    bad.write_bytes(pickle.dumps([{"ref_id": 1, "x": _Evil(str(marker))}]))
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|refusing"):
        load_refs_pickle(str(bad))
    assert not marker.exists()


def _tiny_release(tmp_path, seg, make_image=True):
    (tmp_path / "imgs").mkdir()
    if make_image:
        from PIL import Image
        Image.new("RGB", (20, 10)).save(tmp_path / "imgs" / "a.jpg")
    inst = {"images": [{"id": 7, "file_name": "a.jpg", "height": 10, "width": 20}],
            "annotations": [{"id": 3, "image_id": 7, "category_id": 1, "bbox": [1, 1, 15, 7], "segmentation": seg,
                             "iscrowd": 0, "area": 0}],
            "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    refs = [{"ref_id": 1, "ann_id": 3, "image_id": 7, "category_id": 1, "split": "val", "sent_ids": [9],
             "sentences": [{"tokens": ["the", "thing"], "raw": "the thing", "sent_id": 9, "sent": "the thing"}],
             "file_name": "a_3.jpg"}]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return str(tmp_path), str(tmp_path / "imgs")


def test_multi_polygon_is_union(tmp_path):
    polys = [[1, 1, 6, 1, 6, 6, 1, 6], [10, 2, 16, 2, 16, 8, 10, 8]]
    ann, imgs = _tiny_release(tmp_path, polys)
    (rec,) = load_refer(ann, imgs)
    m = cocomask.decode(rec.rle)
    parts = [cocomask.decode(cocomask.frPyObjects([p], 10, 20)[0]) for p in polys]
    assert np.array_equal(m, parts[0] | parts[1]) and parts[0].sum() > 0 and parts[1].sum() > 0
    assert rec.box_xyxy == (1.0, 1.0, 16.0, 8.0) and rec.text == "the thing" and rec.split == "val"


def test_reader_errors_name_the_problem(tmp_path):
    ann, imgs = _tiny_release(tmp_path, [[1, 1, 6, 1, 6, 6]], make_image=False)
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        load_refer(ann, imgs)
    with pytest.raises(ValueError, match="unknown split"):
        load_refer(ann, imgs, splits=["tset"], check_images=False)
    with pytest.raises(FileNotFoundError, match="refs\\(umd\\).p"):
        load_refer(ann, imgs, split_by="umd")


# ---- transforms ----
def test_flip_swaps_whole_words_and_geometry():
    assert swap_left_right("left of the bright lamp") == "right of the bright lamp"
    assert swap_left_right("the leftmost cup, Left of the leftover rightmost one") == \
        "the rightmost cup, Right of the leftover leftmost one"
    img = torch.arange(2 * 5, dtype=torch.uint8).view(1, 2, 5).expand(3, 2, 5).clone()
    mask = torch.zeros(2, 5, dtype=torch.uint8)
    mask[:, 0:2] = 1
    s = {"image": img, "mask": mask, "box": torch.tensor([0.0, 0.0, 2.0, 2.0]), "text": "left of the bright lamp"}
    out = RandomHorizontalFlip(p=1.0)(s)
    assert out["text"] == "right of the bright lamp"
    assert out["box"].tolist() == [3.0, 0.0, 5.0, 2.0]
    assert out["mask"][:, 3:].all() and not out["mask"][:, :3].any()
    assert torch.equal(out["image"][:, :, 0], img[:, :, 4])


def test_resize_pad_records_mapping(synth):
    out, _ = synth
    recs = load_refer(out, os.path.join(out, "images"), splits=["val"])
    ds = RefDataset(recs, build_transforms(False, 128))
    s = ds[0]
    r = recs[0]
    h, w = r.orig_size
    assert s["image"].shape == (3, 128, 128) and s["mask"].shape == (128, 128)
    assert max(s["meta"]["valid"]) == 128 and s["mask"][s["meta"]["valid"][0]:].sum() == 0
    # the normalised box maps back to the original box
    cx, cy, bw, bh = (s["box_cxcywh"] * 128).tolist()
    sy, sx = s["meta"]["scale"]
    back = [(cx - bw / 2) / sx, (cy - bh / 2) / sy, (cx + bw / 2) / sx, (cy + bh / 2) / sy]
    assert np.allclose(back, r.box_xyxy, atol=1e-3)


def test_training_transforms_keep_the_object(synth):
    out, _ = synth
    recs = load_refer(out, os.path.join(out, "images"), splits=["train"])[:30]
    ds = RefDataset(recs, build_transforms(True, 128))
    for i in range(len(ds)):
        s = ds[i]
        assert s["mask"].sum() > 0
        cx, cy, bw, bh = s["box_cxcywh"].tolist()
        assert 0 <= cx <= 1 and 0 <= cy <= 1 and bw > 0 and bh > 0


def test_instance_labels_follow_every_transform(synth):
    """The instance map moves exactly like the mask: under the target's mask (crop, flip, resize
    applied) every pixel names the target object, whose labels are its annotated ones."""
    out, _ = synth
    labels = load_instance_labels(out, ["category", "color", "size"])
    assert labels.classes["category"] == sorted(SHAPES) and labels.classes["size"] == ["big", "small"]
    assert labels.classes["color"] == sorted(COLORS)
    with open(os.path.join(out, "instances.json")) as f:
        inst = json.load(f)
    anns = {a["id"]: a for a in inst["annotations"]}
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    recs = load_refer(out, os.path.join(out, "images"), splits=["train"])[:40]
    tok = WordTokenizer.train([r.text for r in recs])
    for train in (True, False):
        ds = RefDataset(recs, build_transforms(train, 96), cache_images=train, instances=labels)
        b = Collate(tok)([ds[i] for i in range(len(ds))])
        assert b["instances"].shape == (len(ds), 96, 96) and b["inst_labels"].shape[-1] == 3
        for i, r in enumerate(recs):
            under = b["instances"][i][b["masks"][i].bool()].long()
            assert len(under) and (under == under[0]).all()
            got = b["inst_labels"][i, under[0]].tolist()
            a = anns[r.ann_id]
            want = [sorted(SHAPES).index(cats[a["category_id"]]) + 1, sorted(COLORS).index(a["attributes"]["color"]) + 1,
                    ["big", "small"].index(a["attributes"]["size"]) + 1]
            assert got == want, (r.text, got, want)
            assert (b["inst_labels"][i, 0] == 0).all()  # background row
    only = load_instance_labels(out, ["category"], image_ids={recs[0].image_id})
    assert set(only.per_image) == {recs[0].image_id} and only.classes["category"] == sorted(SHAPES)
    with pytest.raises(ValueError, match="no annotation has a categorical label"):
        load_instance_labels(out, ["center"])  # a continuous attribute is not a class label


def test_instance_labels_from_boxes_read_no_mask(synth, tmp_path):
    """data.aux_shapes=boxes: every object's region is its box's filled rectangle (smaller objects drawn
    last), and nothing of the masks is read: the same labels load from a copy whose segmentations are garbage."""
    out, _ = synth
    with open(os.path.join(out, "instances.json")) as f:
        inst = json.load(f)
    anns = {a["id"]: a for a in inst["annotations"]}
    for a in inst["annotations"]:
        a["segmentation"] = "not a mask"
    with open(tmp_path / "instances.json", "w") as f:
        json.dump(inst, f)
    with pytest.raises(ValueError):
        load_instance_labels(str(tmp_path), ["color"])  # the masks are read by default
    with pytest.raises(ValueError, match="aux_shapes"):
        load_instance_labels(out, ["color"], shapes="polygons")
    boxes = load_instance_labels(str(tmp_path), ["color"], shapes="boxes")
    masks = load_instance_labels(out, ["color"])
    assert boxes.classes == masks.classes and set(boxes.per_image) == set(masks.per_image)
    differ = 0
    for image_id, (rles, labels) in list(boxes.per_image.items())[:30]:
        mrles, mlabels = masks.per_image[image_id]
        assert sorted(map(tuple, labels)) == sorted(map(tuple, mlabels))
        areas = [cocomask.area(r) for r in rles]
        assert areas == sorted(areas, reverse=True)  # larger first: smaller ones overwrite them
        for r in rles:
            m = cocomask.decode(r).astype(bool)
            ys, xs = np.nonzero(m)
            match = [a for a in anns.values() if a["image_id"] == image_id
                     and abs(a["bbox"][0] - xs.min()) <= 1 and abs(a["bbox"][1] - ys.min()) <= 1]
            assert match, "a region that is no object's box"
            assert m[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()  # a filled rectangle
        differ += sum(cocomask.area(r) != cocomask.area(q) for r, q in zip(rles, mrles))
    assert differ  # the synthetic shapes are not all rectangles


def test_crop_keeps_boxes_that_span_the_image():
    img = torch.zeros(3, 20, 30, dtype=torch.uint8)
    for box in ([0.0, 0.0, 30.0, 20.0], [[2.0, 3.0, 8.0, 9.0], [20.0, 0.0, 30.0, 20.0]]):
        for _ in range(20):
            s = RandomCropKeepBox(p=1.0)({"image": img, "box": torch.tensor(box), "mask": torch.zeros(20, 30)})
            h, w = s["image"].shape[-2:]
            b, before = s["box"].reshape(-1, 4), torch.tensor(box).reshape(-1, 4)
            assert (b[:, :2] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
            assert torch.allclose(b[:, 2:] - b[:, :2], before[:, 2:] - before[:, :2])  # shifted, not resized


def test_crop_keeps_fractional_box_edges():
    """COCO boxes are floats: the window covers every pixel a box touches, to its far fractional edge."""
    img = torch.zeros(3, 20, 30, dtype=torch.uint8)
    box = torch.tensor([2.3, 3.6, 17.7, 9.2])
    random.seed(0)
    sizes = set()
    for _ in range(200):
        s = RandomCropKeepBox(p=1.0, min_frac=0.0)({"image": img, "box": box, "mask": torch.zeros(20, 30)})
        h, w = s["image"].shape[-2:]
        b = s["box"]
        assert b[0] >= 0 and b[1] >= 0 and b[2] <= w and b[3] <= h, (b, w, h)
        sizes.add((w, h))
    assert min(w for w, _ in sizes) == 16 and min(h for _, h in sizes) == 7  # the tightest: x 2..18, y 3..10


def test_crop_keeping_objects_cuts_no_object(synth):
    """crop="objects": every object keeps all its pixels (so no count or relation changes), the crop
    still moves the image; the referent-only crop does cut objects away on the same samples."""
    out, _ = synth
    recs = load_refer(out, os.path.join(out, "images"), splits=["train"])[:40]
    ds = RefDataset(recs, lambda s: s, instances=load_instance_labels(out, []))  # the masks alone, no labels
    random.seed(0)
    moved = cut_by_plain = 0
    for i in range(len(ds)):
        s = ds[i]
        before = torch.bincount(s["instances"].flatten().long())
        for keep, crop in ((True, RandomCropKeepBox(p=1.0, keep_objects=True)), (False, RandomCropKeepBox(p=1.0))):
            c = crop(s)
            after = torch.bincount(c["instances"].flatten().long(), minlength=len(before))
            if keep:
                assert torch.equal(after[1:], before[1:]), recs[i].text
                moved += c["image"].shape != s["image"].shape
            else:
                cut_by_plain += not torch.equal(after[1:], before[1:])
    assert moved > 10 and cut_by_plain > 5
    tok = WordTokenizer.train([r.text for r in recs])
    crop_ds = RefDataset(recs[:8], build_transforms(True, 64, crop="objects"), instances=load_instance_labels(out, []))
    b = Collate(tok)([crop_ds[i] for i in range(8)])
    assert b["inst_labels"].shape[0] == 8 and b["inst_labels"].shape[-1] == 0
    with pytest.raises(ValueError, match="instance map"):
        RandomCropKeepBox(p=1.0, keep_objects=True)({"image": torch.zeros(3, 8, 8), "box": torch.tensor([1.0, 1, 4, 4])})
    with pytest.raises(ValueError, match="data.crop"):
        build_transforms(True, 64, crop="all")


def test_image_group_sampler_covers_every_expression_once(synth):
    out, _ = synth
    recs = load_refer(out, os.path.join(out, "images"), splits=["train"])
    k, bs = 2, 6
    one = ImageGroupBatchSampler(recs, k, bs, seed=3)
    epochs = []
    for epoch in (0, 1):
        one.set_epoch(epoch)
        batches = list(one)
        assert len(batches) == len(one) and all(len(b) == bs // k for b in batches)
        groups = one.groups()
        assert sorted(i for g in groups for i in g) == list(range(len(recs)))  # every expression once
        for g in groups:
            assert 1 <= len(g) <= k and len({recs[i].image_id for i in g}) == 1
            objs = {recs[i].ann_id for i in g}
            n_objs = len({r.ann_id for r in recs if r.image_id == recs[g[0]].image_id})
            assert len(objs) == min(len(g), n_objs)  # different objects of the image first
        assert [i for b in batches for g in b for i in g] == [i for g in groups[:len(one) * (bs // k)] for i in g]
        epochs.append(groups)
    assert epochs[0] != epochs[1]
    one.set_epoch(0)
    assert one.groups() == epochs[0]  # the order is a function of (seed, epoch): resumable
    ranks = [ImageGroupBatchSampler(recs, k, bs, seed=3, rank=r, world=2) for r in (0, 1)]
    parts = [set(g for b in s for g in b) for s in ranks]
    assert len(ranks[0]) == len(ranks[1]) > 0 and not parts[0] & parts[1]
    assert set(ranks[0].groups()) | set(ranks[1].groups()) <= set(epochs[0])


def _thin_margins(mask: torch.Tensor, scale) -> tuple[float, float]:
    """How far (source px, rows then columns) a mask's extent reaches beyond its parts at least k x k
    thick, k = the source pixels per output pixel + 1: nearest downscaling samples every such block, so
    only these thinner margins (tips, slivers left by an occluder) may vanish from the resampled mask."""
    k = math.ceil(1 / min(scale)) + 1
    ys, xs = mask.nonzero(as_tuple=True)
    full = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
    whole = F.avg_pool2d(mask[None, None].float(), k, stride=1)[0, 0] > 1 - 1e-6  # k x k blocks inside
    if not whole.any():
        return math.inf, math.inf
    by, bx = whole.nonzero(as_tuple=True)
    thick = (by.min(), bx.min(), by.max() + k, bx.max() + k)
    gaps = [abs(int(a) - int(b)) for a, b in zip(full, thick)]
    return max(gaps[0], gaps[2]), max(gaps[1], gaps[3])


@pytest.mark.parametrize("train", [True, False])
def test_group_samples_follow_every_transform(synth, train):
    """k expressions of one image share one transformed image: each keeps its own mask, box, text
    (left/right swapped together on a flip) and its object's labels under its mask."""
    random.seed(0)  # the crop, flip and jitter draw from these
    torch.manual_seed(0)
    out, _ = synth
    labels = load_instance_labels(out, ["category", "color"])
    recs = load_refer(out, os.path.join(out, "images"), splits=["train"])
    tok = WordTokenizer.train([r.text for r in recs])
    ds = RefDataset(recs, build_transforms(train, 96), instances=labels)
    sampler = ImageGroupBatchSampler(recs, 3, 12, seed=0)
    groups = next(iter(sampler))
    b = Collate(tok)([ds[g] for g in groups])
    n = sum(len(g) for g in groups)
    assert b["images"].shape == (len(groups), 3, 96, 96) and b["instances"].shape == (len(groups), 96, 96)
    assert b["boxes"].shape == (n, 4) and b["masks"].shape == (n, 96, 96) and b["text_ids"].shape[0] == n
    assert b["image_index"].tolist() == [gi for gi, g in enumerate(groups) for _ in g]
    flat = [i for g in groups for i in g]
    for e, (i, meta) in enumerate(zip(flat, b["meta"])):
        r = recs[i]
        assert meta["index"] == i and meta["sent_id"] == r.sent_id
        assert meta["text"] in (r.text, swap_left_right(r.text))
        m = b["masks"][e].bool()
        under = b["instances"][b["image_index"][e]][m].long()
        assert len(under) and (under == under[0]).all()
        want = labels.per_image[r.image_id][1][under[0] - 1]
        assert b["inst_labels"][b["image_index"][e], under[0]].tolist() == list(want)
        ys, xs = m.nonzero(as_tuple=True)
        cx, cy, bw, bh = (b["boxes"][e] * 96).tolist()  # the box still frames the mask:
        edges = torch.tensor([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
        extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        ty, tx = (1.0 + s for s in meta["scale"])  # the mask inside the box (one source pixel of raster
        slack = torch.tensor([tx, ty, tx, ty])     # plus nearest resampling)...
        assert (extent[:2] >= edges[:2] - slack[:2]).all() and (extent[2:] <= edges[2:] + slack[2:]).all()
        gy, gx = _thin_margins(torch.from_numpy(cocomask.decode(r.rle)), meta["scale"])
        near = torch.tensor([3 + gx * meta["scale"][1], 3 + gy * meta["scale"][0]]).repeat(2)
        assert ((extent - edges).abs() <= near).all()  # ...and close to its edges, but for parts too thin to sample
    with pytest.raises(ValueError, match="one image"):
        ds[(flat[0], next(j for j, r in enumerate(recs) if r.image_id != recs[flat[0]].image_id))]


# ---- tokenizer and batching ----
def test_word_tokenizer_roundtrip_and_truncation(tmp_path):
    tok = WordTokenizer.train(["the red square", "the big blue circle left of the star"], max_len=6)
    ids, mask = tok.encode(["the red square", "the big blue circle left of the star", "an unseen word"])
    assert ids.shape == (3, 6) and mask.dtype == torch.bool
    assert mask[0].tolist() == [True] * 5 + [False] and mask[1].all()
    assert ids[2, 1] == tok.tok.token_to_id("[UNK]")
    tok.save(str(tmp_path / "tok.json"))
    again = WordTokenizer.load(str(tmp_path / "tok.json"), max_len=6)
    assert torch.equal(again.encode(["the red square"])[0], ids[:1])


def test_collate_with_distributed_sampler(synth):
    out, _ = synth
    recs = load_refer(out, os.path.join(out, "images"), splits=["train"])
    tok = WordTokenizer.train([r.text for r in recs])
    ds = RefDataset(recs, build_transforms(True, 96))
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        sampler.set_epoch(0)
        dl = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=Collate(tok))
        b = next(iter(dl))
        assert b["images"].shape == (4, 3, 96, 96) and b["text_ids"].shape[0] == 4 and b["masks"].dtype == torch.uint8
        seen += list(sampler)
    assert set(seen) == set(range(len(ds)))  # the two ranks cover every sample


# ---- untrusted annotations and images ----
def _release_with(tmp_path, seg=None, file_name="a.jpg", sent="the thing"):
    ann, imgs = _tiny_release(tmp_path, seg if seg is not None else [[1, 1, 6, 1, 6, 6]])
    inst = json.loads((tmp_path / "instances.json").read_text())
    inst["images"][0]["file_name"] = file_name
    (tmp_path / "instances.json").write_text(json.dumps(inst))
    refs = pickle.loads((tmp_path / "refs(unc).p").read_bytes())
    refs[0]["sentences"][0]["sent"] = refs[0]["sentences"][0]["raw"] = sent
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return ann, imgs


@pytest.mark.parametrize("name", ["../instances.json", "/etc/passwd", "sub/../../x.jpg", ""])
def test_image_paths_must_stay_in_the_image_folder(tmp_path, name):
    ann, imgs = _release_with(tmp_path, file_name=name)
    with pytest.raises(ValueError, match="image 7: file_name"):
        load_refer(ann, imgs, check_images=False)


@pytest.mark.parametrize("seg", [
    {"size": [10, 20], "counts": "P"},                                   # string ends mid-number
    {"size": [10, 20], "counts": [1, 2**63 - 1, 2**63 - 1, 5]},          # counts wrap int64
    {"size": [10, 20], "counts": [5, -1, 196]},                          # negative run
    {"size": [10, 20], "counts": [199]},                                 # short of H*W
    {"size": [10, 20], "counts": "1\x7f"},                               # bad character
    [[1, 1, 6, 1, 6]],                                                   # odd polygon
    [[1, 1, 6, 1, float("nan"), 6]],                                     # NaN coordinate
    [["1", 1, 6, 1, 6, 6]],                                              # not a number
    {"size": [10, 20]},                                                  # no counts
])
def test_malformed_segmentation_names_the_annotation(tmp_path, seg):
    ann, imgs = _release_with(tmp_path, seg=seg)
    with pytest.raises(ValueError, match="annotation 3"):
        load_refer(ann, imgs)


def test_valid_rle_segmentations_are_read_exactly(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[2:7, 3:15] = 1
    coco = cocomask.encode(np.asfortranarray(mask))
    for seg in ({"size": [10, 20], "counts": coco["counts"].decode()},
                {"size": [10, 20], "counts": rle.string_to_counts(coco["counts"], 10, 20)}):
        sub = tmp_path / str(len(os.listdir(tmp_path)))
        sub.mkdir()
        (rec,) = load_refer(*_release_with(sub, seg=seg))
        assert np.array_equal(cocomask.decode(rec.rle), mask)


@pytest.mark.parametrize("sent", ["", "   "])
def test_empty_expression_names_ref_and_sentence(tmp_path, sent):
    ann, imgs = _release_with(tmp_path, sent=sent)
    with pytest.raises(ValueError, match="ref 1, sentence 9: the expression is empty"):
        load_refer(ann, imgs)


def test_images_are_read_robustly(tmp_path):
    from PIL import Image

    from ssrvg_ext.data.dataset import read_image
    rgb = np.random.default_rng(0).integers(0, 256, (6, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert torch.equal(read_image(str(tmp_path / "rgb.png")), torch.from_numpy(rgb).permute(2, 0, 1))
    # EXIF orientation 6 (rotate 90 clockwise to display): the tensor is the displayed image.
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    assert read_image(str(tmp_path / "rot.jpg")).shape == (3, 4, 6)
    # 16-bit grayscale: scaled to 8 bits, not saturated.
    g16 = np.array([[0, 257 * 100], [65535, 257 * 7]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = read_image(str(tmp_path / "g16.png"))
    assert out.shape == (3, 2, 2) and out[0].tolist() == [[0, 100], [255, 7]] and torch.equal(out[0], out[2])
    # Grayscale, palette, RGBA.
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    assert torch.equal(read_image(str(tmp_path / "g.png"))[1], torch.from_numpy(rgb[..., 0]))
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(np.dstack([rgb, np.full((6, 4), 255, np.uint8)])).save(tmp_path / "rgba.png")
    assert torch.equal(read_image(str(tmp_path / "rgba.png")), torch.from_numpy(rgb).permute(2, 0, 1))
    assert read_image(str(tmp_path / "p.png")).shape == (3, 6, 4)
    # Truncated and non-image files are named.
    data = (tmp_path / "rot.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for bad in ("cut.jpg", "junk.png"):
        with pytest.raises(ValueError, match=bad):
            read_image(str(tmp_path / bad))


def test_over_long_expressions_keep_the_closing_token():
    from ssrvg_ext.data.tokenizer import WordTokenizer
    tok = WordTokenizer.train(["a b c d e f g h"], max_len=5)
    ids, mask = tok.encode(["a b c d e f g h", "a b"])
    sep = tok.tok.token_to_id("[SEP]")
    assert ids[0].tolist()[-1] == sep and ids[0].tolist()[0] == tok.tok.token_to_id("[CLS]") and bool(mask[0].all())
    assert ids[1].tolist()[:4] == [tok.tok.token_to_id(t) for t in ("[CLS]", "a", "b", "[SEP]")]


def test_resize_pad_of_an_input_sized_frame_is_the_frame():
    """A frame already size x size (the video preset's) skips the resize: the same values as resizing it
    (bilinear image, nearest labels) to its own size, without the work; the outputs are copies."""
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 24, 24), generator=g, dtype=torch.uint8)
    mask = (torch.rand(24, 24, generator=g) < 0.4).to(torch.uint8)
    inst = torch.randint(0, 5, (24, 24), generator=g, dtype=torch.uint8)
    s = {"image": img, "mask": mask, "instances": inst, "box": torch.tensor([2.0, 3.0, 20.0, 17.0])}
    out = ResizePad(24)(s)
    ref_img = F.interpolate(img[None].float(), size=(24, 24), mode="bilinear", align_corners=False)[0]
    assert torch.equal(out["image"], ref_img) and out["image"].dtype == torch.float32
    for k in ("mask", "instances"):
        assert torch.equal(out[k], s[k]) and out[k].dtype == torch.uint8 and out[k].data_ptr() != s[k].data_ptr()
    assert out["meta"]["scale"] == (1.0, 1.0) and out["meta"]["valid"] == (24, 24)
    # a frame of another size still goes the resizing way
    big = ResizePad(32)(s)
    assert big["image"].shape == (3, 32, 32) and big["mask"].shape == (32, 32) and big["meta"]["scale"] == (32 / 24,) * 2
