"""Clips of a video for one expression (:class:`~ssrvg_ext.data.readers.rvos.VideoRecord`): the dataset and
its collate function.

A clip sample holds ``clip_len`` frames of one video, resized and padded like the images
(:class:`~ssrvg_ext.data.transforms.ResizePad`), the referred object's mask in every frame (an empty
mask where it is not visible), its box per frame (from the mask; ``present`` False and a zero box
where the mask is empty) and the expression. Training draws a random window of consecutive frames
per expression (a video shorter than the window repeats its last frame), flips the whole clip with
its text ("left" <-> "right") and jitters brightness / contrast once per clip; never reversed in
time, since that changes what the motion words mean. Evaluation cuts each video into consecutive
windows (the last one moved back to end at the last frame) and predicts every frame once.

Records of the annotated-frame protocols (A2D / JHMDB: ``extra["annotated"]``, :mod:`.annotated`)
give one window holding the annotated frame instead -- centred on it in evaluation, at a random
offset in training -- and only that frame has a ground truth (``labeled``).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from .annotated import centred_window
from .dataset import Collate, read_image
from .readers.rvos import VideoRecord, annotated_frame, read_ids
from .transforms import ResizePad, swap_left_right


@dataclass
class VideoLabels:
    """Labels of every object of the training videos for the dense auxiliary loss (as
    :class:`~ssrvg_ext.data.readers.refer.InstanceLabels` for images): ``classes[name]`` the values of label
    ``name`` (index i + 1 in the maps; 0 is background); ``tables[video]`` an (max id + 1, K) int64
    table, row = the object's value in the annotation PNGs, -100 where a label is unknown;
    ``flip[name]`` the index map a horizontal flip applies (a value naming "left" becomes the one
    naming "right")."""
    names: tuple[str, ...]
    classes: dict
    tables: dict = field(repr=False)
    flip: dict = field(repr=False)


def load_video_labels(root: str, split: str, names, videos=None) -> VideoLabels:
    """Labels ``names`` (keys of the objects in ``<root>/<split>/meta.json``: "category" in
    Ref-YouTube-VOS; the embedded set also has "color", "size" and "motion") of the objects of
    ``videos`` (all when None)."""
    path = os.path.join(root, split, "meta.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (data.aux_labels reads the objects' labels from it)")
    with open(path) as f:
        meta = json.load(f).get("videos", {})
    objs = {v: {int(k): o for k, o in (m.get("objects") or {}).items()} for v, m in meta.items()
            if videos is None or v in videos}
    classes = {}
    for n in names:
        vals = sorted({str(o[n]) for os_ in objs.values() for o in os_.values() if n in o})
        if not vals:
            raise ValueError(f"{path}: no object has the label {n!r}")
        classes[n] = vals
    tables = {}
    for v, os_ in objs.items():
        t = torch.full((max(os_, default=0) + 1, len(names)), -100, dtype=torch.long)
        t[0] = 0
        for oid, o in os_.items():
            for k, n in enumerate(names):
                if n in o:
                    t[oid, k] = classes[n].index(str(o[n])) + 1
        tables[v] = t
    def mirrored(x: str) -> str:  # "enters_left" -> "enters_right" ("_" joins words in label values)
        return "_".join(swap_left_right(part) for part in x.split("_"))

    flip = {n: torch.tensor([0] + [vals.index(mirrored(x)) + 1 if mirrored(x) in vals else i + 1
                                   for i, x in enumerate(vals)]) for n, vals in classes.items()}
    return VideoLabels(tuple(names), classes, tables, flip)


def windows(n: int, clip_len: int) -> list[list[int]]:
    """Frame indices of consecutive windows covering n frames: windows start every clip_len frames,
    the last one ends at frame n - 1 (it may then overlap the previous one). A video shorter than
    clip_len is one window of all its frames."""
    if n <= clip_len:
        return [list(range(n))]
    starts = list(range(0, n - clip_len + 1, clip_len))
    if starts[-1] + clip_len < n:
        starts.append(n - clip_len)
    return [list(range(s, s + clip_len)) for s in starts]


def owned_windows(n: int, clip_len: int) -> list[tuple[list[int], list[bool]]]:
    """:func:`windows` with, per frame, whether the window predicts it: every frame is predicted
    once, by the first window that holds it."""
    seen, out = set(), []
    for w in windows(n, clip_len):
        out.append((w, [t not in seen for t in w]))
        seen.update(w)
    return out


def sgmg_frames(n: int, clip_len: int, anchor: int | None = None) -> list[int]:
    """SgMg's training clip (datasets/ytvos.py there): the anchor frame (random unless given), one
    frame 1-3 before it and one 1-3 after it (clamped to the video), and the rest drawn from the
    other frames of the video, sorted; a video with too few frames repeats its frames."""
    a = random.randrange(n) if anchor is None else anchor
    picked = [a]
    if clip_len > 1:
        picked.append(max(0, a - random.randint(1, 3)))
    if clip_len > 2:
        picked.append(min(n - 1, a + random.randint(1, 3)))
    others = [i for i in range(n) if i not in picked]
    picked += random.sample(others, min(clip_len - len(picked), len(others)))
    while len(picked) < clip_len:
        picked.append(random.choice(picked))
    return sorted(picked)


def box_of(mask: torch.Tensor) -> torch.Tensor:
    """xyxy pixel box (4,) around a (H, W) mask's pixels (the far edges exclusive); zeros when empty."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return torch.zeros(4)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


