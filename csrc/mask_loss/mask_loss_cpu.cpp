// CPU kernels of the fused upsampled mask loss and of the fused inference path (mask_loss.h).
//
// Forward: per (mask, output row) the five sums are accumulated in double, then rows are added in
// a fixed order (bit-identical whatever the thread count). Backward, without atomics and without
// any float H x W buffer: per output row, dL/dz is gathered along x into R (B, H, w); then each
// low-res logit gathers R along y over the rows that read it.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "mask_loss.h"

namespace ssrvg {
namespace mask_loss {
namespace {

template <typename T>
std::vector<Lerp<T>> taps(int64_t in, int64_t out) {
  std::vector<Lerp<T>> t(out);
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  for (int64_t d = 0; d < out; ++d) t[d] = source_index<T>(d, scale, in);
  return t;
}

template <typename T>
std::vector<int64_t> ranges(int64_t in, int64_t out) {  // (first, last) per input index
  std::vector<int64_t> r(2 * in);
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  for (int64_t i = 0; i < in; ++i) output_range<T>(i, scale, in, out, &r[2 * i], &r[2 * i + 1]);
  return r;
}

template <typename T>
inline T interp(const T* v, int64_t w, const Lerp<T>& ly, const Lerp<T>& lx) {
  const T hy0 = static_cast<T>(1) - ly.l1, hx0 = static_cast<T>(1) - lx.l1;
  return hy0 * (hx0 * v[ly.i0 * w + lx.i0] + lx.l1 * v[ly.i0 * w + lx.i1]) +
         ly.l1 * (hx0 * v[ly.i1 * w + lx.i0] + lx.l1 * v[ly.i1 * w + lx.i1]);
}

at::Tensor sums_cpu(const at::Tensor& logits_in, const at::Tensor& targets_in,
                    const c10::optional<at::Tensor>& valid_in, double alpha, double gamma) {
  check_inputs(logits_in, targets_in, valid_in);
  const at::Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const at::Tensor valid = valid_in.has_value() ? valid_in->contiguous() : at::Tensor();
  const int64_t B = logits.size(0), h = logits.size(1), w = logits.size(2);
  const int64_t H = targets.size(1), W = targets.size(2);
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "upsampled_mask_sums_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    // Upcast the (small) low-res logits once so the inner loop reads opmath values.
    const at::Tensor lo = logits.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const T* lg = lo.data_ptr<T>();
    const uint8_t* tg = static_cast<const uint8_t*>(targets.data_ptr());
    const uint8_t* vd = valid.defined() ? static_cast<const uint8_t*>(valid.data_ptr()) : nullptr;
    const auto ty = taps<T>(h, H), tx = taps<T>(w, W);
    std::vector<double> rows(B * H * kSums);
    const T a = static_cast<T>(alpha), g = static_cast<T>(gamma);
    at::parallel_for(0, B * H, 8, [&](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        const int64_t b = r / H, Y = r % H;
        const T* v = lg + b * h * w;
        const uint8_t* trow = tg + (b * H + Y) * W;
        const uint8_t* vrow = vd ? vd + (b * H + Y) * W : nullptr;
        double acc[kSums] = {0, 0, 0, 0, 0};
        for (int64_t X = 0; X < W; ++X) {
          if (vrow && !vrow[X]) continue;
          const T z = interp(v, w, ty[Y], tx[X]);
          const T t = trow[X] ? 1 : 0;
          const T p = sigmoid(z);
          acc[0] += p * t;
          acc[1] += p;
          acc[2] += t;
          acc[3] += bce(z, t);
          acc[4] += focal(z, p, t, a, g);
        }
        for (int k = 0; k < kSums; ++k) rows[r * kSums + k] = acc[k];
      }
    });
    at::Tensor sums = at::zeros({B, kSums}, logits.options().dtype(at::kDouble));
    double* o = sums.data_ptr<double>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t Y = 0; Y < H; ++Y)
        for (int k = 0; k < kSums; ++k) o[b * kSums + k] += rows[(b * H + Y) * kSums + k];
    out = sums.to(logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  });
  return out;
}

