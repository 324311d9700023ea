// CPU kernels of the fused upsampled mask loss and of the fused inference path (mask_loss.h).
//
// Forward: per (mask, output row) the five sums are accumulated in double, then rows are added in
// a fixed order (bit-identical whatever the thread count). Backward, without atomics and without
// any float H x W buffer: per band of low-res rows of a mask, dL/dz of the output rows that read
// the band is gathered along x into a thread-local buffer, then each low-res logit of the band
// gathers it along y.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "cpu_simd.h"
#include "mask_loss.h"

namespace ssrvg {
namespace mask_loss {
namespace {

// Vectorisable float exp (x <= 0) and log1p (0 <= x <= 1): branch-free polynomials with relative
// error below 2e-7, so that GCC turns the row loops below into SIMD code. double uses libm.
struct FastMath {
  SSRVG_INLINE static float exp(float x) {
    x = x < -87.0f ? -87.0f : x;
    const float n = static_cast<float>(static_cast<int>(x * 1.44269504f - 0.5f));  // round, x <= 0
    const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int bits = (static_cast<int>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
  }
  SSRVG_INLINE static float log1p(float x) {  // 2 atanh(s), s = x / (2 + x) in [0, 1/3]
    const float s = x / (2.0f + x), s2 = s * s;
    float p = 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    return 2.0f * s * (p * s2 + 1.0f);
  }
  static inline float pow(float x, float y) { return std::pow(x, y); }
  static inline double exp(double x) { return std::exp(x); }
  static inline double log1p(double x) { return std::log1p(x); }
  static inline double pow(double x, double y) { return std::pow(x, y); }
};

template <typename T>
std::vector<Lerp<T>> taps(int64_t in, int64_t out) {
  std::vector<Lerp<T>> t(out);
  const T scale = static_cast<T>(in) / static_cast<T>(out);
  for (int64_t d = 0; d < out; ++d) t[d] = source_index<T>(d, scale, in);
  return t;
}

// Transposed taps in CSR form: for input index i, the output indices that read it and the weights.
template <typename T>
struct Gather {
  std::vector<int64_t> start, index;
  std::vector<T> weight;
  Gather(const std::vector<Lerp<T>>& taps, int64_t in) : start(in + 1, 0) {
    const int64_t out = static_cast<int64_t>(taps.size());
    const T scale = out > 0 ? static_cast<T>(in) / static_cast<T>(out) : T(1);
    for (int64_t i = 0; i < in; ++i) {
      int64_t first, last;
      output_range<T>(i, scale, in, out, &first, &last);
      for (int64_t d = first; d <= last; ++d) {
        index.push_back(d);
        weight.push_back(tap_weight(taps[d], i));
      }
      start[i + 1] = static_cast<int64_t>(index.size());
    }
  }
};

// Row buffers of one thread.
template <typename T>
struct RowScratch {
  std::vector<T> r, z, t, v, out[kSums];
  RowScratch(int64_t w, int64_t W) : r(w), z(W), t(W), v(W) {
    for (auto& o : out) o.resize(W);
  }
};

// Column taps as separate arrays, so the horizontal pass vectorises (gathers on AVX2).
template <typename T>
struct XTaps {
  std::vector<int32_t> i0, i1;
  std::vector<T> l1;
  explicit XTaps(const std::vector<Lerp<T>>& t) {
    for (const auto& l : t) {
      i0.push_back(static_cast<int32_t>(l.i0));
      i1.push_back(static_cast<int32_t>(l.i1));
      l1.push_back(l.l1);
    }
  }
  int64_t size() const { return static_cast<int64_t>(l1.size()); }
};

// z of output row Y: vertical interpolation of the two low-res rows, then horizontal.
template <typename T>
SSRVG_INLINE void upsample_row(const T* v, int64_t w, const Lerp<T>& ly, const XTaps<T>& tx, T* __restrict__ r,
                         T* __restrict__ z) {
  const T* a = v + ly.i0 * w;
  const T* b = v + ly.i1 * w;
  const T h0 = T(1) - ly.l1, h1 = ly.l1;
  for (int64_t j = 0; j < w; ++j) r[j] = h0 * a[j] + h1 * b[j];
  const int32_t* __restrict__ i0 = tx.i0.data();
  const int32_t* __restrict__ i1 = tx.i1.data();
  const T* __restrict__ l1 = tx.l1.data();
  const int64_t W = tx.size();
  for (int64_t X = 0; X < W; ++X) z[X] = (T(1) - l1[X]) * r[i0[X]] + l1[X] * r[i1[X]];
}

template <typename T>
SSRVG_INLINE void load_row(const uint8_t* src, int64_t W, T* dst) {
  for (int64_t X = 0; X < W; ++X) dst[X] = src[X] ? T(1) : T(0);
}

template <int G, typename T>
SSRVG_INLINE void row_terms_impl(const T* __restrict__ z, const T* __restrict__ t, const T* __restrict__ v, int64_t W, T alpha,
                           T gamma, T* __restrict__ pt, T* __restrict__ p, T* __restrict__ tt, T* __restrict__ bce,
                           T* __restrict__ fo) {
  for (int64_t X = 0; X < W; ++X) {
    const Pixel<G, FastMath, T> px(z[X], t[X]);
    pt[X] = px.p * t[X] * v[X];
    p[X] = px.p * v[X];
    tt[X] = t[X] * v[X];
    bce[X] = px.bce * v[X];
    fo[X] = G == kNoFocal ? T(0) : px.focal(t[X], alpha, gamma) * v[X];
  }
}

template <int G, typename T>
SSRVG_INLINE void row_terms(const T* z, const T* t, const T* v, int64_t W, T alpha, T gamma, RowScratch<T>& s) {
  row_terms_impl<G>(z, t, v, W, alpha, gamma, s.out[0].data(), s.out[1].data(), s.out[2].data(), s.out[3].data(),
                    s.out[4].data());
}

template <int G, typename T>
SSRVG_INLINE void row_grad(const T* __restrict__ z, const T* __restrict__ t, const T* __restrict__ v, int64_t W,
                     const T* __restrict__ g, T alpha, T gamma, T* __restrict__ gz) {
  for (int64_t X = 0; X < W; ++X) gz[X] = Pixel<G, FastMath, T>(z[X], t[X]).dz(t[X], g, alpha, gamma) * v[X];
}

// One output row, forward: its five sums and its number of valid pixels (kStats). Backward: dL/dz of
// its pixels into gz.
template <int G, typename T>
SSRVG_INLINE void forward_row(const T* v, int64_t w, const Lerp<T>& ly, const XTaps<T>& tx, const uint8_t* trow,
                        const uint8_t* vrow, T alpha, T gamma, RowScratch<T>& sc, double* sums) {
  const int64_t W = tx.size();
  upsample_row(v, w, ly, tx, sc.r.data(), sc.z.data());
  load_row(trow, W, sc.t.data());
  if (vrow) load_row(vrow, W, sc.v.data());
  row_terms<G>(sc.z.data(), sc.t.data(), sc.v.data(), W, alpha, gamma, sc);
  for (int k = 0; k < kSums; ++k) sums[k] = sum8(sc.out[k].data(), W);
  sums[kSums] = vrow ? sum8(sc.v.data(), W) : static_cast<double>(W);
}

template <int G, typename T>
SSRVG_INLINE void backward_row(const T* v, int64_t w, const Lerp<T>& ly, const XTaps<T>& tx, const uint8_t* trow,
                         const uint8_t* vrow, const T* g, T alpha, T gamma, RowScratch<T>& sc, T* gz) {
  const int64_t W = tx.size();
  upsample_row(v, w, ly, tx, sc.r.data(), sc.z.data());
  load_row(trow, W, sc.t.data());
  if (vrow) load_row(vrow, W, sc.v.data());
  row_grad<G>(sc.z.data(), sc.t.data(), sc.v.data(), W, g, alpha, gamma, gz);
}

// Non-template entry points: the float rows get AVX2 clones; double (gradcheck) stays generic.
#define SSRVG_GAMMA_SWITCH(gk, CALL) \
  if (gk == kGammaTwo) CALL(kGammaTwo); else if (gk == kGammaZero) CALL(kGammaZero); else CALL(kGammaAny);

// focal = false: the focal sum is left 0 (not asked for), and not computed.
SSRVG_CLONES void forward_row_any(int gk, bool focal, const float* v, int64_t w, const Lerp<float>& ly,
                                  const XTaps<float>& tx, const uint8_t* trow, const uint8_t* vrow, float a, float gm,
                                  RowScratch<float>& sc, double* sums) {
#define CALL(G) forward_row<G>(v, w, ly, tx, trow, vrow, a, gm, sc, sums)
  if (!focal) {
    CALL(kNoFocal);
    return;
  }
  SSRVG_GAMMA_SWITCH(gk, CALL)
#undef CALL
}
SSRVG_CLONES void backward_row_any(int gk, const float* v, int64_t w, const Lerp<float>& ly, const XTaps<float>& tx,
                                   const uint8_t* trow, const uint8_t* vrow, const float* g, float a, float gm,
                                   RowScratch<float>& sc, float* gz) {
#define CALL(G) backward_row<G>(v, w, ly, tx, trow, vrow, g, a, gm, sc, gz)
  if (g[4] == 0) {
    CALL(kNoFocal);
    return;
  }
  SSRVG_GAMMA_SWITCH(gk, CALL)
#undef CALL
}
void forward_row_any(int, bool focal, const double* v, int64_t w, const Lerp<double>& ly, const XTaps<double>& tx,
                     const uint8_t* trow, const uint8_t* vrow, double a, double gm, RowScratch<double>& sc,
                     double* sums) {
  if (focal) forward_row<kGammaAny>(v, w, ly, tx, trow, vrow, a, gm, sc, sums);
  else forward_row<kNoFocal>(v, w, ly, tx, trow, vrow, a, gm, sc, sums);
}
void backward_row_any(int, const double* v, int64_t w, const Lerp<double>& ly, const XTaps<double>& tx,
                      const uint8_t* trow, const uint8_t* vrow, const double* g, double a, double gm,
                      RowScratch<double>& sc, double* gz) {
  backward_row<kGammaAny>(v, w, ly, tx, trow, vrow, g, a, gm, sc, gz);
}

// Per-mask statistics (B, kStats) in double: the five sums over valid pixels and the number of valid
// pixels. Rows are added in a fixed order (bit-identical whatever the thread count).
at::Tensor stats_cpu(const LossInputs& in, double alpha, double gamma, bool focal) {
  const at::Tensor& logits = in.logits;
  const int64_t B = in.B, h = in.h, w = in.w, H = in.H, W = in.W;
  const int gk = gamma_kind(gamma);
  at::Tensor stats = at::zeros({B, kStats}, logits.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "upsampled_mask_stats_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    // Upcast the (small) low-res logits once so the row loops read opmath values.
    const at::Tensor lo = logits.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const T* lg = lo.data_ptr<T>();
    const uint8_t* tg = in.target_data();
    const uint8_t* vd = in.valid_data();
    const auto ty = taps<T>(h, H);
    const XTaps<T> tx(taps<T>(w, W));
    std::vector<double> rows(B * H * kStats);
    at::parallel_for(0, B * H, 4, [&](int64_t s, int64_t e) {
      RowScratch<T> sc(w, W);
      if (!vd) std::fill(sc.v.begin(), sc.v.end(), T(1));
      for (int64_t r = s; r < e; ++r) {
        const int64_t b = r / H, Y = r % H;
        forward_row_any(gk, focal, lg + b * h * w, w, ty[Y], tx, tg + r * W, vd ? vd + r * W : nullptr, T(alpha),
                        T(gamma), sc, rows.data() + r * kStats);
      }
    });
    double* o = stats.data_ptr<double>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t Y = 0; Y < H; ++Y)
        for (int k = 0; k < kStats; ++k) o[b * kStats + k] += rows[(b * H + Y) * kStats + k];
  });
  return stats;
}

at::Tensor sums_cpu(const at::Tensor& logits_in, const at::Tensor& targets_in,
                    const c10::optional<at::Tensor>& valid_in, double alpha, double gamma) {
  const LossInputs in(logits_in, targets_in, valid_in, alpha, gamma);
  const at::Tensor stats = stats_cpu(in, alpha, gamma, /*focal=*/true);
  return stats.narrow(1, 0, kSums).to(in.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
}

// The whole loss: (loss, values (kTerms,), stats (B, kStats)); terms not asked for are 0.
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_cpu(const at::Tensor& logits_in, const at::Tensor& targets_in,
                                                        const c10::optional<at::Tensor>& valid_in,
                                                        at::IntArrayRef terms, at::ArrayRef<double> weights,
                                                        double alpha, double gamma, double num_masks) {
  const LossInputs in(logits_in, targets_in, valid_in, alpha, gamma);
  const TermWeights tw = check_terms(terms, weights, num_masks);
  const at::Tensor stats = stats_cpu(in, alpha, gamma, tw.focal());
  const double* st = stats.data_ptr<double>();
  double values[kTerms] = {0, 0, 0, 0}, loss = 0;
  for (int k = 0; k < kTerms; ++k) {
    if (!tw.want[k]) continue;
    for (int64_t b = 0; b < in.B; ++b) values[k] += mask_term<double>(k, st + b * kStats);
    values[k] /= num_masks;
    loss += tw.weight[k] * values[k];
  }
  const auto dtype = in.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = in.logits.options().dtype(at::kDouble);
  at::Tensor vals = at::empty({kTerms}, opts);
  std::copy(values, values + kTerms, vals.data_ptr<double>());
  at::Tensor l = at::empty({}, opts);
  *l.data_ptr<double>() = loss;
  return {l.to(dtype), vals.to(dtype), stats.to(dtype)};
}

at::Tensor sums_backward_cpu(const at::Tensor& grad_in, const at::Tensor& logits_in,
                             const at::Tensor& targets_in, const c10::optional<at::Tensor>& valid_in,
                             double alpha, double gamma) {
  const LossInputs in(logits_in, targets_in, valid_in, alpha, gamma);
  const at::Tensor& logits = in.logits;
  const int64_t B = in.B, h = in.h, w = in.w, H = in.H, W = in.W;
  in.check_grad(grad_in);
  const int gk = gamma_kind(gamma);
  at::Tensor grad_logits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "upsampled_mask_sums_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr auto kT = c10::CppTypeToScalarType<T>::value;
    const at::Tensor lo = logits.to(kT).contiguous(), gr = grad_in.to(kT).contiguous();
    const T* lg = lo.data_ptr<T>();
    const T* gs = gr.data_ptr<T>();
    const uint8_t* tg = in.target_data();
    const uint8_t* vd = in.valid_data();
    const auto ty = taps<T>(h, H), tx_lerp = taps<T>(w, W);
    const XTaps<T> tx(tx_lerp);
    const Gather<T> gy(ty, h), gx(tx_lerp, w);
    // A task is a band of low-res rows [i0, i1) of one mask: it computes dL/dz of the output rows that
    // read the band, gathered along x (a thread-local (rows, w) buffer: nothing of size B x H x w), then
    // gathers them along y into the band. Rows at a band's edges are computed by both neighbours; every
    // low-res row is written by one task, in the same order as a whole-image pass (deterministic).
    const int64_t band = std::max<int64_t>(4, std::min<int64_t>(h, (32 * h + H - 1) / H));  // ~32 output rows
    const int64_t bands = (h + band - 1) / band;
    at::Tensor gl = at::empty({B, h, w}, lo.options());
    T* gp = gl.data_ptr<T>();
    at::parallel_for(0, B * bands, 1, [&](int64_t s, int64_t e) {
      RowScratch<T> sc(w, W);
      T* gz = sc.out[0].data();
      if (!vd) std::fill(sc.v.begin(), sc.v.end(), T(1));
      std::vector<T> rows;
      for (int64_t task = s; task < e; ++task) {
        const int64_t b = task / bands, i0 = (task % bands) * band, i1 = std::min(h, i0 + band);
        int64_t y0 = H, y1 = -1;  // the output rows that read the band
        for (int64_t i = i0; i < i1; ++i) {
          if (gy.start[i] == gy.start[i + 1]) continue;  // (downsampling: a row nobody reads)
          y0 = std::min(y0, gy.index[gy.start[i]]);
          y1 = std::max(y1, gy.index[gy.start[i + 1] - 1]);
        }
        rows.resize(std::max<int64_t>(0, y1 - y0 + 1) * w);
        for (int64_t Y = y0; Y <= y1; ++Y) {
          const int64_t r = b * H + Y;
          backward_row_any(gk, lg + b * h * w, w, ty[Y], tx, tg + r * W, vd ? vd + r * W : nullptr, gs + b * kSums,
                           T(alpha), T(gamma), sc, gz);
          T* out = rows.data() + (Y - y0) * w;
          for (int64_t j = 0; j < w; ++j) {
            T acc = 0;
            for (int64_t k = gx.start[j]; k < gx.start[j + 1]; ++k) acc += gx.weight[k] * gz[gx.index[k]];
            out[j] = acc;
          }
        }
        for (int64_t i = i0; i < i1; ++i) {
          T* dst = gp + (b * h + i) * w;
          std::fill(dst, dst + w, T(0));
          for (int64_t k = gy.start[i]; k < gy.start[i + 1]; ++k) {
            const T wy = gy.weight[k];
            const T* src = rows.data() + (gy.index[k] - y0) * w;
            for (int64_t j = 0; j < w; ++j) dst[j] += wy * src[j];
          }
        }
      }
    });
    grad_logits = gl.to(logits.scalar_type());
  });
  return grad_logits;
}

at::Tensor loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& grad_values, const at::Tensor& stats,
                             const at::Tensor& logits, const at::Tensor& targets,
                             const c10::optional<at::Tensor>& valid, at::IntArrayRef terms,
                             at::ArrayRef<double> weights, double alpha, double gamma, double num_masks) {
  check_inputs(logits, targets, valid);
  const TermWeights tw = check_terms(terms, weights, num_masks);
  check_loss_grads(grad_loss, grad_values, stats, logits);
  const int64_t B = logits.size(0);
  const at::Tensor gv = grad_values.to(at::kDouble).contiguous(), st = stats.to(at::kDouble).contiguous();
  double c[kTerms];
  term_coefficients<double>(tw, grad_loss.to(at::kDouble).item<double>(), gv.data_ptr<double>(), c);
  at::Tensor g = at::empty({B, kSums}, logits.options().dtype(at::kDouble));
  double* gp = g.data_ptr<double>();
  const double* sp = st.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) mask_term_grad<double>(c, sp + b * kStats, gp + b * kSums);
  return sums_backward_cpu(g, logits, targets, valid, alpha, gamma);
}

// Inference: logits (B, h, w) over a padded (in_h, in_w) input -> upsample to the input, crop the
// valid top-left (crop_h, crop_w), resize to (out_h, out_w), threshold -- one pass, no buffers.
at::Tensor postprocess_cpu(const at::Tensor& logits_in, int64_t in_h, int64_t in_w, int64_t crop_h,
                           int64_t crop_w, int64_t out_h, int64_t out_w, double threshold) {
  check_postprocess(logits_in, in_h, in_w, crop_h, crop_w, out_h, out_w, threshold);
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
          const T z = resize_of_upsample(v, w, ly, lx, t1y[ly.i0], t1y[ly.i1], t1x[lx.i0], t1x[lx.i1]);
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
  m.impl("upsampled_mask_loss", &loss_cpu);
  m.impl("upsampled_mask_loss_backward", &loss_backward_cpu);
  m.impl("mask_postprocess", &postprocess_cpu);
}

}  // namespace mask_loss
}  // namespace ssrvg
