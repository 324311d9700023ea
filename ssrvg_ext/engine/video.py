"""Referring video segmentation in the engine (docs/video.md): evaluation over whole videos in
windows of frames, J & F per expression, and the two result layouts the public tools read.

* :func:`evaluate_video`: every frame of every expression predicted once (windows of
  ``data.clip_len`` frames), kept as RLE at the frame's size; on annotated splits J and F per
  expression (DAVIS protocol, :mod:`ssrvg_ext.evaluation.video`), their means, J&F, and the same
  per expression ``kind`` when the records carry one (the embedded set: motion / appearance).
* :func:`write_ytvos_submission`: ``Annotations/<video>/<exp_id>/<frame>.png`` (0 / 255, single
  channel, the frame's size) and a zip with ``Annotations/`` at its top, as the Ref-YouTube-VOS
  server takes it.
* :func:`write_davis_results`: ``anno_<k>/<video>/<frame>.png`` palette PNGs whose values are object
  indices 1..N, the four annotator folders of Ref-DAVIS17 (expression 4 * object + k), as the DAVIS
  2017 toolkit reads them.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data.clips import ClipDataset
from ..data.rvos import read_palette_mask
from ..evaluation.video import jf_object, jf_summary
from ..models.ssrvg import postprocess
from ..ops import rle
from . import dist
from .data import to_device



def _to_json(r: dict) -> dict:  # a pycocotools RLE with its counts as text (JSON, gathering over ranks)
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def _from_json(m: dict) -> dict:
    return {"size": m["size"], "counts": m["counts"].encode("ascii")}


@torch.no_grad()
def evaluate_video(model, loader, device, amp_dtype=None, desc="eval") -> tuple[dict, list[dict]]:
    """Metrics (``n`` expressions; on annotated splits ``J``, ``F``, ``J&F``, recalls, and
    ``J&F[<kind>]`` / ``n[<kind>]``) and one prediction per expression: video, exp_id, text, kind,
    frames, per-frame RLE masks, and J / F with their per-frame values where annotated."""
    core = model.module if hasattr(model, "module") else model
    core.eval()
    ds: ClipDataset = loader.dataset
    mine: dict[tuple[int, int], dict] = {}
    for batch in tqdm(loader, desc=desc, disable=not dist.is_main() or None, dynamic_ncols=True):
        batch = to_device(batch, device)
        t = batch["clip_len"]
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = core(batch["images"], batch["text_ids"], batch["text_mask"], clip_len=t)
        preds = postprocess(out, batch["meta"])
        keys = [(clip["index"], f, c * t + k) for c, clip in enumerate(batch["clips"])
                for k, (f, own) in enumerate(zip(clip["frames"], clip["own"])) if own]
        rles = rle.encode(torch.stack([preds[row]["mask"] for _, _, row in keys]))  # a window's frames share a size
        mine.update({(i, f): _to_json(r) for (i, f, _), r in zip(keys, rles)})
    merged = {}
    for part in dist.gather_objects(mine):
        merged.update(part)
    results, objects, by_kind = [], [], {}
    for i, rec in enumerate(ds.records):
        n = len(rec.frames)
        missing = [f for f in range(n) if (i, f) not in merged]
        if missing:
            raise RuntimeError(f"evaluation missed frames {missing[:5]} of video {rec.video} expression {rec.exp_id}")
        masks = [merged[(i, f)] for f in range(n)]
        res = {"video": rec.video, "exp_id": rec.exp_id, "text": rec.text, "kind": rec.extra.get("kind"),
               "frames": rec.frames, "masks": masks}
        if rec.anno_paths is not None:
            where = f"video {rec.video} expression {rec.exp_id}"
            gt = torch.from_numpy(np.stack([read_palette_mask(p, rec.obj_id, where) for p in rec.anno_paths]))
            pred = rle.decode([_from_json(m) for m in masks])
            if tuple(pred.shape) != tuple(gt.shape):
                raise ValueError(f"{where}: predicted masks {tuple(pred.shape)} but annotations {tuple(gt.shape)}")
            jf = jf_object(pred, gt)
            res.update(jf)
            objects.append(jf)
            by_kind.setdefault(res["kind"], []).append(jf)
        results.append(res)
    metrics = {"n": len(results)}
    if objects:
        metrics.update(jf_summary(objects))
        for kind, objs in sorted(by_kind.items(), key=lambda kv: str(kv[0])):
            if kind is not None and len(by_kind) > 1:
                metrics[f"J&F[{kind}]"] = jf_summary(objs)["J&F"]
                metrics[f"n[{kind}]"] = len(objs)
    return metrics, results


def _decode(m: dict) -> np.ndarray:
    return rle.decode(_from_json(m)).numpy().astype(bool)


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
