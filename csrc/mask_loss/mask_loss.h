// Per-pixel math of the fused upsampled mask loss, shared by the CPU and CUDA kernels.
//
// z(Y, X) = bilinear upsampling of low-res logits (h, w) to (H, W), align_corners=False, exactly
// PyTorch's source-index rule: src = max(scale * (dst + 0.5) - 0.5, 0), scale = in / out,
// i0 = floor(src), i1 = i0 + (i0 < in - 1), lambda = src - i0.
// The kernels return, per mask, the sums over valid pixels of
//   [p*t, p, t, BCE(z, t), focal(z, t; alpha, gamma)]    with p = sigmoid(z)
// and their backward gathers dL/dz into the low-res logits without atomics.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <cmath>

// The per-pixel math is always inlined on the host: the CPU kernels' AVX2 clones (cpu_simd.h) only
// vectorise what is inlined into them.
#if defined(__CUDACC__) || !defined(__GNUC__)
#define SSRVG_PIXEL_INLINE C10_HOST_DEVICE inline
#else
#define SSRVG_PIXEL_INLINE C10_HOST_DEVICE __attribute__((always_inline)) inline
#endif

namespace ssrvg {
namespace mask_loss {

constexpr int kSums = 5;  // p*t, p, t, bce, focal

template <typename T>
struct Lerp {
  int64_t i0, i1;
  T l1;  // weight of i1; weight of i0 is 1 - l1
};

// PyTorch's align_corners=False source index for output index `dst` (scale = in / out).
template <typename T>
C10_HOST_DEVICE inline Lerp<T> source_index(int64_t dst, T scale, int64_t in) {
  T src = scale * (static_cast<T>(dst) + static_cast<T>(0.5)) - static_cast<T>(0.5);
  if (src < 0) src = 0;
  int64_t i0 = static_cast<int64_t>(src);
  if (i0 > in - 1) i0 = in - 1;
  const int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
  T l1 = src - static_cast<T>(i0);
  if (l1 > 1) l1 = 1;
  return {i0, i1, l1};
}

// Bilinear blend of four corner values, in PyTorch's order: rows outside, columns inside.
template <typename T>
C10_HOST_DEVICE inline T blend(const Lerp<T>& ly, const Lerp<T>& lx, T v00, T v01, T v10, T v11) {
  const T hy0 = T(1) - ly.l1, hx0 = T(1) - lx.l1;
  return hy0 * (hx0 * v00 + lx.l1 * v01) + ly.l1 * (hx0 * v10 + lx.l1 * v11);
}

// Upsampled value at taps (ly, lx) of a (h, w) map stored as S (computed in T).
template <typename T, typename S>
C10_HOST_DEVICE inline T interp(const S* v, int64_t w, const Lerp<T>& ly, const Lerp<T>& lx) {
  return blend(ly, lx, static_cast<T>(v[ly.i0 * w + lx.i0]), static_cast<T>(v[ly.i0 * w + lx.i1]),
               static_cast<T>(v[ly.i1 * w + lx.i0]), static_cast<T>(v[ly.i1 * w + lx.i1]));
}

// One pixel of the inference path: the (crop -> output) resize taps (ly, lx) read the
// (low-res -> input) upsample at input rows ly.i0 / ly.i1 (taps ay0 / ay1) and columns
// lx.i0 / lx.i1 (taps ax0 / ax1). Same arithmetic as interpolate + crop + interpolate.
template <typename T, typename S>
C10_HOST_DEVICE inline T resize_of_upsample(const S* v, int64_t w, const Lerp<T>& ly, const Lerp<T>& lx,
                                            const Lerp<T>& ay0, const Lerp<T>& ay1, const Lerp<T>& ax0,
                                            const Lerp<T>& ax1) {
  return blend(ly, lx, interp(v, w, ay0, ax0), interp(v, w, ay0, ax1), interp(v, w, ay1, ax0), interp(v, w, ay1, ax1));
}

// Output rows [first, last] whose bilinear taps touch input row i (the taps i0, i1 of dst are
// non-decreasing in dst, so the set is one contiguous range). Binary search over `out` rows.
template <typename T>
C10_HOST_DEVICE inline void output_range(int64_t i, T scale, int64_t in, int64_t out, int64_t* first,
                                         int64_t* last) {
  // first dst with i1(dst) >= i
  int64_t lo = 0, hi = out;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (source_index<T>(mid, scale, in).i1 >= i) hi = mid; else lo = mid + 1;
  }
  *first = lo;
  // first dst with i0(dst) > i
  lo = 0, hi = out;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (source_index<T>(mid, scale, in).i0 > i) hi = mid; else lo = mid + 1;
  }
  *last = lo - 1;
}

