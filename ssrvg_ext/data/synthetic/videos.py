"""The embedded video dataset: synthetic clips in Ref-YouTube-VOS's release format (docs/data.md).

Each clip holds 2-4 coloured shapes on a textured background over ``frames`` frames (named 00000,
00005, ... as Ref-YouTube-VOS's every-5th annotated frames). Each object moves: left / right / up
/ down, not at all, moves then stops, or enters from a side of the frame; objects drawn later pass
in front of earlier ones (occlusion). Clips often hold "twins" -- two objects of the same shape and
colour that differ only in how they move -- so that some expressions can only be resolved over time
("the square moving to the left", "the circle that stops", "the triangle that enters from the top").
Every expression is a program (appearance words + an optional motion) checked by :func:`resolve` to
pick exactly one object; ``kind`` in the expression record says "motion" when its appearance words
alone fit several objects. Splits: train, valid (the same distribution) and testB (rarer forms:
moving down, entering from the bottom).

    <out>/meta_expressions/<split>/meta_expressions.json   {"videos": {vid: {"frames", "expressions":
                                                            {exp_id: {"exp", "obj_id", "kind"}}}}}
    <out>/<split>/JPEGImages/<vid>/<frame>.jpg
    <out>/<split>/Annotations/<vid>/<frame>.png            palette PNG, pixel value = object id
    <out>/<split>/meta.json                                {"videos": {vid: {"objects": {id: {"category",
                                                            "frames", "color", "size", "motion", "centers"}}}}}
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
from PIL import Image

from .images import COLORS, SHAPES, SIZES, _background, _polygon, _raster

MOTIONS = ("left", "right", "up", "down", "static", "stops", "enters_top", "enters_left", "enters_right",
           "enters_bottom")
RARE = ("down", "enters_bottom")  # mostly in testB; rare in train
PHRASES = {"left": ("moving to the left", "that moves left"), "right": ("moving to the right", "that moves right"),
           "up": ("moving up", "that goes up"), "down": ("moving down", "that goes down"),
           "static": ("that does not move", "standing still"), "stops": ("that stops", "that comes to a stop"),
           **{f"enters_{s}": (f"that enters from the {s}",) for s in ("top", "left", "right", "bottom")}}
DIRS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
ENTRY = {"top": "down", "bottom": "up", "left": "right", "right": "left"}  # entering from a side = moving inwards


def trajectory(rng: np.random.Generator, motion: str, r: float, h: int, w: int, frames: int) -> np.ndarray:
    """(frames, 2) centres of an object of radius r with this motion."""
    speed = rng.uniform(5.0, 7.0) * w / 128
    if motion.startswith("enters_"):
        side = motion.split("_")[1]
        dx, dy = DIRS[ENTRY[side]]
        start = {"top": (rng.uniform(r + 4, w - r - 4), -r - 2), "bottom": (rng.uniform(r + 4, w - r - 4), h + r + 2),
                 "left": (-r - 2, rng.uniform(r + 4, h - r - 4)), "right": (w + r + 2, rng.uniform(r + 4, h - r - 4))}[side]
        steps = np.minimum(np.arange(frames), 4 + rng.integers(0, 3))  # in, then it may halt inside
        return np.array(start)[None] + np.stack([dx * steps, dy * steps], 1) * (2 * r + 8) / 4
    if motion == "static":
        return np.tile([rng.uniform(r + 2, w - r - 2), rng.uniform(r + 2, h - r - 2)], (frames, 1))
    dx, dy = DIRS[str(rng.choice(list(DIRS)))] if motion == "stops" else DIRS[motion]
    moving = np.arange(frames) if motion != "stops" else np.minimum(np.arange(frames), frames // 2)
    span = speed * (frames - 1 if motion != "stops" else frames // 2)
    x0 = rng.uniform(r + 2 + max(0, -dx) * span, w - r - 2 - max(0, dx) * span)
    y0 = rng.uniform(r + 2 + max(0, -dy) * span, h - r - 2 - max(0, dy) * span)
    return np.stack([x0 + dx * speed * moving, y0 + dy * speed * moving], 1)


def holds(motion: str, centers: np.ndarray, visible: np.ndarray, full: float) -> bool:
    """Whether a trajectory (centres, visible areas per frame, full area) fits a motion word."""
    d = np.diff(centers, axis=0)
    if motion in DIRS:  # a steady move that way over the whole clip
        ux, uy = DIRS[motion]
        along = d[:, 0] * ux + d[:, 1] * uy
        return bool((along > 2).all() and (np.abs(d[:, 0] * uy + d[:, 1] * ux) < 1).all())
    if motion == "static":
        return bool((np.abs(d) < 0.5).all())
    if motion == "stops":
        moving = np.abs(d).sum(1) > 0.5
        return bool(moving[0] and not moving[-2:].any())
    side = motion.split("_")[1]
    first_out = visible[0] < 0.2 * full
    return bool(first_out and holds_entry(side, centers[0], centers[-1]))


def holds_entry(side: str, a: np.ndarray, b: np.ndarray) -> bool:
    ux, uy = DIRS[ENTRY[side]]
    return (b[0] - a[0]) * ux + (b[1] - a[1]) * uy > 5


def resolve(prog: dict, objs: list[dict]) -> list[int]:
    """Indices of the objects the program fits: appearance words (shape / colour / size) and the
    motion word, if any."""
    out = []
    for i, o in enumerate(objs):
        if any(o[k] != v for k, v in prog["desc"].items()):
            continue
        if prog["motion"] is not None and prog["motion"] not in o["holds"]:
            continue
        out.append(i)
    return out


def render(prog: dict, pyrng: random.Random) -> str:
    d = prog["desc"]
    words = ["the"] + [d[k] for k in ("size", "color") if k in d] + [d.get("shape", "shape")]
    if prog["motion"] is not None:
        words.append(pyrng.choice(PHRASES[prog["motion"]]))
    return " ".join(words)


def programs(t: int, objs: list[dict]) -> list[dict]:
    """Every program that picks exactly object t."""
    o, out = objs[t], []
    keys = ("shape", "color", "size")
    for mask in range(1, 8):
        desc = {k: o[k] for b, k in enumerate(keys) if mask >> b & 1}
        if "shape" not in desc and "color" not in desc:
            continue  # "the small shape" is too vague to be a referring expression
        for motion in [None] + sorted(o["holds"]):
            p = {"desc": desc, "motion": motion}
            if resolve(p, objs) == [t]:
                p["kind"] = "motion" if motion is not None and len(resolve({"desc": desc, "motion": None}, objs)) > 1 \
                    else "appearance"
                out.append(p)
    return out


def make_clip(rng: np.random.Generator, h: int, w: int, frames: int, rare: bool) -> tuple[np.ndarray, np.ndarray, list]:
    """Frames (T, H, W, 3) uint8, the id map (T, H, W) uint8 (0 = background, object i + 1) and the
    objects (attributes, motion, centres, visible areas and the motions that hold)."""
    bg = _background(rng, h, w)
    n = int(rng.integers(2, 5))
    pool = [m for m in MOTIONS if (m in RARE) == rare or rng.random() < 0.15]
    objs = []
    for i in range(n):
        if i > 0 and rng.random() < 0.45:  # a twin: same look as an earlier object, another motion
            src = objs[int(rng.integers(0, i))]
            shape, color, size = src["shape"], src["color"], src["size"]
        else:
            shape, color, size = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(SIZES)))
        motion = str(rng.choice(pool))
        r = rng.uniform(*SIZES[size]) * w / 256
        objs.append({"shape": shape, "color": color, "size": size, "motion": motion, "r": r,
                     "centers": trajectory(rng, motion, r, h, w, frames), "rot": rng.uniform(-0.25, 0.25),
                     "tone": np.array(COLORS[color], np.float32) * rng.uniform(0.85, 1.1)})
    video, ids = np.empty((frames, h, w, 3), np.uint8), np.zeros((frames, h, w), np.uint8)
    for o in objs:
        o["visible"] = np.zeros(frames)
        o["full"] = float(np.pi * o["r"] ** 2)
    for t in range(frames):
        img = bg + rng.normal(0, 2, size=bg.shape).astype(np.float32)
        for i, o in enumerate(objs):  # later objects in front
            cx, cy = o["centers"][t]
            m = _raster(_polygon(o["shape"], float(cx), float(cy), o["r"], o["rot"]), h, w).astype(bool)
            img[m] = o["tone"]
            ids[t][m] = i + 1
        video[t] = np.clip(img, 0, 255).astype(np.uint8)
        for i, o in enumerate(objs):
            o["visible"][t] = float((ids[t] == i + 1).sum())
    for o in objs:
        o["holds"] = {m for m in MOTIONS if holds(m, o["centers"], o["visible"], o["full"])}
    return video, ids, objs


def _palette_png(ids: np.ndarray, path: str) -> None:
    im = Image.fromarray(ids, mode="P")
    pal = [0, 0, 0] + [c for k in range(1, 256) for c in ((k * 67) % 256, (k * 151) % 256, (k * 199) % 256)]
    im.putpalette(pal)
    im.save(path)


def generate(out: str, clips: int = 600, seed: int = 0, frames: int = 8, size: int = 128, eval_clips: int = 60,
             exprs_per_clip: int = 3, progress=None) -> dict:
    """Writes the dataset; returns expression counts per split and kind. Deterministic by seed."""
    counts = {}
    n_eval = min(eval_clips, max(1, clips // 10))
    splits = [("valid", n_eval), ("testB", n_eval), ("train", clips - 2 * n_eval)]
    k = 0
    for split, n in splits:
        videos, meta = {}, {}
        for _ in range(n):
            rng, pyrng = np.random.default_rng([seed, k]), random.Random(seed * 1_000_003 + k)
            rare = split == "testB" and pyrng.random() < 0.7 or split != "testB" and pyrng.random() < 0.05
            video, ids, objs = make_clip(rng, size, size, frames, rare)
            vid = f"synv{k:05d}"
            names = [f"{5 * t:05d}" for t in range(frames)]
            for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
                os.makedirs(os.path.join(out, split, sub, vid), exist_ok=True)
            for t, name in enumerate(names):
                Image.fromarray(video[t]).save(os.path.join(out, split, "JPEGImages", vid, name + ".jpg"), quality=92)
                _palette_png(ids[t], os.path.join(out, split, "Annotations", vid, name + ".png"))
            exprs = {}
            targets = [t for t in range(len(objs)) if objs[t]["visible"].max() > 0]
            for t in pyrng.sample(targets, min(exprs_per_clip, len(targets))):
                progs = programs(t, objs)
                motion_first = [p for p in progs if p["kind"] == "motion"]
                if motion_first and pyrng.random() < 0.5:
                    progs = motion_first
                if progs:
                    p = pyrng.choice(progs)
                    exprs[str(len(exprs))] = {"exp": render(p, pyrng), "obj_id": str(t + 1), "kind": p["kind"]}
                    counts[(split, p["kind"])] = counts.get((split, p["kind"]), 0) + 1
            videos[vid] = {"frames": names, "expressions": exprs}
            meta[vid] = {"objects": {str(i + 1): {
                "category": o["shape"], "frames": [nm for t, nm in enumerate(names) if o["visible"][t] > 0],
                "color": o["color"], "size": o["size"], "motion": o["motion"], "holds": sorted(o["holds"]),
                "centers": np.round(o["centers"], 2).tolist()} for i, o in enumerate(objs)}}
            k += 1
            if progress:
                progress(k, clips)
        os.makedirs(os.path.join(out, "meta_expressions", split), exist_ok=True)
        with open(os.path.join(out, "meta_expressions", split, "meta_expressions.json"), "w") as f:
            json.dump({"videos": videos}, f)
        with open(os.path.join(out, split, "meta.json"), "w") as f:
            json.dump({"videos": meta}, f)
    return {f"{s}_{kind}": v for (s, kind), v in sorted(counts.items())}
