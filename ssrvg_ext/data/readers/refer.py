"""Reader for the release format of RefCOCO / RefCOCO+ / RefCOCOg (and the embedded synthetic set).

A dataset folder holds ``refs(<split_by>).p`` (a pickled list of refs: ref_id, ann_id, image_id,
category_id, split, sentences[{tokens, raw, sent_id, sent}], ...) and the COCO ``instances.json``
(images; annotations with xywh bbox and polygon or RLE segmentation). Images live in ``image_dir``
(COCO train2014 for the real sets). :func:`load_refer` returns one canonical record per expression.

The pickle is read with an unpickler that admits plain containers and scalars only: a pickle that
asks for any class or function (which is how a malicious pickle runs code) is refused.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from dataclasses import dataclass, field

from pycocotools import mask as cocomask

from ...ops import rle as rle_ops

SPLIT_BY = {"refcoco": ("unc",), "refcoco+": ("unc",), "refcocog": ("umd", "google"), "synthetic": ("unc",)}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, str, bytes, numbers, bool and None; refuses every global."""

    def find_class(self, module, name):
        raise UnsafePickleError(
            f"refusing to load {module}.{name} from the refs pickle: only plain containers and scalars are allowed "
            "(a pickle that references classes or functions can run code)")


def load_refs_pickle(path: str) -> list:
    with open(path, "rb") as f:
        data = f.read()
    refs = _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()  # latin1: the originals are Python 2 pickles
    if not isinstance(refs, list):
        raise ValueError(f"{path}: expected a pickled list of refs, got {type(refs).__name__}")
    return refs


@dataclass
class Record:
    """One referring expression with everything needed to train and evaluate on it."""
    image_path: str
    image_id: int
    orig_size: tuple[int, int]  # (H, W)
    text: str
    tokens: list[str]
    box_xyxy: tuple[float, float, float, float]  # pixels, original image
    rle: dict = field(repr=False)  # {"size": [H, W], "counts": bytes}, union of all parts
    category_id: int = 0
    ref_id: int = 0
    ann_id: int = 0
    sent_id: int = 0
    split: str = ""
    box_only: bool = False  # the mask is the box's filled rectangle (box-only datasets): REC metrics only
    kind: str = ""  # the expression's form when the data says (the embedded set: attr, rel, ordinal)


def _polygon(poly) -> list[float]:
    if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
        raise ValueError(f"a polygon must be a flat list of at least 3 (x, y) points; got "
                         f"{type(poly).__name__} of length {len(poly) if hasattr(poly, '__len__') else '?'}")
    out = []
    for v in poly:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e7:
            raise ValueError(f"polygon coordinates must be finite numbers; got {v!r}")
        out.append(float(v))
    return out


def segmentation_to_rle(seg, h: int, w: int, where: str) -> dict:
    """Polygon list, uncompressed or compressed RLE -> one compressed RLE (union of the parts).

    Untrusted input: RLEs are decoded and checked by the library's own validated ops (counts that do
    not fill H*W, bad characters, negative or overflowing runs are errors); polygons must be flat
    lists of finite coordinates before pycocotools rasterises them. Errors name ``where``."""
    try:
        if isinstance(seg, list):
            if not seg:
                raise ValueError("empty polygon list")
            polys = [_polygon(p) for p in seg]
            parts = cocomask.frPyObjects(polys, h, w)
            return rle_ops.merge([{"size": [h, w], "counts": p["counts"]} for p in parts])
        if isinstance(seg, dict) and "counts" in seg:
            if list(seg.get("size", [])) != [h, w]:
                raise ValueError(f"RLE size {seg.get('size')} differs from the image size {[h, w]}")
            return rle_ops.frPyObjects_uncompressed({"size": [h, w], "counts": seg["counts"]})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
    raise ValueError(f"{where}: unsupported segmentation of type {type(seg).__name__}")


def image_path(image_dir: str, file_name, where: str) -> str:
    """``image_dir``/``file_name``, refused unless it stays inside ``image_dir`` (no absolute names,
    no ``..`` or links leading out)."""
    if not isinstance(file_name, str) or not file_name or "\0" in file_name:
        raise ValueError(f"{where}: file_name must be a non-empty string; got {file_name!r}")
    if os.path.isabs(file_name):
        raise ValueError(f"{where}: file_name {file_name!r} is absolute; it must be relative to the image folder")
    root = os.path.realpath(image_dir)
    path = os.path.realpath(os.path.join(root, file_name))
    if os.path.commonpath([root, path]) != root or path == root:
        raise ValueError(f"{where}: file_name {file_name!r} leads outside the image folder {image_dir}")
    return os.path.join(image_dir, file_name)


