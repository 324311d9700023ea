"""Result files of referring video segmentation in the layouts the public tools read:

* :func:`write_ytvos_submission`: ``Annotations/<video>/<exp_id>/<frame>.png`` (0 / 255, single
  channel, the frame's size) and a zip with ``Annotations/`` at its top, as the Ref-YouTube-VOS
  server takes it.
* :func:`write_davis_results`: ``anno_<k>/<video>/<frame>.png`` palette PNGs whose values are object
  indices 1..N, the four annotator folders of Ref-DAVIS17 (expression 4 * object + k), as the DAVIS
  2017 toolkit reads them.

Both take the per-expression results of :class:`~ssrvg_ext.engine.evaluation.VideoEvaluator`.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from PIL import Image

from ..ops import rle


def _decode(m: dict) -> np.ndarray:  # an RLE with its counts as text
    return rle.decode({"size": m["size"], "counts": m["counts"].encode("ascii")}).numpy().astype(bool)


def write_ytvos_submission(predictions: list[dict], out_dir: str, zip_path: str | None = None) -> str:
    """Writes ``<out_dir>/Annotations/<video>/<exp_id>/<frame>.png`` for every frame of every
    expression (0 = background, 255 = object, mode L) and zips them with ``Annotations/`` as the top
    entry; returns the zip's path (default ``<out_dir>/submission.zip``)."""
    root = os.path.join(out_dir, "Annotations")
    for p in predictions:
        folder = os.path.join(root, p["video"], p["exp_id"])
        os.makedirs(folder, exist_ok=True)
        for frame, m in zip(p["frames"], p["masks"]):
            Image.fromarray(_decode(m).astype(np.uint8) * 255, mode="L").save(os.path.join(folder, frame + ".png"))
    base = os.path.splitext(zip_path or os.path.join(out_dir, "submission.zip"))[0]
    return shutil.make_archive(base, "zip", root_dir=out_dir, base_dir="Annotations")


def davis_palette() -> list[int]:
    """The PASCAL VOC / DAVIS colour map: colour i from the bits of i, spread over the channels."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def write_davis_results(predictions: list[dict], out_dir: str, annotators: int = 4) -> list[str]:
    """Ref-DAVIS17 results: for annotator k, ``<out_dir>/anno_<k>/<video>/<frame>.png`` with value
    o + 1 where expression ``annotators * o + k`` (object o, 0-based) predicts the object, 0
    elsewhere. Where two objects' masks overlap, the later object keeps the pixel (the public
    writers take an argmax over the objects' probabilities; the binary masks kept here have none).
    Returns the annotator folders written."""
    pal, by = davis_palette(), {}
    for p in predictions:
        e = int(p["exp_id"])
        by.setdefault((e % annotators, p["video"]), []).append((e // annotators, p))
    for (k, video), objs in sorted(by.items()):
        folder = os.path.join(out_dir, f"anno_{k}", video)
        os.makedirs(folder, exist_ok=True)
        objs.sort(key=lambda x: x[0])
        for f, frame in enumerate(objs[0][1]["frames"]):
            ids = np.zeros(objs[0][1]["masks"][f]["size"], np.uint8)
            for o, p in objs:
                ids[_decode(p["masks"][f])] = o + 1
            im = Image.fromarray(ids, mode="P")
            im.putpalette(pal)
            im.save(os.path.join(folder, frame + ".png"))
    return [os.path.join(out_dir, f"anno_{k}") for k in sorted({k for k, _ in by})]