// Weight with which output index dst (taps l) reads input index i.
template <typename T>
C10_HOST_DEVICE inline T tap_weight(const Lerp<T>& l, int64_t i) {
  T w = 0;
  if (l.i0 == i) w += static_cast<T>(1) - l.l1;
  if (l.i1 == i) w += l.l1;
  return w;
}

// Transcendentals used by the pixel math; the CPU float path swaps in vectorisable versions.
struct StdMath {
  template <typename T>
  C10_HOST_DEVICE static T exp(T x) { return ::exp(x); }
  template <typename T>
  C10_HOST_DEVICE static T log1p(T x) { return ::log1p(x); }
  template <typename T>
  C10_HOST_DEVICE static T pow(T x, T y) { return ::pow(x, y); }
};

// How (1 - p_t)^gamma is computed: kept a compile-time choice so the common cases vectorise.
// kNoFocal: the focal sum's gradient weight is 0, so the backward skips it.
enum GammaKind { kGammaZero = 0, kGammaTwo = 2, kGammaAny = 1, kNoFocal = 3 };

inline GammaKind gamma_kind(double gamma) {
  return gamma == 0 ? kGammaZero : (gamma == 2 ? kGammaTwo : kGammaAny);
}

template <int G, typename M, typename T>
SSRVG_PIXEL_INLINE T pow_gamma(T q, T gamma) {
  if (G == kGammaZero) return T(1);
  if (G == kGammaTwo) return q * q;
  return M::pow(q, gamma);
}

// d/dq of q^gamma.
template <int G, typename M, typename T>
SSRVG_PIXEL_INLINE T dpow_gamma(T q, T gamma) {
  if (G == kGammaZero) return T(0);
  if (G == kGammaTwo) return T(2) * q;
  return q > T(0) ? gamma * M::pow(q, gamma - T(1)) : T(0);
}

template <typename T>
SSRVG_PIXEL_INLINE T alpha_t(T t, T alpha) {
  return alpha >= 0 ? alpha * t + (T(1) - alpha) * (T(1) - t) : T(1);
}

// Everything one pixel contributes, from one exp and one log1p:
// p = sigmoid(z), bce = max(z, 0) - z t + log1p(exp(-|z|)), focal = alpha_t * bce * (1 - p_t)^gamma.
template <int G, typename M, typename T>
struct Pixel {
  T p, bce, q;  // q = 1 - p_t
  SSRVG_PIXEL_INLINE Pixel(T z, T t) {
    const T e = M::exp(-(z < T(0) ? -z : z));
    const T inv = T(1) / (T(1) + e);
    p = z >= T(0) ? inv : e * inv;
    bce = (z > T(0) ? z : T(0)) - z * t + M::log1p(e);
    q = T(1) - (p * t + (T(1) - p) * (T(1) - t));
  }
  SSRVG_PIXEL_INLINE T focal(T t, T alpha, T gamma) const { return alpha_t(t, alpha) * bce * pow_gamma<G, M>(q, gamma); }
  // d/dz of the five sums weighted by g[0..4] (sum t does not depend on z).
  SSRVG_PIXEL_INLINE T dz(T t, const T* g, T alpha, T gamma) const {
    const T dp = p * (T(1) - p);
    T d = (g[0] * t + g[1]) * dp + g[3] * (p - t);
    if (G != kNoFocal) {
      const T dq = -dp * (T(2) * t - T(1));
      d += g[4] * alpha_t(t, alpha) * ((p - t) * pow_gamma<G, M>(q, gamma) + bce * dpow_gamma<G, M>(q, gamma) * dq);
    }
    return d;
  }
};

inline void check_inputs(const at::Tensor& logits, const at::Tensor& targets,
                         const c10::optional<at::Tensor>& valid) {
  TORCH_CHECK_VALUE(logits.dim() == 3, "logits must have shape (B, h, w); got ", logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()),
                   "logits must be float64/float32/float16/bfloat16; got ", logits.scalar_type());
  TORCH_CHECK_VALUE(targets.dim() == 3, "targets must have shape (B, H, W); got ", targets.sizes());
  TORCH_CHECK_TYPE(targets.scalar_type() == at::kByte || targets.scalar_type() == at::kBool,
                   "targets must be uint8 or bool (binary masks); got ", targets.scalar_type());
  TORCH_CHECK_VALUE(logits.size(0) == targets.size(0), "logits and targets must have the same batch size; got ",
                    logits.size(0), " and ", targets.size(0));
  TORCH_CHECK_VALUE(logits.size(1) > 0 && logits.size(2) > 0, "logits must have h, w >= 1; got ",
                    logits.sizes());
  TORCH_CHECK_VALUE(targets.size(1) > 0 && targets.size(2) > 0, "targets must have H, W >= 1; got ",
                    targets.sizes());
  TORCH_CHECK_VALUE(logits.device() == targets.device(), "logits and targets must be on one device; got ",
                    logits.device(), " and ", targets.device());
  if (valid.has_value()) {
    const at::Tensor& v = *valid;
    TORCH_CHECK_TYPE(v.scalar_type() == at::kByte || v.scalar_type() == at::kBool,
                     "valid must be uint8 or bool; got ", v.scalar_type());
    TORCH_CHECK_VALUE(v.sizes() == targets.sizes(), "valid must have the shape of targets ", targets.sizes(),
                      "; got ", v.sizes());
    TORCH_CHECK_VALUE(v.device() == targets.device(), "valid must be on the device of targets");
  }
}

