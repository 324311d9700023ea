// Multi-scale deformable attention: input checks and the sampling math shared by CPU and CUDA.
//
// value (N, S, M, D), spatial_shapes (L, 2) rows (H, W), level_start_index (L,),
// sampling_locations (N, Lq, M, L, P, 2) normalised (x, y), attention_weights (N, Lq, M, L, P)
// -> output (N, Lq, M * D). Sampling is bilinear with zero padding at x_pix = x * W - 0.5,
// y_pix = y * H - 0.5: exactly F.grid_sample(..., align_corners=False, padding_mode="zeros").
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <cmath>
#include <vector>

namespace ssrvg {
namespace msda {

// The four bilinear corners of one sample; a corner outside the level has weight 0 and the
// valid flag cleared (its address is never formed).
template <typename T>
struct Corners {
  int64_t y0, x0;
  T fy, fx;  // fractional parts
  C10_HOST_DEVICE Corners(T loc_x, T loc_y, int64_t H, int64_t W) {
    const T x = loc_x * static_cast<T>(W) - static_cast<T>(0.5);
    const T y = loc_y * static_cast<T>(H) - static_cast<T>(0.5);
    const T xf = ::floor(x), yf = ::floor(y);
    // Far-away points (or NaN) are clamped to a position whose corners are all outside. The tests
    // are combined with & and selected in float, not branched on: near a small level's border they
    // are unpredictable (as branches they cost the tiny preset's encoder forward ~13% on the CPU).
    const bool in_x = (xf > static_cast<T>(-2)) & (xf < static_cast<T>(W + 1));
    const bool in_y = (yf > static_cast<T>(-2)) & (yf < static_cast<T>(H + 1));
    x0 = static_cast<int64_t>(in_x ? xf : static_cast<T>(-2));
    y0 = static_cast<int64_t>(in_y ? yf : static_cast<T>(-2));
    fx = x - xf;
    fy = y - yf;
  }
  // Corner k in 0..3: (dy, dx) = (k / 2, k % 2).
  C10_HOST_DEVICE bool inside(int k, int64_t H, int64_t W) const {  // 0 <= yy < H and 0 <= xx < W
    const int64_t yy = y0 + k / 2, xx = x0 + k % 2;
    return (static_cast<uint64_t>(yy) < static_cast<uint64_t>(H)) & (static_cast<uint64_t>(xx) < static_cast<uint64_t>(W));
  }
  C10_HOST_DEVICE int64_t offset(int k, int64_t W) const { return (y0 + k / 2) * W + x0 + k % 2; }
  C10_HOST_DEVICE T weight(int k) const {
    const T wy = (k / 2) ? fy : static_cast<T>(1) - fy;
    const T wx = (k % 2) ? fx : static_cast<T>(1) - fx;
    return wy * wx;
  }
  // d weight / d x_pix and d weight / d y_pix.
  C10_HOST_DEVICE T dweight_dx(int k) const { return ((k / 2) ? fy : static_cast<T>(1) - fy) * ((k % 2) ? 1 : -1); }
  C10_HOST_DEVICE T dweight_dy(int k) const { return ((k % 2) ? fx : static_cast<T>(1) - fx) * ((k / 2) ? 1 : -1); }
};

// Validates the inputs and returns the level shapes and starts on the host: L rows (H, W, start).
inline std::vector<int64_t> check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                         const at::Tensor& level_start_index, const at::Tensor& loc,
                                         const at::Tensor& attn) {
  TORCH_CHECK_VALUE(value.dim() == 4, "value must have shape (N, S, M, D); got ", value.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(value.scalar_type()), "value must be floating point; got ", value.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(loc.scalar_type()), "sampling_locations must be floating point; got ",
                   loc.scalar_type());
  TORCH_CHECK_TYPE(at::isFloatingType(attn.scalar_type()), "attention_weights must be floating point; got ",
                   attn.scalar_type());
  TORCH_CHECK_TYPE(spatial_shapes.scalar_type() == at::kLong, "spatial_shapes must be int64; got ",
                   spatial_shapes.scalar_type());
  TORCH_CHECK_TYPE(level_start_index.scalar_type() == at::kLong, "level_start_index must be int64; got ",
                   level_start_index.scalar_type());
  const int64_t N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
  TORCH_CHECK_VALUE(M > 0 && D > 0, "value must have M >= 1 heads and D >= 1 channels; got ", value.sizes());
  TORCH_CHECK_VALUE(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2 && spatial_shapes.size(0) >= 1,
                    "spatial_shapes must have shape (L, 2) with L >= 1; got ", spatial_shapes.sizes());
  const int64_t L = spatial_shapes.size(0);
  TORCH_CHECK_VALUE(level_start_index.dim() == 1 && level_start_index.size(0) == L,
                    "level_start_index must have shape (L,) = (", L, ",); got ", level_start_index.sizes());
  TORCH_CHECK_VALUE(loc.dim() == 6 && loc.size(0) == N && loc.size(2) == M && loc.size(3) == L && loc.size(5) == 2,
                    "sampling_locations must have shape (N, Lq, M, L, P, 2) = (", N, ", Lq, ", M, ", ", L,
                    ", P, 2); got ", loc.sizes());
  const int64_t Lq = loc.size(1), P = loc.size(4);
  TORCH_CHECK_VALUE(P >= 1, "sampling_locations must have P >= 1 points; got ", loc.sizes());
  TORCH_CHECK_VALUE(attn.dim() == 5 && attn.size(0) == N && attn.size(1) == Lq && attn.size(2) == M &&
                        attn.size(3) == L && attn.size(4) == P,
                    "attention_weights must have shape (N, Lq, M, L, P) = (", N, ", ", Lq, ", ", M, ", ", L, ", ", P,
                    "); got ", attn.sizes());
  TORCH_CHECK_VALUE(loc.device() == value.device() && attn.device() == value.device(),
                    "value, sampling_locations and attention_weights must be on one device; got ", value.device(),
                    ", ", loc.device(), ", ", attn.device());
  TORCH_CHECK_VALUE(spatial_shapes.device() == level_start_index.device(),
                    "spatial_shapes and level_start_index must be on one device; got ", spatial_shapes.device(), " and ",
                    level_start_index.device());
  const at::Tensor shapes = spatial_shapes.cpu().contiguous(), starts = level_start_index.cpu().contiguous();
  const int64_t* sh = shapes.data_ptr<int64_t>();
  const int64_t* st = starts.data_ptr<int64_t>();
  std::vector<int64_t> levels(3 * L);
  int64_t total = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t H = sh[2 * l], W = sh[2 * l + 1];
    TORCH_CHECK_VALUE(H >= 1 && W >= 1, "spatial_shapes[", l, "] = (", H, ", ", W, ") must be positive");
    TORCH_CHECK_VALUE(st[l] == total, "level_start_index[", l, "] = ", st[l],
                      " is inconsistent with spatial_shapes (expected ", total, ", the pixels of the levels before it)");
    levels[3 * l] = H, levels[3 * l + 1] = W, levels[3 * l + 2] = total;
    // Overflow-proof: H*W and the running total must fit int64 and stay within S.
    int64_t hw = 0;
    TORCH_CHECK_VALUE(!c10::mul_overflows(H, W, &hw) && hw <= S - total, "spatial_shapes[", l, "] = (", H, ", ", W,
                      ") does not fit: the levels up to it cover more than value's S = ", S, " positions");
    total += hw;
  }
  TORCH_CHECK_VALUE(total == S, "value has S = ", S, " positions but spatial_shapes cover ", total);
  return levels;
}

}  // namespace msda
}  // namespace ssrvg
