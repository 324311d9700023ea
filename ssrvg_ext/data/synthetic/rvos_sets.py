"""Tiny A2D-Sentences and JHMDB-Sentences sets in their release layouts (docs/data.md), made from the
embedded video generator's clips (:func:`~.videos.make_clip`), so that tests and a new user run
the whole path -- video decoding, annotated-frame training, the standard evaluation -- without the
real data.

A2D-Sentences (``generate_a2d``)::

    <out>/Release/videoset.csv                     no header; vid, label, start, end, H, W, frames, labeled, split (0/1)
    <out>/Release/clips320H/<vid>.mp4              H.264 (the real clips are 320 px high; these are ``size``)
    <out>/text_annotations/a2d_annotation.txt      video_id,instance_id,query (one "1 (copy)" row, as in the release)
    <out>/text_annotations/a2d_missed_videos.txt   one video of videoset.csv that has no clip (excluded)
    <out>/text_annotations/a2d_annotation_with_instances/<vid>/<frame>.h5   1-based frame; instance, reMask
                                                   (N, W, H) MATLAB-transposed, (W, H) for one instance, reBBox (4, N)

JHMDB-Sentences (``generate_jhmdb``; evaluation only)::

    <out>/Rename_Images/<action>/<vid>/00001.png ...
    <out>/puppet_mask/<action>/<vid>/puppet_mask.mat   part_mask (H, W, T), T one short of the frames (as in JHMDB,
                                                       trailing frames may have no mask)
    <out>/jhmdb_annotation.txt                      video_id,query

Writing needs PyAV (the ``.mp4`` clips), h5py and scipy (the video extra).
"""

from __future__ import annotations

import csv
import os
import random

import numpy as np
from PIL import Image

from .videos import make_clip, programs, render


def _expression(objs: list[dict], t: int, pyrng: random.Random) -> str | None:
    progs = programs(t, objs)
    return render(pyrng.choice(progs), pyrng) if progs else None


def generate_a2d(out: str, clips: int = 40, frames: int = 12, size: int = 128, seed: int = 0, test_every: int = 4,
                 labeled: tuple[int, ...] = (3, 6, 9)) -> dict:
    """Writes a tiny A2D-Sentences; every ``test_every``-th clip is in the test split. ``labeled``:
    the 1-based frames with an annotation .h5. Returns {"train": expressions, "test": ...}."""
    import h5py

    from ..video_io import write_video

    ann = os.path.join(out, "text_annotations")
    h5_root = os.path.join(ann, "a2d_annotation_with_instances")
    os.makedirs(os.path.join(out, "Release", "clips320H"), exist_ok=True)
    os.makedirs(h5_root, exist_ok=True)
    rows, queries, counts = [], [], {"train": 0, "test": 0}
    for k in range(clips):
        rng, pyrng = np.random.default_rng([seed, 7, k]), random.Random(seed * 7919 + k)
        video, ids, objs = make_clip(rng, size, size, frames, rare=False)
        vid = f"a2d{k:05d}xy"
        split = 1 if k % test_every == test_every - 1 else 0
        write_video(video, os.path.join(out, "Release", "clips320H", vid + ".mp4"), fps=8)
        os.makedirs(os.path.join(h5_root, vid), exist_ok=True)
        annotated = [f for f in labeled if f <= frames]
        for f in annotated:
            present = [i + 1 for i in range(len(objs)) if (ids[f - 1] == i + 1).any()]
            masks = np.stack([(ids[f - 1] == i).astype(np.uint8) for i in present]) if present else \
                np.zeros((0, size, size), np.uint8)
            boxes = np.array([[xs.min(), ys.min(), xs.max(), ys.max()] for ys, xs in
                              (np.nonzero(m) for m in masks)], np.float64).reshape(-1, 4)
            with h5py.File(os.path.join(h5_root, vid, f"{f:05d}.h5"), "w") as h:
                h["instance"] = np.array(present, np.float64)
                re = masks.transpose(0, 2, 1)  # MATLAB order: (N, W, H), (W, H) for one instance
                h["reMask"] = re[0] if len(present) == 1 else re
                h["reBBox"] = boxes.T  # (4, N)
        seen = [i for i in range(len(objs)) if any((ids[f - 1] == i + 1).any() for f in annotated)]
        for t in pyrng.sample(seen, min(2, len(seen))):
            text = _expression(objs, t, pyrng)
            if text:
                queries.append((vid, str(t + 1), text))
                counts["train" if split == 0 else "test"] += 1
        rows.append([vid, "11", "0", "1", str(size), str(size), str(frames), str(len(annotated)), str(split)])
    if queries:  # the release's one malformed instance id, which readers drop
        queries.insert(1, (queries[0][0], queries[0][1] + " (copy)", queries[0][2]))
    rows.append(["a2dmissedxy", "11", "0", "1", str(size), str(size), str(frames), "0", "0"])
    with open(os.path.join(out, "Release", "videoset.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(os.path.join(ann, "a2d_missed_videos.txt"), "w") as f:
        f.write("a2dmissedxy\n")
    with open(os.path.join(ann, "a2d_annotation.txt"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "instance_id", "query"])
        w.writerows(queries)
    return counts


def generate_jhmdb(out: str, clips: int = 12, frames: int = 10, size: int = 128, seed: int = 0) -> int:
    """Writes a tiny JHMDB-Sentences (one referred actor per video). Returns the number of videos."""
    from scipy.io import savemat

    rows = []
    for k in range(clips):
        rng, pyrng = np.random.default_rng([seed, 11, k]), random.Random(seed * 104729 + k)
        video, ids, objs = make_clip(rng, size, size, frames, rare=False)
        visible = [i for i in range(len(objs)) if (ids == i + 1).any()]
        t = pyrng.choice(visible)
        text = _expression(objs, t, pyrng)
        if text is None:
            continue
        action, vid = objs[t]["motion"], f"jh{k:04d}"
        img_dir = os.path.join(out, "Rename_Images", action, vid)
        mask_dir = os.path.join(out, "puppet_mask", action, vid)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(mask_dir, exist_ok=True)
        for f in range(frames):
            Image.fromarray(video[f]).save(os.path.join(img_dir, f"{f + 1:05d}.png"))
        part = (ids[: frames - 1] == t + 1).astype(np.uint8).transpose(1, 2, 0)  # (H, W, T)
        savemat(os.path.join(mask_dir, "puppet_mask.mat"), {"part_mask": part})
        rows.append((vid, text))
    with open(os.path.join(out, "jhmdb_annotation.txt"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "query"])
        w.writerows(rows)
    return len(rows)
