"""Readers for referring video object segmentation datasets in their release formats (docs/data.md):

* Ref-YouTube-VOS: ``meta_expressions/<split>/meta_expressions.json`` ({"videos": {vid: {"frames":
  [...], "expressions": {exp_id: {"exp", "obj_id"}}}}}; the older schema videos -> objects ->
  {category, frames, expressions: [str]} is read too), ``<split>/JPEGImages/<vid>/<frame>.jpg``,
  ``<split>/Annotations/<vid>/<frame>.png`` (palette PNG, pixel value = object id), ``train/meta.json``
  (categories). The valid split is the valid videos minus those of ``meta_expressions/test``.
* Ref-DAVIS17 as the common RVOS codebases convert it: the same layout, annotated in both splits.
* A2D-Sentences (``Release/videoset.csv``, ``text_annotations/a2d_annotation.txt``,
  ``a2d_missed_videos.txt``, per-frame ``a2d_annotation_with_instances/<vid>/<frame>.h5`` through the
  optional h5py) and JHMDB-Sentences (``jhmdb_annotation.txt``, ``Rename_Images/<action>/<vid>/``,
  ``puppet_mask/<action>/<vid>/puppet_mask.mat`` through the optional scipy).

Every reader returns :class:`VideoRecord` s, one per expression; malformed or missing files raise
errors that name the file and the record.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class VideoRecord:
    """One expression about one object of one video."""
    video: str
    exp_id: str
    text: str
    frames: list[str]  # frame names, sorted
    frame_paths: list[str]
    anno_paths: list[str] | None  # per frame; None where the split has no annotations
    obj_id: int | None  # the object's value in the annotation PNGs (None: unannotated split)
    split: str = ""
    category: str = ""
    extra: dict = field(default_factory=dict)  # dataset-specific (Ref-YouTube-VOS: the expression's other
    # fields, e.g. the embedded set's "kind"; A2D: the annotated frame and its .h5)


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _clean(text: str) -> str:
    return " ".join(str(text).lower().split())


def _videos(meta: dict, path: str) -> dict:
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise ValueError(f"{path}: expected {{\"videos\": {{<video>: ...}}}}")
    return meta["videos"]


def _expressions(vid: str, v: dict, path: str) -> list[tuple[str, str, str | None, list[str], str, dict]]:
    """(exp_id, text, obj_id, frames, category, the expression's other fields) of one video, from
    either schema."""
    if not isinstance(v, dict):
        raise ValueError(f"{path}: video {vid!r} is not an object")
    out = []
    if "expressions" in v:  # the current schema
        frames = v.get("frames")
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise ValueError(f"{path}: video {vid!r} has no list of frame names (\"frames\")")
        if not isinstance(v["expressions"], dict):
            raise ValueError(f"{path}: video {vid!r}: \"expressions\" must map exp_id -> {{exp, obj_id}}")
        for exp_id, e in v["expressions"].items():
            if not isinstance(e, dict) or not isinstance(e.get("exp"), str):
                raise ValueError(f"{path}: video {vid!r} expression {exp_id!r} has no \"exp\" text")
            rest = {k: x for k, x in e.items() if k not in ("exp", "obj_id")}
            out.append((str(exp_id), e["exp"], e.get("obj_id"), sorted(frames), "", rest))
    elif isinstance(v.get("objects"), dict):  # the older schema: objects -> {category, frames, expressions}
        n = 0
        for obj_id, o in sorted(v["objects"].items()):
            if not isinstance(o, dict) or not isinstance(o.get("expressions"), list) or not isinstance(o.get("frames"), list):
                raise ValueError(f"{path}: video {vid!r} object {obj_id!r} needs \"frames\" and \"expressions\" lists")
            for text in o["expressions"]:
                out.append((str(n), text, obj_id, sorted(o["frames"]), str(o.get("category", "")), {}))
                n += 1
    else:
        raise ValueError(f"{path}: video {vid!r} has neither \"expressions\" nor \"objects\"")
    return out


def load_ytvos(root: str, split: str, annotated: bool | None = None) -> list[VideoRecord]:
    """Ref-YouTube-VOS (or Ref-DAVIS17 in its layout) ``split`` under ``root``. ``annotated``: whether
    the split has annotation PNGs and object ids (default: train only, as Ref-YouTube-VOS; Ref-DAVIS
    has them in valid too). For Ref-YouTube-VOS valid, the videos of ``meta_expressions/test`` are
    removed, or, when that file is missing, the videos without frames in ``valid/JPEGImages``."""
    annotated = (split == "train") if annotated is None else annotated
    path = os.path.join(root, "meta_expressions", split, "meta_expressions.json")
    videos = _videos(_read_json(path), path)
    if split == "valid" and not annotated:
        test = os.path.join(root, "meta_expressions", "test", "meta_expressions.json")
        if os.path.isfile(test):
            videos = {k: v for k, v in videos.items() if k not in _videos(_read_json(test), test)}
        else:
            jpeg = os.path.join(root, split, "JPEGImages")
            videos = {k: v for k, v in videos.items() if os.path.isdir(os.path.join(jpeg, k))}
    categories = {}
    meta_path = os.path.join(root, split, "meta.json")
    if os.path.isfile(meta_path):
        for vid, v in _videos(_read_json(meta_path), meta_path).items():
            for oid, o in (v.get("objects") or {}).items() if isinstance(v, dict) else []:
                categories[(vid, str(oid))] = str(o.get("category", "")) if isinstance(o, dict) else ""
    records = []
    for vid in sorted(videos):
        for exp_id, text, obj_id, frames, category, rest in _expressions(vid, videos[vid], path):
            where = f"{path}: video {vid!r} expression {exp_id!r}"
            oid = None
            if annotated:
                try:
                    oid = int(obj_id)
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: obj_id {obj_id!r} is not an integer") from None
                if not 0 < oid < 256:
                    raise ValueError(f"{where}: obj_id {oid} is not a palette value 1..255")
            base = os.path.join(root, split)
            records.append(VideoRecord(
                video=vid, exp_id=exp_id, text=_clean(text), frames=frames,
                frame_paths=[os.path.join(base, "JPEGImages", vid, f + ".jpg") for f in frames],
                anno_paths=[os.path.join(base, "Annotations", vid, f + ".png") for f in frames] if annotated else None,
                obj_id=oid, split=split, category=category or categories.get((vid, str(obj_id)), ""), extra=rest))
    return records


def read_ids(path: str, record: str = "") -> np.ndarray:
    """(H, W) uint8: the object ids of a palette (or grey) annotation PNG."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such annotation{' (' + record + ')' if record else ''}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise ValueError(f"{path}: annotation PNGs hold object ids (mode P or L), this one is mode {im.mode}")
            return np.array(im, dtype=np.uint8)
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{path}: not a readable PNG ({e}){' (' + record + ')' if record else ''}") from None


def read_palette_mask(path: str, obj_id: int, record: str = "") -> np.ndarray:
    """(H, W) bool: the pixels of ``obj_id`` in a palette (or grey) annotation PNG."""
    return read_ids(path, record) == obj_id


# ---- A2D-Sentences and JHMDB-Sentences ----
def _csv_rows(path: str, header: list[str] | None) -> list[list[str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if header is not None:
        if not rows or [c.strip() for c in rows[0]] != header:
            raise ValueError(f"{path}: expected the header {','.join(header)}")
        rows = rows[1:]
    return rows


def load_a2d(root: str, split: str) -> list[VideoRecord]:
    """A2D-Sentences ``split`` (train or test): one record per (video, instance, query) and
    annotated frame that holds the instance (``extra``: frame number (1-based), the .h5 path, the
    instance id). Frames are the clip's video (``Release/clips320H/<vid>.mp4``): ``frame_paths``
    holds that path once."""
    if split not in ("train", "test"):
        raise ValueError(f"A2D-Sentences splits are train and test, not {split!r}")
    videoset = os.path.join(root, "Release", "videoset.csv")
    want = "0" if split == "train" else "1"
    rows = _csv_rows(videoset, None)  # no header
    bad = [i for i, r in enumerate(rows) if len(r) != 9]
    if bad:
        raise ValueError(f"{videoset}: row {bad[0] + 1} has {len(rows[bad[0]])} columns, expected 9")
    missed_path = os.path.join(root, "text_annotations", "a2d_missed_videos.txt")
    missed = set(open(missed_path).read().split()) if os.path.isfile(missed_path) else set()
    videos = {r[0] for r in rows if r[8].strip() == want and r[0] not in missed}
    ann_path = os.path.join(root, "text_annotations", "a2d_annotation.txt")
    h5_root = os.path.join(root, "text_annotations", "a2d_annotation_with_instances")
    records = []
    for n, (vid, inst, query) in enumerate(_csv_rows(ann_path, ["video_id", "instance_id", "query"])):
        if vid not in videos:
            continue
        try:
            inst_id = int(inst)
        except ValueError:
            continue  # e.g. "1 (copy)": dropped, as the reference implementations do
        folder = os.path.join(h5_root, vid)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder}: no annotated frames for {ann_path} row {n + 2} (video {vid})")
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".h5"):
                continue
            h5 = os.path.join(folder, name)
            if inst_id not in read_a2d_frame(h5)["instances"]:
                continue
            frame = int(name[:-3])
            records.append(VideoRecord(
                video=vid, exp_id=f"{inst_id}", text=_clean(query), frames=[f"{frame:05d}"],
                frame_paths=[os.path.join(root, "Release", "clips320H", vid + ".mp4")], anno_paths=[h5],
                obj_id=inst_id, split=split, extra={"frame": frame, "h5": h5, "instance": inst_id}))
    return records


def read_a2d_frame(path: str) -> dict:
    """One A2D annotation .h5: instance ids, (N, H, W) bool masks and (N, 4) xyxy boxes. The arrays
    were written MATLAB-style (transposed); a single instance has no leading axis."""
    try:
        import h5py
    except ImportError:
        raise ImportError(f"reading {path} needs h5py (pip install h5py), an optional dependency of the A2D reader") from None
    try:
        with h5py.File(path, "r") as f:
            inst = np.asarray(f["instance"]).reshape(-1).astype(np.int64)
            masks = np.asarray(f["reMask"])
            boxes = np.asarray(f["reBBox"]).reshape(4, -1).T
    except KeyError as e:
        raise ValueError(f"{path}: missing dataset {e} (expected instance, reMask, reBBox)") from None
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    if masks.ndim == 2:
        masks = masks[None]
    masks = masks.transpose(0, 2, 1).astype(bool)
    if len(masks) != len(inst) or len(boxes) != len(inst):
        raise ValueError(f"{path}: {len(inst)} instances but {len(masks)} masks and {len(boxes)} boxes")
    return {"instances": inst.tolist(), "masks": masks, "boxes": boxes}


def load_jhmdb(root: str) -> list[VideoRecord]:
    """JHMDB-Sentences (evaluation only): one record per (video, query), every frame that has a
    puppet mask (``anno_paths`` holds the .mat path once; :func:`read_jhmdb_masks`)."""
    ann_path = os.path.join(root, "jhmdb_annotation.txt")
    images = os.path.join(root, "Rename_Images")
    if not os.path.isdir(images):
        raise FileNotFoundError(f"{images}: no such folder")
    where = {}
    for action in sorted(os.listdir(images)):
        for vid in sorted(os.listdir(os.path.join(images, action))):
            where[vid] = action
    records = []
    for n, row in enumerate(_csv_rows(ann_path, ["video_id", "query"])):
        if len(row) != 2:
            raise ValueError(f"{ann_path}: row {n + 2} has {len(row)} columns, expected 2")
        vid, query = row
        if vid not in where:
            raise FileNotFoundError(f"{ann_path} row {n + 2}: video {vid} has no folder under {images}")
        folder = os.path.join(images, where[vid], vid)
        frames = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".png"))
        mat = os.path.join(root, "puppet_mask", where[vid], vid, "puppet_mask.mat")
        records.append(VideoRecord(
            video=vid, exp_id="0", text=_clean(query), frames=frames,
            frame_paths=[os.path.join(folder, f + ".png") for f in frames], anno_paths=[mat], obj_id=1,
            split="test", category=where[vid]))
    return records


