"""Checkpoints: written atomically (temp file + rename), read with ``weights_only=True`` and clear errors.

Everything a checkpoint holds is tensors and plain containers / scalars (RNG states included), so
loading never unpickles arbitrary objects: a checkpoint that asks for any other class or function
(which is how a malicious ``.pth`` runs code) is refused before anything runs.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile

import numpy as np
import torch


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


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "unsupported global" in msg.lower() or "can still be loaded" in msg:  # asks for a class / function
            what = next((ln.strip() for ln in msg.splitlines() if "global" in ln.lower()), "a disallowed object")
            raise RuntimeError(f"checkpoint {path} was refused: it holds objects that loading would have to construct "
                               f"by running code, which ssrvg_ext never does ({what}). Only load checkpoints written "
                               "by ssrvg_ext.") from None
        raise RuntimeError(f"checkpoint {path} is unreadable or corrupt (not a torch checkpoint); "
                           "resume from another checkpoint (e.g. best.pth) or start again") from None
    except Exception as e:  # truncated, overwritten, not a torch file, ...
        raise RuntimeError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {e}); "
                           "resume from another checkpoint (e.g. best.pth) or start again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RuntimeError(f"checkpoint {path} is not an ssrvg_ext checkpoint (no 'model' entry)")
    return ckpt