class ClipDataset(Dataset):
    """``train``: item i is a random window of record i. Otherwise the items are the windows of every
    record (:func:`owned_windows`); ``meta["frames"]`` names the window's frame indices and ``meta["own"]``
    the ones this window predicts (the others are predicted by an earlier window)."""

    def __init__(self, records: list[VideoRecord], clip_len: int, size: int, train: bool, flip: bool = True,
                 jitter: bool = True, cache_images: bool = False, labels: VideoLabels | None = None,
                 sampling: str = "consecutive", reverse: float = 0.0):
        if clip_len < 1:
            raise ValueError(f"clip_len must be >= 1; got {clip_len}")
        if sampling not in ("consecutive", "sgmg"):
            raise ValueError(f"data.clip_sampling must be consecutive or sgmg; got {sampling!r}")
        if not 0.0 <= reverse <= 1.0:
            raise ValueError(f"data.clip_reverse must be a probability in [0, 1]; got {reverse}")
        self.sampling, self.reverse = sampling, reverse
        self.records, self.clip_len, self.train = records, clip_len, train
        self.flip, self.jitter, self.resize = flip and train, jitter and train, ResizePad(size)
        self.cache, self.labels = ({} if cache_images else None), labels
        self.items = [(i, None, None) for i in range(len(records))] if train else \
            [(i, w, own) for i, r in enumerate(records) for w, own in self._eval_windows(r)]

    def _eval_windows(self, rec: VideoRecord) -> list[tuple[list[int], list[bool]]]:
        if "annotated" not in rec.extra:
            return owned_windows(len(rec.frames), self.clip_len)
        f = rec.extra["annotated"]
        w = centred_window(f, len(rec.frames), self.clip_len)
        first = w.index(f)
        return [(w, [k == first for k in range(len(w))])]

    def __len__(self):
        return len(self.items)

    def _cached(self, key, load):
        """load(), kept in memory under key with data.cache_images."""
        if self.cache is None:
            return load()
        if key not in self.cache:
            self.cache[key] = load()
        return self.cache[key]

    def _frame(self, path: str) -> torch.Tensor:
        return self._cached(path, lambda: read_image(path))

    def _ids(self, rec: VideoRecord, t: int, shape) -> torch.Tensor:
        """(H, W) uint8: the object ids of frame t's annotation (zeros on an unannotated split)."""
        if rec.anno_paths is None:
            return torch.zeros(shape, dtype=torch.uint8)
        path = rec.anno_paths[t]
        m = self._cached(("ids", path), lambda: torch.from_numpy(
            read_ids(path, f"video {rec.video} expression {rec.exp_id}")))
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"{path}: size {tuple(m.shape)} differs from its frame {tuple(shape)}")
        return m

    def _annotated(self, rec: VideoRecord, t: int, shape) -> torch.Tensor | None:
        """(H, W) uint8 ground truth of frame t of an A2D / JHMDB record, or None where it has none."""
        key = ("annotated", rec.anno_paths[t], rec.obj_id, t)
        m = self._cached(key, lambda: annotated_frame(rec, t))
        if m is None:
            return None
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"{rec.anno_paths[t]}: mask size {tuple(m.shape)} differs from its frame {tuple(shape)} "
                             f"(video {rec.video})")
        return torch.from_numpy(np.ascontiguousarray(m, dtype=np.uint8))

    def __getitem__(self, i: int) -> dict:
        ri, frames, own = self.items[i]
        rec = self.records[ri]
        n = len(rec.frames)
        if n == 0:
            raise ValueError(f"video {rec.video} expression {rec.exp_id} has no frames")
        annotated = rec.extra.get("annotated")
        if frames is None:  # training
            if self.sampling == "sgmg":  # SgMg's: an anchor (the annotated frame), its neighbours, random others
                frames = sgmg_frames(n, self.clip_len, annotated)
            elif annotated is not None:  # a window holding the annotated frame
                start = random.randint(annotated - self.clip_len + 1, annotated)
                frames = [min(max(start + k, 0), n - 1) for k in range(self.clip_len)]
            else:  # a random window
                start = random.randint(0, max(0, n - self.clip_len))
                frames = [min(start + k, n - 1) for k in range(self.clip_len)]
            if self.reverse and random.random() < self.reverse:
                frames = frames[::-1]
        imgs = [self._frame(rec.frame_paths[t]) for t in frames]
        size = tuple(imgs[0].shape[-2:])
        if any(tuple(im.shape[-2:]) != size for im in imgs):
            raise ValueError(f"video {rec.video}: its frames differ in size")
        if annotated is not None:  # A2D / JHMDB: a mask where the frame has one; the others are unlabeled
            labeled = [rec.anno_paths[t] is not None for t in frames]
            masks = [self._annotated(rec, t, size) if lab else torch.zeros(size, dtype=torch.uint8)
                     for t, lab in zip(frames, labeled)]
            labeled = [lab and m is not None for lab, m in zip(labeled, masks)]  # (JHMDB: past the .mat's frames)
            masks = [m if m is not None else torch.zeros(size, dtype=torch.uint8) for m in masks]
            ids = masks
        else:
            ids = [self._ids(rec, t, size) for t in frames]
            masks = [(m == rec.obj_id).to(torch.uint8) if rec.obj_id is not None else torch.zeros_like(m) for m in ids]
            labeled = [rec.anno_paths is not None] * len(frames)
        text, table = rec.text, None
        if self.labels is not None:  # every object's id map per frame and the video's label table
            table = self.labels.tables.get(rec.video, torch.zeros(1, len(self.labels.names), dtype=torch.long))
        if self.flip and random.random() < 0.5:
            imgs, masks, text = [im.flip(-1) for im in imgs], [m.flip(-1) for m in masks], swap_left_right(text)
            ids = [m.flip(-1) for m in ids]
            if table is not None:
                table = torch.stack([torch.where(table[:, k] >= 0, self.labels.flip[name][table[:, k].clamp_min(0)],
                                                 table[:, k]) for k, name in enumerate(self.labels.names)], 1)
        if self.jitter:  # one brightness / contrast change for the whole clip (hues stay: colours are named)
            b, c = random.uniform(0.75, 1.25), random.uniform(0.75, 1.25)
            stack = torch.stack(imgs).float() * b
            stack = ((stack - stack.mean()) * c + stack.mean()).clamp(0, 255).round().to(torch.uint8)
            imgs = list(stack)
        out = [self.resize({"image": im, "box": box_of(m), "mask": m, **({"instances": x} if table is not None else {})})
               for im, m, x in zip(imgs, masks, ids)]
        s = {"images": torch.stack([o["image"] for o in out]), "masks": torch.stack([o["mask"] for o in out]),
             "boxes": torch.stack([o["box_cxcywh"] for o in out]),
             "present": torch.tensor([bool(m.any()) for m in masks]), "labeled": torch.tensor(labeled), "text": text,
             "meta": {"index": ri, "frames": frames, "own": own, "orig_size": size, **out[0]["meta"]}}
        if table is not None:
            s["instances"], s["inst_labels"] = torch.stack([o["instances"] for o in out]), table
        return s