// Focal parameters: gamma finite and >= 0; alpha finite and <= 1 (alpha < 0 switches the alpha
// weighting off, as torchvision's sigmoid_focal_loss).
inline void check_focal_params(double alpha, double gamma) {
  TORCH_CHECK_VALUE(std::isfinite(gamma) && gamma >= 0, "gamma must be a finite number >= 0; got ", gamma);
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha <= 1, "alpha must be a finite number <= 1 (< 0: no alpha weighting); got ",
                    alpha);
}

// Checked, contiguous inputs of the loss kernels and their sizes (valid undefined when absent).
// All checks run before any device guard or kernel (a CPU tensor given to a CUDA kernel is an error
// here, not an internal assert).
struct LossInputs {
  at::Tensor logits, targets, valid;
  int64_t B, h, w, H, W;
  LossInputs(const at::Tensor& l, const at::Tensor& t, const c10::optional<at::Tensor>& v, double alpha,
             double gamma) {
    check_inputs(l, t, v);
    check_focal_params(alpha, gamma);
    logits = l.contiguous();
    targets = t.contiguous();
    valid = v.has_value() ? v->contiguous() : at::Tensor();
    B = logits.size(0), h = logits.size(1), w = logits.size(2), H = targets.size(1), W = targets.size(2);
  }
  const uint8_t* target_data() const { return static_cast<const uint8_t*>(targets.data_ptr()); }
  const uint8_t* valid_data() const { return valid.defined() ? static_cast<const uint8_t*>(valid.data_ptr()) : nullptr; }
  void check_grad(const at::Tensor& grad) const {
    TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == B && grad.size(1) == kSums, "grad must have shape (", B,
                      ", ", kSums, "); got ", grad.sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), "grad must be floating point; got ", grad.scalar_type());
    TORCH_CHECK_VALUE(grad.device() == logits.device(), "grad must be on the device of logits (", logits.device(),
                      "); got ", grad.device());
  }
};

// ---- the whole loss in one op (upsampled_mask_loss) ----
// Terms, by index: 0 dice (+1 smoothing), 1 soft IoU, 2 mean BCE, 3 mean focal, each per mask,
// summed over masks and divided by num_masks; the loss is their weighted sum. A mask's statistics
// are its five sums and its number of valid pixels (kStats), kept for the backward.
constexpr int kTerms = 4;
constexpr int kStats = kSums + 1;

struct TermWeights {
  double weight[kTerms] = {0, 0, 0, 0};
  bool want[kTerms] = {false, false, false, false};
  double num_masks = 1;
  bool focal() const { return want[3]; }
  bool pixel_count() const { return want[2] || want[3]; }
};

inline TermWeights check_terms(at::IntArrayRef terms, at::ArrayRef<double> weights, double num_masks) {
  TORCH_CHECK_VALUE(!terms.empty(), "upsampled_mask_loss needs at least one term");
  TORCH_CHECK_VALUE(terms.size() == weights.size(), "terms and weights must have one length; got ", terms.size(),
                    " and ", weights.size());
  TORCH_CHECK_VALUE(std::isfinite(num_masks) && num_masks > 0, "num_masks must be a finite number > 0; got ",
                    num_masks);
  TermWeights tw;
  for (size_t i = 0; i < terms.size(); ++i) {
    const int64_t k = terms[i];
    TORCH_CHECK_VALUE(k >= 0 && k < kTerms, "a term must be 0 (dice), 1 (soft_iou), 2 (bce) or 3 (focal); got ", k);
    TORCH_CHECK_VALUE(!tw.want[k], "term ", k, " is given twice");
    TORCH_CHECK_VALUE(std::isfinite(weights[i]), "loss weights must be finite; got ", weights[i], " for term ", k);
    tw.want[k] = true;
    tw.weight[k] = weights[i];
  }
  tw.num_masks = num_masks;
  return tw;
}