at::Tensor sums_backward_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in,
                             const at::Tensor& targets_in, const c10::optional<at::Tensor>& valid_in,
                             double alpha, double gamma) {
  check_inputs(logits_in, targets_in, valid_in);
  const at::Tensor logits = logits_in.contiguous(), targets = targets_in.contiguous();
  const at::Tensor valid = valid_in.has_value() ? valid_in->contiguous() : at::Tensor();
  const int64_t B = logits.size(0), h = logits.size(1), w = logits.size(2);
  const int64_t H = targets.size(1), W = targets.size(2);
  TORCH_CHECK_VALUE(grad_in.dim() == 2 && grad_in.size(0) == B && grad_in.size(1) == kSums,
                    "grad must have shape (", B, ", ", kSums, "); got ", grad_in.sizes());
  at::Tensor grad_logits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "upsampled_mask_sums_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr auto kT = c10::CppTypeToScalarType<T>::value;
    const at::Tensor lo = logits.to(kT).contiguous(), gr = grad_in.to(kT).contiguous();
    const T* lg = lo.data_ptr<T>();
    const T* gs = gr.data_ptr<T>();
    const uint8_t* tg = static_cast<const uint8_t*>(targets.data_ptr());
    const uint8_t* vd = valid.defined() ? static_cast<const uint8_t*>(valid.data_ptr()) : nullptr;
    const auto ty = taps<T>(h, H), tx = taps<T>(w, W);
    const auto ry = ranges<T>(h, H), rx = ranges<T>(w, W);
    const T a = static_cast<T>(alpha), g = static_cast<T>(gamma);
    at::Tensor R = at::empty({B, H, w}, lo.options());  // dL/dz gathered along x: H x w, not H x W
    T* rp = R.data_ptr<T>();
    at::parallel_for(0, B * H, 8, [&](int64_t s, int64_t e) {
      std::vector<T> gz(W);
      for (int64_t r = s; r < e; ++r) {
        const int64_t b = r / H, Y = r % H;
        const T* v = lg + b * h * w;
        const uint8_t* trow = tg + (b * H + Y) * W;
        const uint8_t* vrow = vd ? vd + (b * H + Y) * W : nullptr;
        for (int64_t X = 0; X < W; ++X) {
          gz[X] = (vrow && !vrow[X]) ? T(0)
                                     : dsums_dz(interp(v, w, ty[Y], tx[X]), T(trow[X] ? 1 : 0), gs + b * kSums, a, g);
        }
        T* out = rp + r * w;
        for (int64_t j = 0; j < w; ++j) {
          T acc = 0;
          for (int64_t X = rx[2 * j]; X <= rx[2 * j + 1]; ++X) acc += tap_weight(tx[X], j) * gz[X];
          out[j] = acc;
        }
      }
    });
    at::Tensor gl = at::empty({B, h, w}, lo.options());
    T* gp = gl.data_ptr<T>();
    at::parallel_for(0, B * h, 8, [&](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        const int64_t b = r / h, i = r % h;
        for (int64_t j = 0; j < w; ++j) gp[r * w + j] = 0;
        for (int64_t Y = ry[2 * i]; Y <= ry[2 * i + 1]; ++Y) {
          const T wy = tap_weight(ty[Y], i);
          const T* rrow = rp + (b * H + Y) * w;
          for (int64_t j = 0; j < w; ++j) gp[r * w + j] += wy * rrow[j];
        }
      }
    });
    grad_logits = gl.to(logits.scalar_type());
  });
  return grad_logits;
}

// Inference: logits (B, h, w) over a padded (in_h, in_w) input -> upsample to the input, crop the
// valid top-left (crop_h, crop_w), resize to (out_h, out_w), threshold -- one pass, no buffers.
at::Tensor postprocess_cpu(const at::Tensor& logits_in, int64_t in_h, int64_t in_w, int64_t crop_h,
                           int64_t crop_w, int64_t out_h, int64_t out_w, double threshold) {
  check_postprocess(logits_in, in_h, in_w, crop_h, crop_w, out_h, out_w);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), h = logits.size(1), w = logits.size(2);
  at::Tensor out = at::empty({B, out_h, out_w}, logits.options().dtype(at::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "mask_postprocess_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor lo = logits.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const T* lg = lo.data_ptr<T>();
    const auto t1y = taps<T>(h, in_h), t1x = taps<T>(w, in_w);        // low-res -> input
    const auto t2y = taps<T>(crop_h, out_h), t2x = taps<T>(crop_w, out_w);  // crop -> output
    const T thr = static_cast<T>(threshold);
    at::parallel_for(0, B * out_h, 8, [&](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        const int64_t b = r / out_h, Y = r % out_h;
        const T* v = lg + b * h * w;
        const Lerp<T>& ly = t2y[Y];
        for (int64_t X = 0; X < out_w; ++X) {
          const Lerp<T>& lx = t2x[X];
          const T z00 = interp(v, w, t1y[ly.i0], t1x[lx.i0]), z01 = interp(v, w, t1y[ly.i0], t1x[lx.i1]);
          const T z10 = interp(v, w, t1y[ly.i1], t1x[lx.i0]), z11 = interp(v, w, t1y[ly.i1], t1x[lx.i1]);
          const T hy0 = static_cast<T>(1) - ly.l1, hx0 = static_cast<T>(1) - lx.l1;
          const T z = hy0 * (hx0 * z00 + lx.l1 * z01) + ly.l1 * (hx0 * z10 + lx.l1 * z11);
          o[r * out_w + X] = z > thr ? 1 : 0;
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, CPU, m) {
  m.impl("upsampled_mask_sums", &sums_cpu);
  m.impl("upsampled_mask_sums_backward", &sums_backward_cpu);
  m.impl("mask_postprocess", &postprocess_cpu);
}

}  // namespace mask_loss
}  // namespace ssrvg
