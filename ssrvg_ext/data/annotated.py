"""Records of the annotated-frame protocols, A2D-Sentences and JHMDB-Sentences (MTTR's, ReferFormer's
and SgMg's): one record per (video, object, expression, annotated frame), holding every frame of
the video and the index of the annotated one (``extra["annotated"]``). A clip of such a record is a
window that holds the annotated frame (:class:`~ssrvg_ext.data.clips.ClipDataset`): in evaluation
T frames centred on it (``[f - T//2, f + (T+1)//2)``, indices clamped to the video), in training a
window at a random offset; only the annotated frame is supervised and evaluated.

A2D's frames are its ``.mp4`` clips, decoded once into ``frame_cache/<vid>/00001.jpg ...``
(:func:`~ssrvg_ext.data.video_io.decode_to_cache`); JHMDB's are PNG folders. JHMDB is evaluated on
three frames per video: those of MTTR's ``jhmdb_sentences_samples_metadata.json`` when the folder
holds it, else three drawn with a fixed seed among the frames that have a puppet mask.
"""

from __future__ import annotations

import json
import os

import numpy as np
from tqdm import tqdm

from .readers.rvos import VideoRecord, load_a2d, load_jhmdb, read_jhmdb_masks
from .video_io import decode_to_cache

JHMDB_FRAMES_PER_VIDEO = 3


def a2d_records(root: str, split: str, frame_cache: str | None = None) -> list[VideoRecord]:
    """A2D-Sentences ``split`` with its videos decoded (into ``frame_cache``, default
    ``<root>/decoded_frames``): every record's ``frames`` / ``frame_paths`` are the video's frames
    (names 00001, ... 1-based as A2D's .h5 files), ``anno_paths`` its .h5 at the annotated frame and
    None elsewhere."""
    cache = frame_cache or os.path.join(root, "decoded_frames")
    records = load_a2d(root, split)
    decoded: dict[str, list[str]] = {}
    videos = sorted({r.frame_paths[0] for r in records})
    for mp4 in tqdm(videos, desc=f"A2D {split}: videos (decoded once into {cache})", disable=None, unit="video"):
        decoded[mp4] = decode_to_cache(mp4, os.path.join(cache, os.path.splitext(os.path.basename(mp4))[0]))
    names_of: dict[str, list[str]] = {}
    out = []
    for r in records:
        paths = decoded[r.frame_paths[0]]
        f = r.extra["frame"] - 1
        if not 0 <= f < len(paths):
            raise ValueError(f"{r.extra['h5']}: annotates frame {f + 1}, but {r.frame_paths[0]} has {len(paths)} frames")
        names = names_of.setdefault(r.frame_paths[0], [os.path.splitext(os.path.basename(p))[0] for p in paths])
        anno = [None] * len(paths)
        anno[f] = r.extra["h5"]
        out.append(VideoRecord(video=r.video, exp_id=r.exp_id, text=r.text, frames=names, frame_paths=paths,
                               anno_paths=anno, obj_id=r.obj_id, split=split,
                               extra={**r.extra, "annotated": f, "source": r.frame_paths[0]}))
    return out


def jhmdb_records(root: str, seed: int = 0) -> list[VideoRecord]:
    """JHMDB-Sentences: per video and expression, :data:`JHMDB_FRAMES_PER_VIDEO` records, each with
    one annotated frame (MTTR's sample when its metadata file is in ``root``)."""
    fixed = _mttr_sample(os.path.join(root, "jhmdb_sentences_samples_metadata.json"))
    rng = np.random.default_rng(seed)
    out = []
    for r in load_jhmdb(root):
        n_masked = min(len(r.frames), len(read_jhmdb_masks(r.anno_paths[0])))
        if n_masked == 0:
            raise ValueError(f"{r.anno_paths[0]}: no frame has a puppet mask")
        if fixed is not None and r.video in fixed:
            picks = [f for f in fixed[r.video] if f < n_masked]
        else:
            picks = sorted(rng.choice(n_masked, size=min(JHMDB_FRAMES_PER_VIDEO, n_masked), replace=False).tolist())
        for f in picks:
            anno = [None] * len(r.frames)
            anno[f] = r.anno_paths[0]
            out.append(VideoRecord(video=r.video, exp_id=f"{r.exp_id}_{f + 1}", text=r.text, frames=r.frames,
                                   frame_paths=r.frame_paths, anno_paths=anno, obj_id=1, split="test",
                                   category=r.category, extra={"annotated": f, "frame": f + 1}))
    return out


def _mttr_sample(path: str) -> dict[str, list[int]] | None:
    """{video: [0-based frame, ...]} of MTTR's fixed JHMDB sample (rows [vid, frame_path, mask_path,
    n_frames, query]), or None without the file."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = json.load(f)
    out: dict[str, list[int]] = {}
    for row in rows:
        try:
            vid, frame_path = row[0], row[1]
            out.setdefault(vid, []).append(int(os.path.splitext(os.path.basename(frame_path))[0]) - 1)
        except (IndexError, TypeError, ValueError):
            raise ValueError(f"{path}: expected rows [video, frame_path, mask_path, n_frames, query]; got {row!r}") from None
    return out


def centred_window(f: int, n: int, clip_len: int) -> list[int]:
    """The evaluation window of annotated frame f: [f - T//2, f + (T+1)//2), clamped to [0, n)."""
    return [min(max(t, 0), n - 1) for t in range(f - clip_len // 2, f + (clip_len + 1) // 2)]
