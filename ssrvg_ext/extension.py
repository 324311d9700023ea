"""Loads the compiled operator library once and tells the ops whether to use it.

Every op wrapper asks :func:`use_compiled` with the op name and the device of its inputs. It
answers True when ``_C`` is loaded and registers a kernel for that device; otherwise the wrapper
runs the pure-PyTorch reference, and the first such fallback of each kind warns once, saying why.
``SSRVG_REQUIRE_EXT=1`` makes a missing library or kernel an error instead. Tests and the
compiled-vs-reference comparisons flip all ops at once with :func:`force_reference`.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

_LOAD_ERROR: str | None = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.ssrvg.*)
except ImportError as e:  # not built, or built against another torch
    _LOAD_ERROR = f"{type(e).__name__}: {e}"

AVAILABLE = _LOAD_ERROR is None
_force_reference = False
_warned: set[tuple[str, str]] = set()


def require_ext() -> bool:
    return os.environ.get("SSRVG_REQUIRE_EXT", "0") == "1"


if not AVAILABLE:
    _msg = (f"ssrvg_ext: the compiled ops could not be loaded ({_LOAD_ERROR}); every op falls back "
            "to its slow pure-PyTorch reference. Rebuild with `pip install -e . --no-build-isolation`.")
    if require_ext():
        raise ImportError(_msg + " (SSRVG_REQUIRE_EXT=1)")
    warnings.warn(_msg, RuntimeWarning, stacklevel=2)


# Every op csrc/ops.cpp defines (python_tests/test_extension.py checks the list against the file).
OPS = ("rle_encode", "rle_decode", "rle_to_string", "rle_from_string", "rle_check", "rle_area", "rle_to_bbox",
       "rle_merge", "rle_iou", "mask_iou", "upsampled_mask_sums", "upsampled_mask_sums_backward",
       "upsampled_mask_loss", "upsampled_mask_loss_backward", "mask_postprocess",
       "ms_deform_attn", "ms_deform_attn_backward")


def _kernel_table() -> dict[tuple[str, str], bool]:
    """(op, device type) -> has a compiled kernel; read once (registrations happen when _C loads),
    so that the per-call lookup is a dict access that torch.compile can trace. Asked through the
    public OpOverload.has_kernel_for_dispatch_key."""
    if not AVAILABLE:
        return {}

    def has(op, key):  # a library built from older sources lacks the newer ops: their references run
        try:
            return getattr(torch.ops.ssrvg, op).default.has_kernel_for_dispatch_key(key)
        except (AttributeError, RuntimeError):
            return False
    return {(op, dev): has(op, key) for op in OPS for dev, key in (("cpu", "CPU"), ("cuda", "CUDA"))}


_KERNELS = _kernel_table()


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``ssrvg::<op>`` has a compiled kernel for ``device_type`` ('cpu', 'cuda')."""
    return _KERNELS.get((op, device_type), False)


def use_compiled(op: str, device: torch.device | str) -> bool:
    """True to call ``torch.ops.ssrvg.<op>``; False to run the reference (warning once why)."""
    if _force_reference:
        return False
    device_type = torch.device(device).type
    if device_type == "meta" and AVAILABLE:
        return True
    if _KERNELS.get((op, device_type), False):
        return True
    why = _LOAD_ERROR if not AVAILABLE else (f"this build has no {device_type} kernel for ssrvg::{op} (built from "
                                             "older sources? `make build` rebuilds it)")
    if require_ext():
        raise RuntimeError(f"ssrvg_ext: {why} and SSRVG_REQUIRE_EXT=1")
    if AVAILABLE and (op, device_type) not in _warned:
        _warned.add((op, device_type))
        warnings.warn(f"ssrvg_ext: {why}; using the pure-PyTorch reference.", RuntimeWarning, stacklevel=3)
    return False


@contextlib.contextmanager
def force_reference(enabled: bool = True):
    """Within this block every ssrvg op runs its pure-PyTorch reference (process-wide switch, for
    tests and compiled-vs-reference comparisons)."""
    global _force_reference
    old = _force_reference
    _force_reference = enabled
    try:
        yield
    finally:
        _force_reference = old
