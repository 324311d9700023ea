// Large CPU tensors without paying for fresh pages on every call.
//
// A gradient as large as its input (the value gradient of deformable attention: 70 MB for the Swin-T
// encoder maps at batch 8) is mostly zeros when few queries read the input, and its allocation can
// be most of the backward. Above glibc's largest mmap threshold (32 MiB) at::empty gets fresh memory
// every call and the kernel zero-fills each 4 KiB page at its first touch (one fault per page),
// ~15 ms for 70 MB on the 2-core CPU machine; below it, whether glibc reuses its heap or faults
// pages in again depends on the process's allocation history (the Swin-T decoder's 8.7 MB gradient:
// ~200 faults per forward + backward, none with a kept block). From 1 MiB up, empty_large keeps one
// such block when its tensor is freed and hands it out again, contents stale (the caller writes
// every element: the deformable attention's backward zero-fills it where its tasks do not write it
// whole); a first block comes from mmap with transparent huge pages asked for (one fault per 2 MiB),
// touched here so that no cost is deferred to the tensor's first writer. Memory held: at most two
// freed blocks (the largest; a gradient and its bfloat16 copy both recur); SSRVG_CPU_SPARE_BLOCK=0
// turns the keeping off. Smaller tensors, other platforms or a failed mmap: at::empty.
#pragma once

#include <ATen/core/Tensor.h>

namespace ssrvg {

// Contents undefined: for a result that is written whole.
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace ssrvg
