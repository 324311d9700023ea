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
"below"), so it measures generalisation. Each held-out split gets 1/15 of the images, at most
``eval_images`` (100: about 400 expressions), so more images grow only the training split.
Deterministic by seed: every image has its own random streams, so images are made in parallel
processes and the files do not depend on how many.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import sys
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


def _matcher(objs: list[Obj]):
    """desc -> indices of the objects it matches, remembered per description."""
    cache = {}

    def matching(desc: dict) -> list[int]:
        key = tuple(sorted(desc.items()))
        if key not in cache:
            cache[key] = [i for i, o in enumerate(objs) if _matches(o, desc)]
        return cache[key]

    return matching


def resolve(prog: dict, objs: list[Obj], matching=None) -> list[int]:
    """Indices of the objects an expression program refers to (the checker). ``matching``: a
    :func:`_matcher` of ``objs`` to share between many programs on one scene."""
    matching = matching or _matcher(objs)
    cands = matching(prog["desc"])
    kind = prog["kind"]
    if kind == "attr":
        return cands
    if kind == "rel":
        lms = matching(prog["landmark"])
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
    matching = _matcher(objs)
    o, progs = objs[t], []
    for d in _descs(o):
        progs.append({"kind": "attr", "desc": d})
        for side in SIDES:
            for ordn in ORDINALS:
                progs.append({"kind": "ordinal", "desc": d, "side": side, "ordinal": ordn})
        for j, lm in enumerate(objs):
            if j != t:
                for ld in _descs(lm)[:2]:
                    if matching(ld) == [j]:  # only unambiguous landmarks can resolve
                        for rel in RELATIONS:
                            progs.append({"kind": "rel", "desc": d, "rel": rel, "landmark": ld})
    out = [p for p in progs if resolve(p, objs, matching) == [t]]
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
    f, ang = rng.uniform(0.15, 0.5), rng.uniform(0, math.pi)
    # stripes sin(a x + b y) = sin(a x) cos(b y) + cos(a x) sin(b y): outer products of 1-d rows
    ax = f * math.cos(ang) * np.arange(w, dtype=np.float32)
    by = f * math.sin(ang) * np.arange(h, dtype=np.float32)
    stripes = 12 * (np.cos(by)[:, None] * np.sin(ax)[None, :] + np.sin(by)[:, None] * np.cos(ax)[None, :])
    noise = rng.standard_normal((h, w), dtype=np.float32) * 6
    return np.clip(img + (stripes + noise)[..., None], 0, 255)


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
HELD_OUT = ("val", "testA", "testB")


def split_sizes(num_images: int, eval_images: int = 100) -> dict:
    """Images per split: each held-out split gets 1/15 of the images, at most ``eval_images``; the
    rest is train (so a bigger dataset grows the training split, not the evaluation time)."""
    k = min(eval_images, round(num_images / 15))
    return {"train": num_images - 3 * k, **{s: k for s in HELD_OUT}}


def _image_job(args) -> dict:
    """Scene, picture and expressions of image k; its own random streams make it independent of
    the other images (so images can be made in any order, by any number of processes)."""
    out, k, seed, split, refs_per_image, sents_per_ref, min_size, max_size = args
    rng, pyrng = np.random.default_rng([seed, k]), random.Random(seed * 1_000_003 + k)
    h, w = int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1))
    img, objs = make_scene(rng, h, w, int(rng.integers(4, 7)))
    fname = f"synth_{k + 1:06d}.jpg"
    Image.fromarray(img).save(os.path.join(out, "images", fname), quality=92)
    objects = []
    for o in objs:
        if o.polygon is not None:
            seg = [o.polygon]
        else:
            rle = cocomask.encode(np.asfortranarray(o.mask))
            seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
        x0, y0, x1, y1 = o.box
        objects.append({"shape": o.shape, "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(o.mask.sum()),
                        "segmentation": seg, "attributes": {"color": o.color, "size": o.size, "center": [o.cx, o.cy]}})
    # rare forms: mostly for testB, occasionally in train (so they are rare, not absent)
    want_rare = split == "testB" and pyrng.random() < 0.7 or split == "train" and pyrng.random() < 0.04
    refs = []
    for t in pyrng.sample(range(len(objs)), min(refs_per_image, len(objs))):
        progs = candidate_programs(t, objs, rare=want_rare) or candidate_programs(t, objs, rare=False)
        if progs:
            refs.append((t, [(render(p), p["kind"]) for p in pyrng.sample(progs, min(sents_per_ref, len(progs)))]))
    return {"file_name": fname, "height": h, "width": w, "objects": objects, "refs": refs}


