// CPU kernels of multi-scale deformable attention (ms_deform_attn.h).
//
// Work is split over (batch, head) pairs: grad_value[n, :, m, :] only receives contributions from
// queries of batch n and head m, so each task owns its slice of grad_value outright. The backward
// needs no atomics and no per-thread copies, and is bit-identical whatever the thread count.
// A task copies its value slice into a compact buffer (and accumulates its gradient there) only when
// its queries read about as many rows as the slice has (the encoder: every pixel is a query); with
// few queries (the decoder: 32 queries on maps of thousands of pixels) the copy would cost more than
// the sampling, so the task reads value and writes grad_value in place, rows M*D apart. Both orders
// of arithmetic are the same: the results are bit-identical either way.
// The sampling math is done once per (query, head, level, point) and shared by the D channels,
// whose loops are contiguous and vectorise. float16/bfloat16 inputs are computed in float32.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <vector>

#include "cpu_simd.h"
#include "ms_deform_attn.h"

namespace ssrvg {
namespace msda {
namespace {

struct Dims {
  int64_t N, S, M, D, Lq, L, P;
};

Dims dims_of(const at::Tensor& value, const at::Tensor& loc) {
  return {value.size(0), value.size(1), value.size(2), value.size(3), loc.size(1), loc.size(3), loc.size(4)};
}

// value[n, :, m, :] into a contiguous (S, D) buffer: the samples of one (batch, head) then hit a
// compact working set instead of rows M*D apart.
template <typename V>
void copy_slice(const V* value, const Dims& d, int64_t n, int64_t m, V* out) {
  for (int64_t r = 0; r < d.S; ++r) {
    const V* src = value + ((n * d.S + r) * d.M + m) * d.D;
    std::copy(src, src + d.D, out + r * d.D);
  }
}

// Whether a task copies its slice: when its samples' corner reads (4 per sample) reach the slice's rows.
bool copies_slice(const Dims& d) { return 4 * d.Lq * d.L * d.P >= d.S; }

// Reading value in place, the rows a query samples are scattered over the whole tensor and each
// read is a cache miss: before a query is computed, the rows of the next one are requested
// (software prefetch of every corner row), so that its misses overlap this query's work.
template <typename T, typename V>
inline void prefetch_query(const V* rows, int64_t rs, const T* loc, const std::vector<int64_t>& lv, const Dims& d,
                           int64_t qm) {
#if defined(__GNUC__)
  for (int64_t l = 0; l < d.L; ++l) {
    const int64_t H = lv[3 * l], W = lv[3 * l + 1];
    const V* vbase = rows + lv[3 * l + 2] * rs;
    for (int64_t p = 0; p < d.P; ++p) {
      const int64_t sidx = (qm * d.L + l) * d.P + p;
      const Corners<T> c(loc[2 * sidx], loc[2 * sidx + 1], H, W);
      for (int k = 0; k < 4; ++k) {
        if (!c.inside(k, H, W)) continue;
        const V* v = vbase + c.offset(k, W) * rs;
        for (int64_t b = 0; b < d.D * static_cast<int64_t>(sizeof(V)); b += 64) __builtin_prefetch(reinterpret_cast<const char*>(v) + b);
      }
    }
  }
#endif
}

// T: the math type (float, double); V: value's storage (T, or bfloat16 / half read as they are and
// widened sample by sample: no float copy of the whole value).
template <typename T, typename V = T>
void forward_kernel(const V* value, const T* loc, const T* attn, const std::vector<int64_t>& lv, const Dims& d, T* out) {
  const bool copy = copies_slice(d);
  const int64_t rs = copy ? d.D : d.M * d.D;  // distance between the rows the task reads
  at::parallel_for(0, d.N * d.M, 1, [&](int64_t s, int64_t e) {
    std::vector<T> acc(d.D);
    std::vector<V> slice(copy ? d.S * d.D : 0);
    for (int64_t task = s; task < e; ++task) {
      const int64_t n = task / d.M, m = task % d.M;
      const V* rows = value + (n * d.S * d.M + m) * d.D;  // row r of value[n, :, m, :] at rows + r * M * D
      if (copy) {
        copy_slice(value, d, n, m, slice.data());
        rows = slice.data();
      }
      if (!copy && d.Lq > 0) prefetch_query(rows, rs, loc, lv, d, n * d.Lq * d.M + m);
      for (int64_t q = 0; q < d.Lq; ++q) {
        std::fill(acc.begin(), acc.end(), T(0));
        const int64_t qm = (n * d.Lq + q) * d.M + m;  // index of (n, q, m)
        if (!copy && q + 1 < d.Lq) prefetch_query(rows, rs, loc, lv, d, qm + d.M);
        for (int64_t l = 0; l < d.L; ++l) {
          const int64_t H = lv[3 * l], W = lv[3 * l + 1], start = lv[3 * l + 2];
          const V* vbase = rows + start * rs;
          for (int64_t p = 0; p < d.P; ++p) {
            const int64_t sidx = (qm * d.L + l) * d.P + p;
            const T a = attn[sidx];
            const Corners<T> c(loc[2 * sidx], loc[2 * sidx + 1], H, W);
            for (int k = 0; k < 4; ++k) {
              if (!c.inside(k, H, W)) continue;
              const T wgt = a * c.weight(k);
              const V* v = vbase + c.offset(k, W) * rs;
              T* __restrict__ o = acc.data();
              for (int64_t ch = 0; ch < d.D; ++ch) o[ch] += wgt * static_cast<T>(v[ch]);
            }
          }
        }
        std::copy(acc.begin(), acc.end(), out + qm * d.D);
      }
    }
  });
}

template <typename T, typename V = T>  // as forward_kernel; the value gradient is accumulated in T
void backward_kernel(const V* value, const T* loc, const T* attn, const T* grad_out, const std::vector<int64_t>& lv,
                     const Dims& d, T* grad_value, T* grad_loc, T* grad_attn) {
  const bool copy = copies_slice(d);
  const int64_t rs = copy ? d.D : d.M * d.D;
  at::parallel_for(0, d.N * d.M, 1, [&](int64_t s, int64_t e) {
    std::vector<V> slice(copy ? d.S * d.D : 0);
    std::vector<T> gslice(copy ? d.S * d.D : 0);
    for (int64_t task = s; task < e; ++task) {
      const int64_t n = task / d.M, m = task % d.M;
      const V* rows = value + (n * d.S * d.M + m) * d.D;
      T* grows = grad_value + (n * d.S * d.M + m) * d.D;  // zero-filled by the caller
      if (copy) {
        copy_slice(value, d, n, m, slice.data());
        std::fill(gslice.begin(), gslice.end(), T(0));
        rows = slice.data();
        grows = gslice.data();
      }
      if (!copy && d.Lq > 0) prefetch_query(rows, rs, loc, lv, d, n * d.Lq * d.M + m);
      for (int64_t q = 0; q < d.Lq; ++q) {
        const int64_t qm = (n * d.Lq + q) * d.M + m;
        const T* g = grad_out + qm * d.D;
        if (!copy && q + 1 < d.Lq) prefetch_query(rows, rs, loc, lv, d, qm + d.M);
        for (int64_t l = 0; l < d.L; ++l) {
          const int64_t H = lv[3 * l], W = lv[3 * l + 1], start = lv[3 * l + 2];
          const int64_t base = start * rs;
          for (int64_t p = 0; p < d.P; ++p) {
            const int64_t sidx = (qm * d.L + l) * d.P + p;
            const T a = attn[sidx];
            const Corners<T> c(loc[2 * sidx], loc[2 * sidx + 1], H, W);
            T g_attn = 0, g_x = 0, g_y = 0;
            for (int k = 0; k < 4; ++k) {
              if (!c.inside(k, H, W)) continue;
              const int64_t off = base + c.offset(k, W) * rs;
              const V* __restrict__ v = rows + off;
              T* __restrict__ gv = grows + off;
              const T wa = a * c.weight(k);
              const T dot = dot8(v, g, d.D);
              for (int64_t ch = 0; ch < d.D; ++ch) gv[ch] += wa * g[ch];
              g_attn += c.weight(k) * dot;
              g_x += c.dweight_dx(k) * dot;
              g_y += c.dweight_dy(k) * dot;
            }
            grad_attn[sidx] = g_attn;
            grad_loc[2 * sidx] = a * g_x * static_cast<T>(W);
            grad_loc[2 * sidx + 1] = a * g_y * static_cast<T>(H);
          }
        }
      }
      if (copy)  // this task owns grad_value[n, :, m, :]
        for (int64_t r = 0; r < d.S; ++r)
          std::copy(gslice.data() + r * d.D, gslice.data() + (r + 1) * d.D, grad_value + ((n * d.S + r) * d.M + m) * d.D);
    }
  });
}

// Non-template entry points: float gets AVX2 clones; double (gradcheck) stays generic.
SSRVG_CLONES void forward_f32(const float* value, const float* loc, const float* attn, const std::vector<int64_t>& lv,
                              const Dims& d, float* out) {
  forward_kernel<float>(value, loc, attn, lv, d, out);
}
void forward_any(const float* v, const float* l, const float* a, const std::vector<int64_t>& lv, const Dims& d,
                 float* o) {
  forward_f32(v, l, a, lv, d, o);
}
void forward_any(const double* v, const double* l, const double* a, const std::vector<int64_t>& lv, const Dims& d,
                 double* o) {
  forward_kernel<double>(v, l, a, lv, d, o);
}
SSRVG_CLONES void forward_bf16(const c10::BFloat16* value, const float* loc, const float* attn,
                               const std::vector<int64_t>& lv, const Dims& d, float* out) {
  forward_kernel<float, c10::BFloat16>(value, loc, attn, lv, d, out);
}
SSRVG_CLONES void forward_f16(const c10::Half* value, const float* loc, const float* attn,
                              const std::vector<int64_t>& lv, const Dims& d, float* out) {
  forward_kernel<float, c10::Half>(value, loc, attn, lv, d, out);
}
SSRVG_CLONES void backward_f32(const float* value, const float* loc, const float* attn, const float* grad_out,
                               const std::vector<int64_t>& lv, const Dims& d, float* gv, float* gl, float* ga) {
  backward_kernel<float>(value, loc, attn, grad_out, lv, d, gv, gl, ga);
}
void backward_any(const float* v, const float* l, const float* a, const float* g, const std::vector<int64_t>& lv,
                  const Dims& d, float* gv, float* gl, float* ga) {
  backward_f32(v, l, a, g, lv, d, gv, gl, ga);
}
void backward_any(const double* v, const double* l, const double* a, const double* g, const std::vector<int64_t>& lv,
                  const Dims& d, double* gv, double* gl, double* ga) {
  backward_kernel<double>(v, l, a, g, lv, d, gv, gl, ga);
}
SSRVG_CLONES void backward_bf16(const c10::BFloat16* v, const float* l, const float* a, const float* g,
                                const std::vector<int64_t>& lv, const Dims& d, float* gv, float* gl, float* ga) {
  backward_kernel<float, c10::BFloat16>(v, l, a, g, lv, d, gv, gl, ga);
}
SSRVG_CLONES void backward_f16(const c10::Half* v, const float* l, const float* a, const float* g,
                               const std::vector<int64_t>& lv, const Dims& d, float* gv, float* gl, float* ga) {
  backward_kernel<float, c10::Half>(v, l, a, g, lv, d, gv, gl, ga);
}

at::ScalarType math_type(const at::Tensor& value) {
  return value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor forward_cpu(const at::Tensor& value_in, const at::Tensor& shapes, const at::Tensor& starts,
                       const at::Tensor& loc_in, const at::Tensor& attn_in) {
  const std::vector<int64_t> lv = check_inputs(value_in, shapes, starts, loc_in, attn_in);
  const Dims d = dims_of(value_in, loc_in);
  const auto mt = math_type(value_in);
  const at::Tensor loc = loc_in.to(mt).contiguous(), attn = attn_in.to(mt).contiguous();
  const auto vt = value_in.scalar_type();
  if (vt == at::kBFloat16 || vt == at::kHalf) {  // read as stored, computed in float32
    const at::Tensor value = value_in.contiguous();
    at::Tensor out = at::empty({d.N, d.Lq, d.M * d.D}, loc.options());
    if (vt == at::kBFloat16)
      forward_bf16(value.data_ptr<c10::BFloat16>(), loc.data_ptr<float>(), attn.data_ptr<float>(), lv, d,
                   out.data_ptr<float>());
    else
      forward_f16(value.data_ptr<c10::Half>(), loc.data_ptr<float>(), attn.data_ptr<float>(), lv, d,
                  out.data_ptr<float>());
    return out.to(vt);
  }
  const at::Tensor value = value_in.to(mt).contiguous();
  at::Tensor out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  AT_DISPATCH_FLOATING_TYPES(mt, "ms_deform_attn_forward_cpu", [&] {
    forward_any(value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), lv, d,
                             out.data_ptr<scalar_t>());
  });
  return out.to(value_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& value_in,
                                                            const at::Tensor& shapes, const at::Tensor& starts,
                                                            const at::Tensor& loc_in, const at::Tensor& attn_in) {
  const std::vector<int64_t> lv = check_inputs(value_in, shapes, starts, loc_in, attn_in);
  const Dims d = dims_of(value_in, loc_in);
  TORCH_CHECK_VALUE(grad_out_in.dim() == 3 && grad_out_in.size(0) == d.N && grad_out_in.size(1) == d.Lq &&
                        grad_out_in.size(2) == d.M * d.D,
                    "grad_output must have shape (N, Lq, M*D) = (", d.N, ", ", d.Lq, ", ", d.M * d.D, "); got ",
                    grad_out_in.sizes());
  const auto mt = math_type(value_in);
  const at::Tensor loc = loc_in.to(mt).contiguous(), attn = attn_in.to(mt).contiguous(),
                   grad_out = grad_out_in.to(mt).contiguous();
  at::Tensor grad_value = at::zeros(value_in.sizes(), loc.options());
  at::Tensor grad_loc = at::empty(loc.sizes(), loc.options());
  at::Tensor grad_attn = at::empty(attn.sizes(), attn.options());
  const auto vt = value_in.scalar_type();
  if (vt == at::kBFloat16 || vt == at::kHalf) {  // value read as stored; every gradient in float32
    const at::Tensor value = value_in.contiguous();
    if (vt == at::kBFloat16)
      backward_bf16(value.data_ptr<c10::BFloat16>(), loc.data_ptr<float>(), attn.data_ptr<float>(),
                    grad_out.data_ptr<float>(), lv, d, grad_value.data_ptr<float>(), grad_loc.data_ptr<float>(),
                    grad_attn.data_ptr<float>());
    else
      backward_f16(value.data_ptr<c10::Half>(), loc.data_ptr<float>(), attn.data_ptr<float>(),
                   grad_out.data_ptr<float>(), lv, d, grad_value.data_ptr<float>(), grad_loc.data_ptr<float>(),
                   grad_attn.data_ptr<float>());
    return {grad_value.to(vt), grad_loc.to(loc_in.scalar_type()), grad_attn.to(attn_in.scalar_type())};
  }
  const at::Tensor value = value_in.to(mt).contiguous();
  AT_DISPATCH_FLOATING_TYPES(mt, "ms_deform_attn_backward_cpu", [&] {
    backward_any(value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
                              grad_out.data_ptr<scalar_t>(), lv, d, grad_value.data_ptr<scalar_t>(),
                              grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>());
  });
  return {grad_value.to(value_in.scalar_type()), grad_loc.to(loc_in.scalar_type()),
          grad_attn.to(attn_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, CPU, m) {
  m.impl("ms_deform_attn", &forward_cpu);
  m.impl("ms_deform_attn_backward", &backward_cpu);
}

}  // namespace msda
}  // namespace ssrvg
