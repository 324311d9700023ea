"""One place that routes an op call to the compiled kernel or to its pure-PyTorch reference."""

from __future__ import annotations

import torch

from .. import extension
from . import reference


# (op, device type) -> the op's default overload, for the pairs this build has a kernel for: a call
# then costs one dict lookup in Python (the decoder's deformable attention takes ~10 microseconds)
_COMPILED: dict[tuple[str, str], object] = {}


def call(op: str, device: torch.device | str, *args):
    """Runs ``torch.ops.ssrvg.<op>(*args)``, or ``reference.<op>(*args)`` when the compiled library
    has no kernel for ``device`` (or :func:`ssrvg_ext.extension.force_reference` is active)."""
    key = (op, device.type if isinstance(device, torch.device) else torch.device(device).type)
    fn = None if extension._force_reference else _COMPILED.get(key)
    if fn is None:
        if not extension.use_compiled(op, device):
            return getattr(reference, op)(*args)
        fn = _COMPILED[key] = getattr(torch.ops.ssrvg, op).default
    return fn(*args)


def register_fake(op: str):
    """``torch.library.register_fake`` for ``ssrvg::<op>``, a no-op when ``_C`` is not loaded."""
    def wrap(fn):
        if extension.AVAILABLE:
            torch.library.register_fake(f"ssrvg::{op}")(fn)
        return fn
    return wrap


def register_autograd(op: str, backward, setup_context):
    """``torch.library.register_autograd`` for ``ssrvg::<op>``, a no-op when ``_C`` is not loaded
    (the references are differentiable through plain autograd)."""
    if extension.AVAILABLE:
        torch.library.register_autograd(f"ssrvg::{op}", backward, setup_context=setup_context)