def load_refer(ann_dir: str, image_dir: str, split_by: str = "unc", splits: list[str] | None = None,
               check_images: bool = True) -> list[Record]:
    """Records of every expression in ``ann_dir`` (``refs(split_by).p`` + ``instances.json``) whose ref
    split is in ``splits`` (all when None)."""
    refs_path = os.path.join(ann_dir, f"refs({split_by}).p")
    inst_path = os.path.join(ann_dir, "instances.json")
    for p in (refs_path, inst_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"missing {p} (expected the RefCOCO release layout: refs(<split_by>).p and "
                                    f"instances.json; the embedded synthetic dataset: ssrvg-make-synthetic --out {ann_dir}, "
                                    "docs/data.md)")
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder {image_dir} does not exist")
    refs = load_refs_pickle(refs_path)
    with open(inst_path) as f:
        inst = json.load(f)
    images = {im["id"]: im for im in inst["images"]}
    anns = {a["id"]: a for a in inst["annotations"]}
    known = sorted({r["split"] for r in refs})
    if splits is not None:
        unknown = sorted(set(splits) - set(known))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown} in {refs_path}; it has {known}")
    records = []
    for r in refs:
        if splits is not None and r["split"] not in splits:
            continue
        ann = anns.get(r["ann_id"])
        if ann is None:
            raise KeyError(f"ref {r['ref_id']}: annotation id {r['ann_id']} not found in {inst_path}")
        im = images.get(r["image_id"])
        if im is None:
            raise KeyError(f"ref {r['ref_id']}: image id {r['image_id']} not found in {inst_path}")
        path = image_path(image_dir, im.get("file_name"), f"image {im['id']}")
        if check_images and not os.path.isfile(path):
            raise FileNotFoundError(f"ref {r['ref_id']}: image file {path} is missing")
        h, w = int(im["height"]), int(im["width"])
        rle = segmentation_to_rle(ann["segmentation"], h, w, f"annotation {ann['id']}")
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        for s in r["sentences"]:
            text = s.get("sent") or s.get("raw", "")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"ref {r['ref_id']}, sentence {s.get('sent_id')}: the expression is empty")
            records.append(Record(path, int(r["image_id"]), (h, w), text, list(s.get("tokens") or text.split()),
                                  (x, y, x + bw, y + bh), rle, int(r.get("category_id", ann["category_id"])),
                                  int(r["ref_id"]), int(r["ann_id"]), int(s["sent_id"]), r["split"],
                                  kind=str(s.get("kind", ""))))
    return records


@dataclass
class InstanceLabels:
    """Every annotated object of every image with categorical labels, for the dense auxiliary loss.

    ``classes[name]``: the values of label ``name`` (index i + 1 in the maps; 0 is background);
    ``per_image[image_id]``: (RLEs, (n, K) label indices, -100 where an object lacks a label),
    largest object first so that smaller ones are painted on top."""
    names: tuple[str, ...]
    classes: dict
    per_image: dict = field(repr=False)


def load_instance_labels(ann_dir: str, names, image_ids=None, shapes: str = "masks") -> InstanceLabels:
    """Labels ``names`` of all objects in ``ann_dir``/instances.json: "category" (the COCO category
    name) or any key of an annotation's ``attributes`` dict with categorical (str / int) values
    (the synthetic set has "color" and "size"). The classes come from every annotation; the
    per-image objects only for ``image_ids`` (all images when None). ``shapes``: each object's
    region is its mask ("masks") or its box's filled rectangle ("boxes": nothing of the masks is
    read, for training as if the dataset had boxes only)."""
    if shapes not in ("masks", "boxes"):
        raise ValueError(f"data.aux_shapes must be 'masks' or 'boxes', got {shapes!r}")
    inst_path = os.path.join(ann_dir, "instances.json")
    if not os.path.isfile(inst_path):
        raise FileNotFoundError(f"missing {inst_path}")
    with open(inst_path) as f:
        inst = json.load(f)
    names = tuple(names)
    cats = {c["id"]: c["name"] for c in inst["categories"]}
    images = {im["id"]: (int(im["height"]), int(im["width"])) for im in inst["images"]}

    def value(a, name):
        v = cats.get(a["category_id"]) if name == "category" else (a.get("attributes") or {}).get(name)
        return v if isinstance(v, (str, int)) and not isinstance(v, bool) else None

    anns = [a for a in inst["annotations"] if a["image_id"] in images]
    classes = {n: sorted({v for a in anns if (v := value(a, n)) is not None}, key=str) for n in names}
    empty = [n for n, vs in classes.items() if not vs]
    if empty:
        raise ValueError(f"{inst_path}: no annotation has a categorical label {empty} "
                         "(use 'category' or a key of the annotations' 'attributes')")
    index = {n: {v: i + 1 for i, v in enumerate(vs)} for n, vs in classes.items()}
    per_image = {}
    wanted = None if image_ids is None else set(image_ids)

    def extent(a):  # larger objects first: smaller ones are drawn over them
        return a["bbox"][2] * a["bbox"][3] if shapes == "boxes" else float(a.get("area", 0))

    for a in sorted(anns, key=lambda a: -extent(a)):
        if wanted is not None and a["image_id"] not in wanted:
            continue
        h, w = images[a["image_id"]]
        if shapes == "boxes":
            x, y, bw, bh = (float(v) for v in a["bbox"])
            seg = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
        else:
            seg = a["segmentation"]
        rle = segmentation_to_rle(seg, h, w, f"annotation {a['id']}")
        labels = [index[n].get(value(a, n), -100) for n in names]
        per_image.setdefault(a["image_id"], ([], []))
        per_image[a["image_id"]][0].append(rle)
        per_image[a["image_id"]][1].append(labels)
    return InstanceLabels(names, classes, per_image)