def read_jhmdb_masks(path: str) -> np.ndarray:
    """(T, H, W) bool puppet masks of one JHMDB video (frames beyond T have none)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(f"reading {path} needs scipy (pip install scipy), an optional dependency of the JHMDB reader") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        m = loadmat(path)["part_mask"]
    except KeyError:
        raise ValueError(f"{path}: no part_mask array") from None
    if m.ndim != 3:
        raise ValueError(f"{path}: part_mask has shape {m.shape}, expected (H, W, T)")
    return m.transpose(2, 0, 1).astype(bool)


def annotated_frame(rec: VideoRecord, f: int) -> np.ndarray | None:
    """The ground-truth mask (H, W) bool of frame ``f`` of an A2D / JHMDB record: A2D's .h5 of that
    frame (the record's instance), JHMDB's puppet mask; None where the frame has none (A2D: a frame
    without an .h5; JHMDB: beyond the .mat's frames). ``anno_paths`` holds one path per frame, or
    one for the whole video (JHMDB's .mat)."""
    path = rec.anno_paths[0] if len(rec.anno_paths) == 1 and len(rec.frames) != 1 else rec.anno_paths[f]
    if path is None:
        return None
    if path.endswith(".h5"):
        a = read_a2d_frame(path)
        if rec.obj_id not in a["instances"]:
            raise ValueError(f"{path}: no instance {rec.obj_id} (video {rec.video})")
        return a["masks"][a["instances"].index(rec.obj_id)]
    if path.endswith(".mat"):
        masks = read_jhmdb_masks(path)
        return masks[f] if f < len(masks) else None
    raise ValueError(f"{path}: not an A2D (.h5) or JHMDB (.mat) annotation")
