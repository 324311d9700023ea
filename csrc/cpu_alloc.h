// Large zero-filled CPU tensors without paying for fresh pages on every call.
//
// A gradient as large as its input (the value gradient of deformable attention: 70 MB for the Swin-T
// encoder maps at batch 8) is mostly zeros when few queries read the input, and its allocation is
// most of the backward. Above glibc's largest mmap threshold (32 MiB) at::zeros gets fresh memory
// every call: the kernel zero-fills each 4 KiB page at its first touch (one fault per page) and
// memset writes the zeros again, ~15 ms for 70 MB on the 2-core CPU machine. zeros_large keeps one
// such block when its tensor is freed and hands it out again, cleared by a parallel memset (~2 ms);
// a first block comes from mmap with transparent huge pages asked for (one fault per 2 MiB), touched
// here so that no cost is deferred to the tensor's first reader. Memory held: at most two freed
// blocks (the largest; a gradient and its bfloat16 copy both recur); SSRVG_CPU_SPARE_BLOCK=0 turns
// the keeping off. Smaller tensors, other platforms or a failed mmap: at::zeros / at::empty.
#pragma once

#include <ATen/core/Tensor.h>

namespace ssrvg {

at::Tensor zeros_large(at::IntArrayRef sizes, const at::TensorOptions& options);
// The same blocks, contents undefined: for a result that is written whole.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace ssrvg
