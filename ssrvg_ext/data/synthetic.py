"""The embedded default dataset: synthetic referring-expression scenes in RefCOCO's release format.

Each image holds several coloured shapes (some overlapping) on a textured background. Each referred
object gets expressions from a small grammar -- attributes ("the small blue triangle"), spatial
relations ("the circle left of the green square"), superlatives and ordinals ("the rightmost star",
"the second square from the top") -- and every expression is checked to pick out exactly one object
(:func:`resolve` evaluates an expression program on a scene; the program is kept only when the
result is its target). Files written, exactly as RefCOCO ships them:

    <out>/images/synth_<id>.jpg
    <out>/instances.json       COCO: images, annotations (bbox, polygon or RLE segmentation), categories
    <out>/refs(unc).p          pickled list of refs with their sentences and split

Splits: train / val / testA (same expression distribution as train) / testB, which holds expression
forms that are rare in train (ordinals counted from the bottom or right, "third", and relations
"below"), so it measures generalisation. Deterministic by seed.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from pycocotools import mask as cocomask

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLORS = {"red": (215, 40, 40), "green": (40, 165, 60), "blue": (40, 85, 220), "yellow": (230, 205, 35),
          "purple": (145, 60, 190)}
SIZES = {"small": (11, 16), "big": (24, 32)}  # radius range in pixels
RELATIONS = ("left of", "right of", "above", "below")
SIDES = ("left", "right", "top", "bottom")  # for superlatives / ordinals
ORDINALS = ("first", "second", "third")
MARGIN = 6.0  # pixels of separation required for a spatial comparison to count


@dataclass
class Obj:
    shape: str
    color: str
    size: str
    cx: float
    cy: float
    mask: np.ndarray = field(repr=False)  # visible mask (H, W) uint8
    polygon: list | None = None  # set when the object is unoccluded

    @property
    def box(self):  # x0, y0, x1, y1 of the visible mask, pixel-edge coordinates
        ys, xs = np.nonzero(self.mask)
        return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


# ---------------------------------------------------------------------------------------------
# Expression programs and their evaluation
def _matches(o: Obj, desc: dict) -> bool:
    return all(getattr(o, k) == v for k, v in desc.items())


def _coord(o: Obj, side: str) -> float:
    return {"left": o.cx, "right": -o.cx, "top": o.cy, "bottom": -o.cy}[side]


def _holds(a: Obj, rel: str, b: Obj) -> bool:
    return {"left of": a.cx < b.cx - MARGIN, "right of": a.cx > b.cx + MARGIN,
            "above": a.cy < b.cy - MARGIN, "below": a.cy > b.cy + MARGIN}[rel]


def resolve(prog: dict, objs: list[Obj]) -> list[int]:
    """Indices of the objects an expression program refers to (the checker)."""
    cands = [i for i, o in enumerate(objs) if _matches(o, prog["desc"])]
    kind = prog["kind"]
    if kind == "attr":
        return cands
    if kind == "rel":
        lms = [j for j, o in enumerate(objs) if _matches(o, prog["landmark"])]
        if len(lms) != 1:
            return []  # the landmark itself must be unambiguous
        return [i for i in cands if i != lms[0] and _holds(objs[i], prog["rel"], objs[lms[0]])]
    if kind == "ordinal":  # "first" from a side is the superlative ("the leftmost ...")
        order = sorted(cands, key=lambda i: _coord(objs[i], prog["side"]))
        k = ORDINALS.index(prog["ordinal"])
        coords = [_coord(objs[i], prog["side"]) for i in order]
        if k >= len(order) or any(b - a < MARGIN for a, b in zip(coords, coords[1:])):
            return []  # ties make an order meaningless
        return [order[k]]
    raise ValueError(f"unknown expression kind {kind!r}")


def _np(desc: dict) -> str:
    words = [desc[k] for k in ("size", "color") if k in desc]
    return " ".join(words + [desc.get("shape", "shape")])


def render(prog: dict) -> str:
    kind = prog["kind"]
    if kind == "attr":
        return f"the {_np(prog['desc'])}"
    if kind == "rel":
        return f"the {_np(prog['desc'])} {prog['rel']} the {_np(prog['landmark'])}"
    side, ordn, noun = prog["side"], prog["ordinal"], _np(prog["desc"])
    if ordn == "first":
        sup = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}[side]
        return f"the {sup} {noun}"
    return f"the {ordn} {noun} from the {side}"


def _descs(o: Obj) -> list[dict]:
    """Descriptions of an object, from terse to full."""
    return [{"shape": o.shape}, {"color": o.color, "shape": o.shape}, {"size": o.size, "shape": o.shape},
            {"size": o.size, "color": o.color, "shape": o.shape}]


def candidate_programs(t: int, objs: list[Obj], rare: bool) -> list[dict]:
    """All expression programs of a few forms that resolve to exactly object t."""
    o, progs = objs[t], []
    for d in _descs(o):
        progs.append({"kind": "attr", "desc": d})
        for side in SIDES:
            for ordn in ORDINALS:
                progs.append({"kind": "ordinal", "desc": d, "side": side, "ordinal": ordn})
        for j, lm in enumerate(objs):
            if j != t:
                for rel in RELATIONS:
                    for ld in _descs(lm)[:2]:
                        progs.append({"kind": "rel", "desc": d, "rel": rel, "landmark": ld})
    out = [p for p in progs if resolve(p, objs) == [t]]
    return [p for p in out if is_rare(p) == rare] or (out if not rare else [])


def is_rare(prog: dict) -> bool:
    """Forms held mostly for testB: counting from the bottom/right, 'third', and 'below'."""
    if prog["kind"] == "ordinal":
        return prog["ordinal"] == "third" or (prog["ordinal"] == "second" and prog["side"] in ("bottom", "right"))
    return prog["kind"] == "rel" and prog["rel"] == "below"


# ---------------------------------------------------------------------------------------------
# Drawing
def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[float]:
    if shape == "circle":
        n, radii = 32, [r] * 32
    elif shape == "square":
        n, radii, rot = 4, [r * 1.3] * 4, rot + math.pi / 4
    elif shape == "diamond":
        n, radii = 4, [r * 1.35, r * 0.9] * 2
    elif shape == "triangle":
        n, radii, rot = 3, [r * 1.35] * 3, -math.pi / 2
    else:  # star
        n, radii = 10, [r * 1.35, r * 0.6] * 5
    pts = []
    for k in range(n):
        a = rot + 2 * math.pi * k / n
        pts += [cx + radii[k] * math.cos(a), cy + radii[k] * math.sin(a)]
    return pts


def _raster(poly: list[float], h: int, w: int) -> np.ndarray:
    """The polygon's mask exactly as pycocotools rasterises it (what the reader will produce)."""
    return cocomask.decode(cocomask.merge(cocomask.frPyObjects([poly], h, w)))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    low = rng.uniform(60, 190, size=(4, 4, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BILINEAR), dtype=np.float32)
    img = img.mean(-1, keepdims=True) * 0.7 + img * 0.3  # mostly grey, so shape colours stand out
    yy, xx = np.mgrid[0:h, 0:w]
    f, ang = rng.uniform(0.15, 0.5), rng.uniform(0, math.pi)
    stripes = 12 * np.sin(f * (xx * math.cos(ang) + yy * math.sin(ang)))[..., None]
    return np.clip(img + stripes + rng.normal(0, 6, size=(h, w, 1)), 0, 255)


