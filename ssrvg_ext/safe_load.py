"""The one guarded ``torch.load`` of the library (checkpoints, ReSC / TransVG split files).

``torch.load(weights_only=True)`` builds only tensors, plain containers and scalars: a file that asks
for any other class or function (which is how a malicious ``.pth`` runs code) is refused before
anything runs. :func:`load_plain` turns torch's errors into one that names the file and says why.
"""

from __future__ import annotations

import os
import pickle

import torch


class UnsafeOrCorruptFile(RuntimeError, ValueError):
    """A file that was refused (it asks to construct objects) or could not be read. Both a
    RuntimeError and a ValueError, so callers catching either see it."""


def load_plain(path: str, kind: str, fix: str = "") -> object:
    """The tensors / containers / scalars in the torch file ``path`` (on the CPU). ``kind`` names the
    file in messages ("checkpoint", "split file"); ``fix`` is appended to the unreadable-file message.
    Raises FileNotFoundError or :class:`UnsafeOrCorruptFile`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "unsupported global" in msg.lower() or "can still be loaded" in msg:  # asks for a class / function
            what = next((ln.strip() for ln in msg.splitlines() if "global" in ln.lower()), "a disallowed object")
            raise UnsafeOrCorruptFile(
                f"{kind} {path} was refused: it holds objects that loading would have to construct by running code, "
                f"which ssrvg_ext never does ({what}). Only tensors, containers and numbers are read.") from None
        raise UnsafeOrCorruptFile(f"{kind} {path} is unreadable or corrupt (not a torch file: {msg.splitlines()[0]}){fix}") \
            from None
    except Exception as e:  # truncated, overwritten, not a torch file, ...
        first = str(e).splitlines()[0] if str(e) else ""
        raise UnsafeOrCorruptFile(f"{kind} {path} is unreadable or corrupt ({type(e).__name__}: {first}){fix}") from None
