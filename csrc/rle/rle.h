// Input checks shared by the CPU and CUDA kernels of the RLE ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace ssrvg {
namespace rle {

// masks: (N, H, W) uint8 or bool.
inline void check_masks(const at::Tensor& masks, const char* name) {
  TORCH_CHECK_VALUE(masks.dim() == 3, name, " must have shape (N, H, W); got ", masks.dim(),
                    " dimensions ", masks.sizes());
  TORCH_CHECK_TYPE(masks.scalar_type() == at::kByte || masks.scalar_type() == at::kBool, name,
                   " must be a uint8 or bool tensor; got ", masks.scalar_type());
}

inline void check_same_hw(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK_VALUE(a.size(1) == b.size(1) && a.size(2) == b.size(2),
                    "mask_iou: a and b must have the same (H, W); got a ", a.sizes(), " and b ",
                    b.sizes());
}

inline void check_int64_1d(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong, name, " must be int64; got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, name, " must be 1-D; got shape ", t.sizes());
}

// The iscrowd vector of an IoU call: empty (no crowd) or one uint8/bool flag per gt.
inline void check_iscrowd(const at::Tensor& iscrowd, int64_t num_gt) {
  TORCH_CHECK_TYPE(iscrowd.scalar_type() == at::kByte || iscrowd.scalar_type() == at::kBool,
                   "iscrowd must be uint8 or bool; got ", iscrowd.scalar_type());
  TORCH_CHECK_VALUE(iscrowd.numel() == 0 || (iscrowd.dim() == 1 && iscrowd.numel() == num_gt),
                    "iscrowd must be empty or have one entry per gt (", num_gt, "); got shape ",
                    iscrowd.sizes());
}

// counts/offsets layout: offsets (N+1) non-decreasing from 0 to counts.numel(). The offsets
// tensor must be on the CPU here (callers on CUDA copy it first: it is N+1 numbers).
inline void check_offsets_cpu(const at::Tensor& counts, const at::Tensor& offsets) {
  check_int64_1d(counts, "counts");
  check_int64_1d(offsets, "offsets");
  TORCH_CHECK_VALUE(offsets.numel() >= 1, "offsets must have N+1 >= 1 entries");
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t n = offsets.numel() - 1;
  TORCH_CHECK_VALUE(o[0] == 0, "offsets[0] must be 0; got ", o[0]);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(o[i + 1] >= o[i], "offsets must be non-decreasing; offsets[", i + 1,
                      "] = ", o[i + 1], " < offsets[", i, "] = ", o[i]);
  }
  TORCH_CHECK_VALUE(o[n] == counts.numel(), "offsets[-1] = ", o[n],
                    " does not match the number of counts (", counts.numel(), ")");
}

inline void check_sizes(const at::Tensor& sizes, int64_t n) {
  TORCH_CHECK_TYPE(sizes.scalar_type() == at::kLong, "sizes must be int64; got ",
                   sizes.scalar_type());
  TORCH_CHECK_VALUE(sizes.dim() == 2 && sizes.size(0) == n && sizes.size(1) == 2,
                    "sizes must have shape (", n, ", 2); got ", sizes.sizes());
}

}  // namespace rle
}  // namespace ssrvg