def make_scene(rng: np.random.Generator, h: int, w: int, n_objects: int) -> tuple[np.ndarray, list[Obj]]:
    img = _background(rng, h, w)
    objs: list[Obj] = []
    tries = 0
    while len(objs) < n_objects and tries < 200:
        tries += 1
        shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
        size = str(rng.choice(list(SIZES)))
        r = rng.uniform(*SIZES[size])
        cx, cy = rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)
        poly = [round(v, 2) for v in _polygon(shape, cx, cy, r, rng.uniform(-0.25, 0.25))]
        m = _raster(poly, h, w)  # the stored polygon's own rasterisation is painted and annotated
        if m.sum() < 40:
            continue
        # the new object is drawn on top: earlier objects must stay mostly visible
        occl = [(o, o.mask & (1 - m)) for o in objs]
        if any(v.sum() < 0.6 * o.mask.sum() for o, v in occl):
            continue
        for o, v in occl:
            if v.sum() != o.mask.sum():
                o.mask, o.polygon = v, None
        tone = np.array(COLORS[color], np.float32) * rng.uniform(0.85, 1.1)
        img[m.astype(bool)] = np.clip(tone + rng.normal(0, 4, size=(int(m.sum()), 3)), 0, 255)
        objs.append(Obj(shape, color, size, float(cx), float(cy), m, poly))
    return img.astype(np.uint8), objs