class ClipCollate:
    """Clips (B of T frames each) -> a batch of B * T frames, clip-major: ``images`` (B*T, 3, S, S)
    normalised, ``text_ids`` / ``text_mask`` each expression's row repeated for its T frames,
    ``boxes`` (B*T, 4) cxcywh, ``masks`` (B*T, S, S), ``box_valid`` (B*T,) whether the object is
    visible, ``clip_len`` T; ``meta`` one per frame (what the losses read) and ``clips`` one per clip."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        t = samples[0]["images"].shape[0]
        if any(s["images"].shape[0] != t for s in samples):
            raise ValueError("the clips of a batch must have the same number of frames")
        ids, mask = self.tokenizer.encode([s["text"] for s in samples])
        images = torch.cat([s["images"] for s in samples])
        out = {"images": (images - Collate.MEAN) / Collate.STD,
               "text_ids": ids.repeat_interleave(t, 0), "text_mask": mask.repeat_interleave(t, 0),
               "boxes": torch.cat([s["boxes"] for s in samples]).float(),
               "masks": torch.cat([s["masks"] for s in samples]),
               "box_valid": torch.cat([s["present"] for s in samples]), "clip_len": t,
               "meta": [dict(s["meta"], text=s["text"]) for s in samples for _ in range(t)],
               "clips": [dict(s["meta"], text=s["text"]) for s in samples]}
        labeled = torch.cat([s["labeled"] for s in samples])
        if not labeled.all():  # A2D / JHMDB clips: only the annotated frames are supervised (the criterion reads it)
            out["labeled"], out["num_labeled"] = labeled, int(labeled.sum())
        if "instances" in samples[0]:  # per frame: the id map and its video's label table (padded)
            out["instances"] = torch.cat([s["instances"] for s in samples])
            n = max(s["inst_labels"].shape[0] for s in samples)
            out["inst_labels"] = torch.full((len(samples) * t, n, samples[0]["inst_labels"].shape[1]), -100,
                                            dtype=torch.long)
            for i, s in enumerate(samples):
                out["inst_labels"][i * t:(i + 1) * t, :s["inst_labels"].shape[0]] = s["inst_labels"]
        return out
