"""Checkpoints: written atomically (temp file + rename), read through the library's one guarded
loader (:mod:`ssrvg_ext.safe_load`): everything a checkpoint holds is tensors and plain containers /
scalars (RNG states included), so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile

import numpy as np
import torch

from ..safe_load import load_plain


def rng_state() -> dict:
    """This process's RNG states as tensors and plain values (loadable with weights_only=True)."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    s = {"torch": torch.get_rng_state(),
         "numpy": {"name": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
         "python": {"version": version, "state": list(py_state), "gauss": py_gauss}}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def rank_rng_state(ckpt: dict, rank: int, world: int) -> dict | None:
    """The RNG state this rank saved (``rng_per_rank``), or None when the run had another world
    size (the caller then seeds the rank afresh)."""
    states = ckpt.get("rng_per_rank") or [ckpt["rng"]]
    return states[rank] if len(states) == world else None


def save_atomic(obj, path: str, dump=torch.save) -> None:
    """Never leaves a half-written file at ``path``: ``dump(obj, binary_file)`` into a temp file beside
    it, then rename."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=os.path.splitext(path)[1], dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str):
    """Yields a temporary folder beside ``path`` to fill; on success it replaces ``path`` (renamed into
    place), on any error or interruption it is removed: ``path`` is never half written."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_", dir=parent)
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load(path: str) -> dict:
    """A checkpoint written by ssrvg_ext (weights only: :func:`ssrvg_ext.safe_load.load_plain`)."""
    ckpt = load_plain(path, "checkpoint", "; resume from another checkpoint (e.g. best.pth) or start again")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RuntimeError(f"checkpoint {path} is not an ssrvg_ext checkpoint (no 'model' entry)")
    return ckpt
