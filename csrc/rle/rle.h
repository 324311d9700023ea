// Input checks shared by the CPU and CUDA kernels of the RLE ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

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

// a * b for sizes, or a ValueError naming `what` when the product does not fit int64.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(a, b, &r), what, ": ", a, " x ", b, " overflows int64");
  return r;
}

// counts/offsets layout: offsets (N+1) non-decreasing from 0 to counts.numel(). The tensors must
// be on the CPU here (CUDA callers copy them first); any strides are fine (read contiguously).
inline void check_offsets_cpu(const at::Tensor& counts, const at::Tensor& offsets_in) {
  check_int64_1d(counts, "counts");
  check_int64_1d(offsets_in, "offsets");
  TORCH_CHECK_VALUE(offsets_in.device().is_cpu(), "offsets must be on the CPU here");
  TORCH_CHECK_VALUE(offsets_in.numel() >= 1, "offsets must have N+1 >= 1 entries");
  const at::Tensor offsets = offsets_in.contiguous();
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

// Every count non-negative and each mask's sum within int64 (for ops without sizes: area,
// to_string). CPU tensors, any strides.
inline void check_counts_nonnegative(const at::Tensor& counts_in, const at::Tensor& offsets_in) {
  check_offsets_cpu(counts_in, offsets_in);
  TORCH_CHECK_VALUE(counts_in.device().is_cpu(), "counts must be on the CPU here");
  const at::Tensor counts = counts_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t* c = counts.data_ptr<int64_t>();
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t n = offsets.numel() - 1;
  for (int64_t i = 0; i < n; ++i) {
    int64_t total = 0;
    for (int64_t j = o[i]; j < o[i + 1]; ++j) {
      TORCH_CHECK_VALUE(c[j] >= 0, "RLE ", i, ": count ", j - o[i], " is negative (", c[j], ")");
      TORCH_CHECK_VALUE(!c10::add_overflows(total, c[j], &total), "RLE ", i,
                        ": counts sum past the int64 range");
    }
  }
}

// Full validation of an RLE batch (CPU tensors, any strides): offsets well formed, sizes (N, 2)
// non-negative with H*W in int64, every count in [0, H*W - sum of the counts before it] (no sum can
// overflow), counts summing exactly to H*W, at least one count per mask.
inline void check_rles_host(const at::Tensor& counts_in, const at::Tensor& offsets_in,
                            const at::Tensor& sizes_in) {
  check_offsets_cpu(counts_in, offsets_in);
  TORCH_CHECK_VALUE(counts_in.device().is_cpu() && sizes_in.device().is_cpu(),
                    "counts and sizes must be on the CPU here");
  const at::Tensor counts = counts_in.contiguous(), offsets = offsets_in.contiguous();
  const int64_t n = offsets.numel() - 1;
  check_sizes(sizes_in, n);
  const at::Tensor sizes = sizes_in.contiguous();
  const int64_t* c = counts.data_ptr<int64_t>();
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t* s = sizes.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = s[2 * i], w = s[2 * i + 1];
    TORCH_CHECK_VALUE(h >= 0 && w >= 0, "RLE ", i, ": size must be non-negative; got [", h, ", ",
                      w, "]");
    const int64_t hw = checked_mul(h, w, "RLE size H x W");
    TORCH_CHECK_VALUE(o[i + 1] > o[i], "RLE ", i, ": counts are empty (a valid RLE has at least one)");
    int64_t total = 0;
    for (int64_t j = o[i]; j < o[i + 1]; ++j) {
      TORCH_CHECK_VALUE(c[j] >= 0, "RLE ", i, ": count ", j - o[i], " is negative (", c[j], ")");
      TORCH_CHECK_VALUE(c[j] <= hw - total, "RLE ", i, ": counts overrun the ", h, "x", w,
                        " mask (they sum past ", hw, ")");
      total += c[j];
    }
    TORCH_CHECK_VALUE(total == hw, "RLE ", i, ": counts sum to ", total, " but the ", h, "x", w,
                      " mask has ", hw, " pixels");
  }
}

// rle_decode's inputs (CPU tensors, any strides): N masks of one h x w size, N*h*w in int64, and
// the full check_rles_host validation; returns their (N, 2) sizes. Shared by the CPU and CUDA kernels.
inline at::Tensor check_decode_host(const at::Tensor& counts, const at::Tensor& offsets, int64_t h, int64_t w) {
  check_offsets_cpu(counts, offsets);
  TORCH_CHECK_VALUE(h >= 0 && w >= 0, "rle_decode: size must be non-negative; got [", h, ", ", w, "]");
  const int64_t n = offsets.numel() - 1;
  checked_mul(n, checked_mul(h, w, "rle_decode: h x w"), "rle_decode: N x h x w");
  at::Tensor sizes = at::empty({n, 2}, at::kLong);
  sizes.select(1, 0).fill_(h);
  sizes.select(1, 1).fill_(w);
  check_rles_host(counts, offsets, sizes);
  return sizes;
}

}  // namespace rle
}  // namespace ssrvg