def generate(out: str, num_images: int = 1500, seed: int = 0, refs_per_image: int = 2, sents_per_ref: int = 2,
             min_size: int = 176, max_size: int = 256, eval_images: int = 100, workers: int | None = None,
             progress=None) -> dict:
    """Writes the dataset; returns counts. ``progress(i, n)`` is called after each image. The output
    depends only on the arguments other than ``workers`` (processes; default: one per CPU core)."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    order = list(range(num_images))
    random.Random(seed).shuffle(order)
    sizes, split_of_image, pos = split_sizes(num_images, eval_images), {}, 0
    for name in (*HELD_OUT, "train"):
        for img_k in order[pos:pos + sizes[name]]:
            split_of_image[img_k] = name
        pos += sizes[name]
    jobs = [(out, k, seed, split_of_image[k], refs_per_image, sents_per_ref, min_size, max_size)
            for k in range(num_images)]
    workers = min(workers or os.cpu_count() or 1, num_images)
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None).Pool(workers)
        results = pool.imap(_image_job, jobs, chunksize=8)
    else:
        pool, results = None, map(_image_job, jobs)
    cats = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    cat_id = {s: i + 1 for i, s in enumerate(SHAPES)}
    images, anns, refs = [], [], []
    ann_id = ref_id = sent_id = n_sents = 0
    try:
        for k, r in enumerate(results):
            image_id = k + 1
            images.append({"id": image_id, "file_name": r["file_name"], "height": r["height"], "width": r["width"]})
            ids = []
            for o in r["objects"]:
                ann_id += 1
                ids.append(ann_id)
                anns.append({"id": ann_id, "image_id": image_id, "category_id": cat_id[o["shape"]], "iscrowd": 0,
                             **{key: o[key] for key in ("bbox", "area", "segmentation", "attributes")}})
            for t, texts in r["refs"]:
                ref_id += 1
                sents = []
                for text, kind in texts:  # kind: attr / rel / ordinal (what the expression needs)
                    sent_id += 1
                    # interned: the pickle's bytes must not depend on which process made the string
                    sents.append({"tokens": text.split(), "raw": text, "sent_id": sent_id, "sent": text,
                                  "kind": sys.intern(kind)})
                n_sents += len(sents)
                refs.append({"ref_id": ref_id, "ann_id": ids[t], "image_id": image_id,
                             "category_id": cat_id[r["objects"][t]["shape"]], "split": split_of_image[k],
                             "sent_ids": [s["sent_id"] for s in sents], "sentences": sents,
                             "file_name": f"synth_{image_id:06d}_{ids[t]}.jpg"})
            if progress:
                progress(k + 1, num_images)
    finally:
        if pool is not None:
            pool.terminate()
    with open(os.path.join(out, "instances.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    with open(os.path.join(out, "refs(unc).p"), "wb") as f:
        pickle.dump(refs, f, protocol=2)
    per_split = {}
    for r in refs:
        per_split[r["split"]] = per_split.get(r["split"], 0) + len(r["sentences"])
    return {"images": num_images, "objects": len(anns), "refs": len(refs), "expressions": n_sents, "per_split": per_split}
