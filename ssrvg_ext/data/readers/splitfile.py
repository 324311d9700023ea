"""Reader for the split files most REC code ships (ReSC / TransVG / SegVG / CLIP-VG).

A dataset ``ds`` in ``unc`` (RefCOCO), ``unc+`` (RefCOCO+), ``gref`` (RefCOCOg google), ``gref_umd``
(RefCOCOg umd), ``referit`` (ReferItGame) or ``flickr`` (Flickr30k Entities) has one file per split,
``<root>/<ds>/<ds>_<split>.pth``: a ``torch.save``-d list of tuples,

- unc, unc+, gref, gref_umd, referit: ``(image file, mask name, box, phrase, parse)``; the box is
  ``[x, y, w, h]`` for the COCO-based sets and ``[x1, y1, x2, y2]`` for referit;
- flickr: ``(image file, [x1, y1, x2, y2], phrase)``.

The files are read with ``torch.load(weights_only=True)``: only tensors, containers and scalars can
come out of them, never an object that runs code. They hold boxes only, so every record gets the
box's filled rectangle as its mask (SegVG's box-to-mask supervision) and ``box_only=True``:
evaluation reports REC metrics alone for them. ``trainval`` is train + val (a file of its own for
referit). Boxes stay in continuous pixel coordinates (the original loaders truncate them to ints).
"""

from __future__ import annotations

import math
import os

import torch
from PIL import Image

from ...ops import rle as rle_ops
from ...safe_load import load_plain
from .refer import Record, image_path

COCO_BASED = ("unc", "unc+", "gref", "gref_umd")
DATASETS = COCO_BASED + ("referit", "flickr")
SPLITS = {"unc": ("train", "val", "trainval", "testA", "testB"), "unc+": ("train", "val", "trainval", "testA", "testB"),
          "gref": ("train", "val", "trainval"), "gref_umd": ("train", "val", "trainval", "test"),
          "referit": ("train", "val", "trainval", "test"), "flickr": ("train", "val", "trainval", "test")}


def image_size(path: str) -> tuple[int, int]:
    """(H, W) of an image as read_image returns it (EXIF rotations of 90 degrees swap the sides),
    from its header only."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):
                w, h = h, w
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image {path} is unreadable ({type(e).__name__}: {e})") from None
    return h, w


def box_rle(box_xyxy, h: int, w: int) -> dict:
    """The filled rectangle of a box as a COCO RLE: the pixels whose centres lie inside it."""
    x0, y0, x1, y1 = box_xyxy
    r = lambda n: torch.arange(n, dtype=torch.float64) + 0.5  # noqa: E731
    ys, xs = r(h), r(w)
    m = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
    return rle_ops.encode(m.to(torch.uint8))


def _records_of(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path} not found (expected <root>/<ds>/<ds>_<split>.pth)")
    data = load_plain(path, "split file")
    if not isinstance(data, (list, tuple)):
        raise ValueError(f"{path}: expected a list of records; got {type(data).__name__}")
    return list(data)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_split_file(root: str, dataset: str, split: str, image_dir: str) -> list[Record]:
    """Records of ``<root>/<dataset>/<dataset>_<split>.pth`` with images in ``image_dir``."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown split-file dataset {dataset!r}; choose from {DATASETS}")
    if split not in SPLITS[dataset]:
        raise ValueError(f"{dataset} has no split {split!r}; it has {SPLITS[dataset]}")
    if split == "trainval" and dataset != "referit":
        return load_split_file(root, dataset, "train", image_dir) + load_split_file(root, dataset, "val", image_dir)
    path = os.path.join(root, dataset, f"{dataset}_{split}.pth")
    n_fields = 3 if dataset == "flickr" else 5
    records, sizes = [], {}
    for i, rec in enumerate(_records_of(path)):
        where = f"{path}, record {i}"
        if not isinstance(rec, (list, tuple)) or len(rec) != n_fields:
            raise ValueError(f"{where}: expected a {n_fields}-tuple; got {type(rec).__name__}"
                             f"{' of length ' + str(len(rec)) if isinstance(rec, (list, tuple)) else ''}")
        img_file, box, phrase = (rec[0], rec[1], rec[2]) if dataset == "flickr" else (rec[0], rec[2], rec[3])
        if not isinstance(img_file, str) or not img_file:
            raise ValueError(f"{where}: the image file must be a non-empty string; got {img_file!r}")
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_number(v) for v in box):
            raise ValueError(f"{where}: the box must be 4 finite numbers; got {box!r}")
        if not isinstance(phrase, str) or not phrase.strip():
            raise ValueError(f"{where}: the phrase is empty or not a string: {phrase!r}")
        x, y, a, b = (float(v) for v in box)
        xyxy = (x, y, x + a, y + b) if dataset in COCO_BASED else (x, y, a, b)
        if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
            raise ValueError(f"{where}: the box {box!r} has a negative width or height")
        img = image_path(image_dir, img_file, where)
        if img not in sizes:
            if not os.path.isfile(img):
                raise FileNotFoundError(f"{where}: image file {img} is missing")
            sizes[img] = image_size(img)
        h, w = sizes[img]
        stem = os.path.splitext(os.path.basename(img_file))[0]
        image_id = int(stem.rsplit("_", 1)[-1]) if stem.rsplit("_", 1)[-1].isdigit() else 0
        text = phrase.lower().strip()
        records.append(Record(img, image_id, (h, w), text, text.split(), xyxy, box_rle(xyxy, h, w),
                              sent_id=i, split=split, box_only=True))
    return records
