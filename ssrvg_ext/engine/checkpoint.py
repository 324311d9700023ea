"""Checkpoints: written atomically (temp file + rename), read with clear errors."""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


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
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated, overwritten, not a torch file, ...
        raise RuntimeError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__}: {e}); "
                           "resume from another checkpoint (e.g. best.pth) or start again") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise RuntimeError(f"checkpoint {path} is not an ssrvg_ext checkpoint (no 'model' entry)")
    return ckpt