# ---------------------------------------------------------------------------------------------
# Writing the release format
SPLIT_FRACTIONS = (("train", 0.8), ("val", 0.0667), ("testA", 0.0667), ("testB", 0.0666))


def _split_of(k: int, n: int) -> str:
    acc = 0.0
    for name, frac in SPLIT_FRACTIONS:
        acc += frac
        if k < round(acc * n):
            return name
    return SPLIT_FRACTIONS[-1][0]


def generate(out: str, num_images: int = 1500, seed: int = 0, refs_per_image: int = 2, sents_per_ref: int = 2,
             min_size: int = 176, max_size: int = 256, progress=None) -> dict:
    """Writes the dataset; returns counts. ``progress(i, n)`` is called after each image."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rng, pyrng = np.random.default_rng(seed), random.Random(seed)
    images, anns, refs = [], [], []
    cats = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    cat_id = {s: i + 1 for i, s in enumerate(SHAPES)}
    order = list(range(num_images))
    pyrng.shuffle(order)
    split_of_image = {img_k: _split_of(pos, num_images) for pos, img_k in enumerate(order)}
    ann_id = ref_id = sent_id = 0
    n_sents = 0
    for k in range(num_images):
        split = split_of_image[k]
        h, w = int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1))
        img, objs = make_scene(rng, h, w, int(rng.integers(4, 7)))
        image_id = k + 1
        fname = f"synth_{image_id:06d}.jpg"
        Image.fromarray(img).save(os.path.join(out, "images", fname), quality=92)
        images.append({"id": image_id, "file_name": fname, "height": h, "width": w})
        ids = []
        for o in objs:
            ann_id += 1
            ids.append(ann_id)
            if o.polygon is not None:
                seg = [o.polygon]
            else:
                rle = cocomask.encode(np.asfortranarray(o.mask))
                seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            x0, y0, x1, y1 = o.box
            anns.append({"id": ann_id, "image_id": image_id, "category_id": cat_id[o.shape], "iscrowd": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(o.mask.sum()), "segmentation": seg,
                         "attributes": {"color": o.color, "size": o.size, "center": [o.cx, o.cy]}})
        # rare forms: mostly for testB, occasionally in train (so they are rare, not absent)
        want_rare = split == "testB" and pyrng.random() < 0.7 or split == "train" and pyrng.random() < 0.04
        targets = pyrng.sample(range(len(objs)), min(refs_per_image, len(objs)))
        for t in targets:
            progs = candidate_programs(t, objs, rare=want_rare) or candidate_programs(t, objs, rare=False)
            if not progs:
                continue
            chosen = pyrng.sample(progs, min(sents_per_ref, len(progs)))
            ref_id += 1
            sents = []
            for prog in chosen:
                sent_id += 1
                text = render(prog)
                sents.append({"tokens": text.split(), "raw": text, "sent_id": sent_id, "sent": text})
            n_sents += len(sents)
            refs.append({"ref_id": ref_id, "ann_id": ids[t], "image_id": image_id, "category_id": cat_id[objs[t].shape],
                         "split": split, "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
                         "file_name": f"synth_{image_id:06d}_{ids[t]}.jpg"})
        if progress:
            progress(k + 1, num_images)
    with open(os.path.join(out, "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    with open(os.path.join(out, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    per_split = {}
    for r in refs:
        per_split[r["split"]] = per_split.get(r["split"], 0) + len(r["sentences"])
    return {"images": num_images, "objects": len(anns), "refs": len(refs), "expressions": n_sents, "per_split": per_split}