// Term k of one mask from its statistics s = [pt, p, t, bce, focal, n].
template <typename T>
C10_HOST_DEVICE inline T mask_term(int k, const T* s) {
  const T pt = s[0], p = s[1], t = s[2], n = s[5] > T(1) ? s[5] : T(1);
  switch (k) {
    case 0: return T(1) - (T(2) * pt + T(1)) / (p + t + T(1));
    case 1: return T(1) - (pt + T(1)) / (p + t - pt + T(1));
    case 2: return s[3] / n;
    default: return s[4] / n;
  }
}

// gs[0..4] = d(sum_k c[k] * term_k) / d(sums) of one mask (sum t does not depend on the logits).
template <typename T>
C10_HOST_DEVICE inline void mask_term_grad(const T* c, const T* s, T* gs) {
  const T pt = s[0], p = s[1], t = s[2], n = s[5] > T(1) ? s[5] : T(1);
  const T d = p + t + T(1), u = p + t - pt + T(1);
  gs[0] = -c[0] * T(2) / d - c[1] * (u + pt + T(1)) / (u * u);
  gs[1] = c[0] * (T(2) * pt + T(1)) / (d * d) + c[1] * (pt + T(1)) / (u * u);
  gs[2] = T(0);
  gs[3] = c[2] / n;
  gs[4] = c[3] / n;
}

// The backward's per-term coefficients: c[k] = (grad_loss * weight[k] + grad_values[k]) / num_masks.
template <typename T>
C10_HOST_DEVICE inline void term_coefficients(const TermWeights& tw, T grad_loss, const T* grad_values, T* c) {
  for (int k = 0; k < kTerms; ++k)
    c[k] = tw.want[k] ? (grad_loss * static_cast<T>(tw.weight[k]) + grad_values[k]) / static_cast<T>(tw.num_masks)
                      : T(0);
}

inline void check_loss_grads(const at::Tensor& grad_loss, const at::Tensor& grad_values, const at::Tensor& stats,
                             const at::Tensor& logits) {
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, "grad_loss must hold one value; got ", grad_loss.sizes());
  TORCH_CHECK_VALUE(grad_values.dim() == 1 && grad_values.size(0) == kTerms, "grad_values must have shape (", kTerms,
                    "); got ", grad_values.sizes());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == logits.size(0) && stats.size(1) == kStats,
                    "stats must have shape (", logits.size(0), ", ", kStats, "); got ", stats.sizes());
  for (const at::Tensor* x : {&grad_loss, &grad_values, &stats}) {
    TORCH_CHECK_TYPE(at::isFloatingType(x->scalar_type()), "gradients and stats must be floating point; got ",
                     x->scalar_type());
    TORCH_CHECK_VALUE(x->device() == logits.device(), "gradients and stats must be on the device of logits (",
                      logits.device(), "); got ", x->device());
  }
}

inline void check_postprocess(const at::Tensor& logits, int64_t in_h, int64_t in_w, int64_t crop_h,
                              int64_t crop_w, int64_t out_h, int64_t out_w, double threshold) {
  TORCH_CHECK_VALUE(logits.dim() == 3 && logits.size(1) > 0 && logits.size(2) > 0,
                    "logits must have shape (B, h, w) with h, w >= 1; got ", logits.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(logits.scalar_type()), "logits must be floating point; got ",
                   logits.scalar_type());
  TORCH_CHECK_VALUE(in_h > 0 && in_w > 0, "input size must be positive; got ", in_h, "x", in_w);
  TORCH_CHECK_VALUE(crop_h > 0 && crop_w > 0 && crop_h <= in_h && crop_w <= in_w, "crop ", crop_h, "x",
                    crop_w, " must be positive and fit the ", in_h, "x", in_w, " input");
  TORCH_CHECK_VALUE(out_h > 0 && out_w > 0, "output size must be positive; got ", out_h, "x", out_w);
  int64_t hw = 0, total = 0;
  TORCH_CHECK_VALUE(!c10::mul_overflows(out_h, out_w, &hw) && !c10::mul_overflows(hw, logits.size(0), &total),
                    "output size ", logits.size(0), " x ", out_h, " x ", out_w, " overflows int64");
  TORCH_CHECK_VALUE(!c10::mul_overflows(in_h, in_w, &hw), "input size ", in_h, " x ", in_w, " overflows int64");
  TORCH_CHECK_VALUE(std::isfinite(threshold), "threshold must be finite; got ", threshold);
}

}  // namespace mask_loss
}  // namespace ssrvg
