"""Multi-scale deformable attention (docs/design.md section 5), a drop-in for Deformable DETR's op.

    out = ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

value (N, S, M, D) with S = sum of H*W over levels; spatial_shapes (L, 2) int64 rows (H, W);
level_start_index (L,) int64; sampling_locations (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1]
(points outside read zeros); attention_weights (N, Lq, M, L, P). Returns (N, Lq, M*D).
Each sample is bilinear with zero padding at ``x * W - 0.5, y * H - 0.5``, exactly
``F.grid_sample(..., align_corners=False, padding_mode="zeros")``. Differentiable w.r.t. value,
sampling_locations and attention_weights; float32/float16/bfloat16 (float32 accumulation) and
float64. The backward is bit-identical from run to run on CPU always, and on CUDA under
``torch.use_deterministic_algorithms(True)`` (otherwise it uses float atomics there).
"""

from __future__ import annotations

import torch

from .. import extension
from ._dispatch import call, register_fake

__all__ = ["ms_deform_attn"]

# The direct entry for plain tensors (csrc/ms_deform_attn/ms_deform_attn_python.cpp): the same
# dispatcher call as torch.ops.ssrvg.ms_deform_attn without its ~2.5 us of argument boxing, close to
# half of a few-query decoder call. It answers NotImplemented where torch.ops must decide.
_direct = getattr(extension._C, "ms_deform_attn", None) if extension.AVAILABLE else None


def ms_deform_attn(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    if _direct is not None and not extension._force_reference and not torch.compiler.is_compiling():
        out = _direct(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        if out is not NotImplemented:
            return out
    return call("ms_deform_attn", value.device, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights)


@register_fake("ms_deform_attn")
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    n, _, m, d = value.shape
    return value.new_empty((n, sampling_locations.shape[1], m * d))


@register_fake("ms_deform_attn_backward")
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


# Its autograd is registered in C++ (csrc/ms_deform_attn/ms_deform_attn_autograd.cpp): at the decoder's
# few queries a Python autograd function would cost more than the kernels.
