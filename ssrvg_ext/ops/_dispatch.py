"""One place that routes an op call to the compiled kernel or to its pure-PyTorch reference."""

from __future__ import annotations

import torch

from .. import extension
from . import reference


def call(op: str, device: torch.device | str, *args):
    """Runs ``torch.ops.ssrvg.<op>(*args)``, or ``reference.<op>(*args)`` when the compiled library
    has no kernel for ``device`` (or :func:`ssrvg_ext.extension.force_reference` is active)."""
    if extension.use_compiled(op, device):
        return getattr(torch.ops.ssrvg, op)(*args)
    return getattr(reference, op)(*args)


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
