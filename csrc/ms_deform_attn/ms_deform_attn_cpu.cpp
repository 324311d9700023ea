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
// The sampling math is done once per (query, head, level, point) and shared by the D channels; the
// float forward with D in registers does it for eight samples at once (Corners8), bit for bit the
// same as Corners does one by one.
// For D = 8, 16, 32 or 64 (float math) a query's channels stay in registers (Acc / GradRow below);
// other D loop over memory. float16/bfloat16 inputs are computed in float32. Small calls run on
// one thread (grain), and a large value gradient comes from cpu_alloc.h's kept blocks.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "cpu_alloc.h"
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
template <typename V, typename O>  // (O: V, or a wider type: bfloat16 / half widened once here)
SSRVG_INLINE void copy_slice(const V* value, const Dims& d, int64_t n, int64_t m, O* out) {
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
SSRVG_INLINE void prefetch_query(const V* rows, int64_t rs, const T* loc, const std::vector<int64_t>& lv, const Dims& d,
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

// The sampling locations and weights of a query a few ahead: a task reads them M queries apart
// (one (query, head) row per query), a stride the hardware prefetcher follows late, and the loads
// stalled the encoder's forward (perf: a quarter of its time on the first location load).
template <typename T>
SSRVG_INLINE void prefetch_samples(const T* loc, const T* attn, const Dims& d, int64_t qm) {
#if defined(__GNUC__)
  const int64_t n = d.L * d.P;
  for (int64_t b = 0; b < 2 * n * static_cast<int64_t>(sizeof(T)); b += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(loc + 2 * qm * n) + b);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(attn + qm * n) + b);
#endif
}
constexpr int64_t kSampleLead = 4;  // queries ahead

// At query q (qm: its (n, q, m) index) of a task: the samples of the query kSampleLead ahead and, in
// place, the rows of the next one are requested.
template <typename T, typename R>
SSRVG_INLINE void prefetch_ahead(const R* rows, int64_t rs, bool in_place, const T* loc, const T* attn,
                                 const std::vector<int64_t>& lv, const Dims& d, int64_t q, int64_t qm) {
  if (q + kSampleLead < d.Lq) prefetch_samples(loc, attn, d, qm + kSampleLead * d.M);
  if (in_place && q + 1 < d.Lq) prefetch_query(rows, rs, loc, lv, d, qm + d.M);
}

// The level of each of a query's L*P samples, as eight-lane rows (sample s = l * P + p in lane
// s % 8 of row s / 8): W and H as float and int32, and the level's first row; padding lanes get an
// empty level (H = W = 0), so that every corner there is outside.
struct LaneLevels {
  std::vector<float> wf, hf, wf1, hf1;  // W, H, W + 1, H + 1
  std::vector<int32_t> w, h, start;
  LaneLevels(const std::vector<int64_t>& lv, const Dims& d) {
    const size_t n = 8 * static_cast<size_t>((d.L * d.P + 7) / 8);
    wf.assign(n, 0.f), hf.assign(n, 0.f), wf1.assign(n, 0.f), hf1.assign(n, 0.f);
    w.assign(n, 0), h.assign(n, 0), start.assign(n, 0);
    for (int64_t s = 0; s < d.L * d.P; ++s) {
      const int64_t l = s / d.P, H = lv[3 * l], W = lv[3 * l + 1];
      wf[s] = static_cast<float>(W), hf[s] = static_cast<float>(H);
      wf1[s] = static_cast<float>(W + 1), hf1[s] = static_cast<float>(H + 1);
      w[s] = static_cast<int32_t>(W), h[s] = static_cast<int32_t>(H), start[s] = static_cast<int32_t>(lv[3 * l + 2]);
    }
  }
};
// Int32 lane arithmetic covers the rows only below this many (else the scalar Corners path runs).
constexpr int64_t kLaneRows = int64_t(1) << 29;

// The lane tables where the eight-lane code applies (float math, D in registers, rows within int32
// lanes); none elsewhere (the one-corner-at-a-time code runs).
template <typename T, int DC>
std::optional<LaneLevels> lane_levels(const std::vector<int64_t>& lv, const Dims& d) {
  if (SSRVG_VEC8 && DC > 0 && std::is_same_v<T, float> && d.S < kLaneRows) return LaneLevels(lv, d);
  return std::nullopt;
}

// The D channels of one query: an accumulator of sampled rows (forward) and its output gradient
// (backward). Any D: loops over memory. D a multiple of 8 known at compile time (float math): the
// channels stay in registers (f8 vectors). Both compute each channel in the same order.
template <typename T, int DC, typename = void>
struct Acc {
  T* __restrict__ a;
  int64_t D;
  SSRVG_INLINE Acc(T* buf, int64_t d) : a(buf), D(d) { std::fill(a, a + D, T(0)); }
  template <typename V>
  SSRVG_INLINE void add(T w, const V* __restrict__ v) {
    for (int64_t ch = 0; ch < D; ++ch) a[ch] += w * static_cast<T>(v[ch]);
  }
  template <typename V>
  SSRVG_INLINE void add_if(bool in, T w, const V* v) {
    if (in) add(w, v);
  }
  SSRVG_INLINE void store(T* out) const { std::copy(a, a + D, out); }
};

template <typename T, int DC, typename = void>
struct GradRow {
  const T* __restrict__ g;
  int64_t D;
  SSRVG_INLINE GradRow(const T* grad, int64_t d) : g(grad), D(d) {}
  template <typename V>
  SSRVG_INLINE T dot(const V* v) const { return dot8(v, g, D); }
  SSRVG_INLINE void axpy(T w, T* __restrict__ gv) const {
    for (int64_t ch = 0; ch < D; ++ch) gv[ch] += w * g[ch];
  }
};

#if SSRVG_VEC8
using ::ssrvg::load8;
SSRVG_INLINE f8 load8(const c10::BFloat16* p) {  // bfloat16 -> float is a 16-bit shift
  typedef uint16_t u16x8 __attribute__((vector_size(16)));
  typedef uint32_t u32x8 __attribute__((vector_size(32)));
  u16x8 h;
  __builtin_memcpy(&h, p, sizeof h);
  const u32x8 w = __builtin_convertvector(h, u32x8) << 16;
  f8 r;
  __builtin_memcpy(&r, &w, sizeof r);
  return r;
}

template <int DC>
struct Acc<float, DC, std::enable_if_t<(DC > 0)>> {
  f8 a[DC / 8];
  SSRVG_INLINE Acc(float*, int64_t) {
    for (int j = 0; j < DC / 8; ++j) a[j] = f8{};
  }
  template <typename V>
  SSRVG_INLINE void add(float w, const V* v) {
    const f8 wv = splat8(w);
    for (int j = 0; j < DC / 8; ++j) a[j] += wv * load8(v + 8 * j);
  }
  // Without a branch (corners at a level's border are unpredictable on small maps): v is a valid
  // row either way, and a corner outside adds +0 (masked, so an inf or NaN in v cannot leak).
  template <typename V>
  SSRVG_INLINE void add_if(bool in, float w, const V* v) {
    const i8 keep = i8{} - static_cast<int32_t>(in);  // all ones or all zeros
    const f8 wv = splat8(w);
    for (int j = 0; j < DC / 8; ++j) a[j] += reinterpret_cast<f8>(reinterpret_cast<i8>(wv * load8(v + 8 * j)) & keep);
  }
  template <typename V>
  SSRVG_INLINE void add_keep(int32_t keep, float w, const V* v) {  // add_if with the test as a mask
    const i8 k = i8{} + keep;
    const f8 wv = splat8(w);
    for (int j = 0; j < DC / 8; ++j) a[j] += reinterpret_cast<f8>(reinterpret_cast<i8>(wv * load8(v + 8 * j)) & k);
  }
  SSRVG_INLINE void store(float* out) const {
    for (int j = 0; j < DC / 8; ++j) store8(out + 8 * j, a[j]);
  }
};

template <int DC>
struct GradRow<float, DC, std::enable_if_t<(DC > 0)>> {
  f8 g[DC / 8];
  SSRVG_INLINE GradRow(const float* grad, int64_t) {
    for (int j = 0; j < DC / 8; ++j) g[j] = load8(grad + 8 * j);
  }
  template <typename V>
  SSRVG_INLINE float dot(const V* v) const {  // the lanes of dot8's eight partial sums
    f8 s = load8(v) * g[0];
    for (int j = 1; j < DC / 8; ++j) s += load8(v + 8 * j) * g[j];
    return hsum8(s);
  }
  SSRVG_INLINE void axpy(float w, float* gv) const {
    const f8 wv = splat8(w);
    for (int j = 0; j < DC / 8; ++j) store8(gv + 8 * j, load8(gv + 8 * j) + wv * g[j]);
  }
};
SSRVG_INLINE i8 load8(const int32_t* p) {
  i8 r;
  __builtin_memcpy(&r, p, sizeof r);
  return r;
}
// The corners of eight samples at once, one per lane: exactly Corners<float> (the same float
// operations, lane by lane), floor by truncation (exact where |x| < 2^29; beyond, and for NaN, the
// lane is clamped outside as Corners does). For corner k: keep[k] all ones where it is inside,
// bil[k] its bilinear weight, w[k] = attention weight * bil[k], row[k] its row (start + y * W + x;
// 0 outside).
struct Corners8 {
  f8 fx, fy, gx, gy;  // fractional parts and 1 - them
  f8 bil[4], w[4];    // bilinear weights (Corners::weight), times the attention weight
  i8 keep[4], row[4];
  SSRVG_INLINE static f8 floor8(f8 x, i8& ok) {
    const f8 lim = f8{} + static_cast<float>(kLaneRows);
    ok = (x > -lim) & (x < lim);
    const f8 x_ok = reinterpret_cast<f8>(reinterpret_cast<i8>(x) & ok);  // (a NaN or huge lane: 0)
    const f8 t = __builtin_convertvector(__builtin_convertvector(x_ok, i8), f8);
    return t - reinterpret_cast<f8>(reinterpret_cast<i8>(f8{} + 1.0f) & (t > x_ok));
  }
  SSRVG_INLINE Corners8(f8 lx, f8 ly, f8 a, f8 wf, f8 hf, f8 wf1, f8 hf1, i8 wi, i8 hi, i8 start) {
    const f8 half = f8{} + 0.5f, one = f8{} + 1.0f, m2 = f8{} - 2.0f;  // (as Corners' casts)
    const f8 x = lx * wf - half, y = ly * hf - half;
    i8 okx, oky;
    const f8 xf = floor8(x, okx), yf = floor8(y, oky);
    const i8 in_x = okx & (xf > m2) & (xf < wf1), in_y = oky & (yf > m2) & (yf < hf1);
    const i8 x0 = (__builtin_convertvector(xf, i8) & in_x) | ((i8{} - 2) & ~in_x);
    const i8 y0 = (__builtin_convertvector(yf, i8) & in_y) | ((i8{} - 2) & ~in_y);
    fx = x - xf, fy = y - yf, gx = one - fx, gy = one - fy;
    const i8 ry0 = (y0 >= 0) & (y0 < hi), ry1 = (y0 >= -1) & (y0 + 1 < hi);
    const i8 cx0 = (x0 >= 0) & (x0 < wi), cx1 = (x0 >= -1) & (x0 + 1 < wi);
    keep[0] = ry0 & cx0, keep[1] = ry0 & cx1, keep[2] = ry1 & cx0, keep[3] = ry1 & cx1;
    bil[0] = gy * gx, bil[1] = gy * fx, bil[2] = fy * gx, bil[3] = fy * fx;
    for (int k = 0; k < 4; ++k) w[k] = a * bil[k];
    const i8 r = start + y0 * wi + x0;
    row[0] = r & keep[0], row[1] = (r + 1) & keep[1], row[2] = (r + wi) & keep[2], row[3] = (r + wi + 1) & keep[3];
  }
};

// The channel counts with register kernels (float math, value float32 or bfloat16); others: any D.
#define SSRVG_MSDA_SWITCH_D(D, CALL) \
  switch (D) {                       \
    case 8: CALL(8); break;          \
    case 16: CALL(16); break;        \
    case 32: CALL(32); break;        \
    case 64: CALL(64); break;        \
    default: CALL(0);                \
  }
#else
#define SSRVG_MSDA_SWITCH_D(D, CALL) CALL(0)
#endif

// The queries of one task (batch n, head m), forward. R: the storage of the rows read (value's, or
// T for a slice copied and widened), rs: the distance between them; in place, each query's rows
// are prefetched one query ahead. DC: D when known at compile time, else 0.
template <typename T, typename R, int DC>
SSRVG_INLINE void forward_queries(const R* rows, int64_t rs, bool in_place, int64_t n, int64_t m, const T* loc,
                                  const T* attn, const std::vector<int64_t>& lv, const Dims& d, T* scratch, T* out) {
  if (in_place && d.Lq > 0) prefetch_query(rows, rs, loc, lv, d, n * d.Lq * d.M + m);
  for (int64_t q = 0; q < d.Lq; ++q) {
    Acc<T, DC> acc(scratch, d.D);
    const int64_t qm = (n * d.Lq + q) * d.M + m;  // index of (n, q, m)
    prefetch_ahead(rows, rs, in_place, loc, attn, lv, d, q, qm);
    for (int64_t l = 0; l < d.L; ++l) {
      const int64_t H = lv[3 * l], W = lv[3 * l + 1], start = lv[3 * l + 2];
      const R* vbase = rows + start * rs;
      for (int64_t p = 0; p < d.P; ++p) {
        const int64_t sidx = (qm * d.L + l) * d.P + p;
        const T a = attn[sidx];
        const Corners<T> c(loc[2 * sidx], loc[2 * sidx + 1], H, W);
        for (int k = 0; k < 4; ++k) {
          const bool in = c.inside(k, H, W);
          acc.add_if(in, a * c.weight(k), vbase + (c.offset(k, W) & -static_cast<int64_t>(in)) * rs);
        }
      }
    }
    acc.store(out + qm * d.D);
  }
}

#if SSRVG_VEC8
// Samples [s0, s0 + 8) of one (query, head) whose samples start at ql (locations) and qa (weights):
// their corners, lanes past LP empty.
SSRVG_INLINE Corners8 corners8(const float* ql, const float* qa, int64_t s0, int64_t LP, const LaneLevels& ll) {
  f8 lx, ly, la;
  if (s0 + 8 <= LP) {  // (x, y) pairs split into x and y lanes
    const f8 v0 = load8(ql + 2 * s0), v1 = load8(ql + 2 * s0 + 8);
    lx = __builtin_shuffle(v0, v1, i8{0, 2, 4, 6, 8, 10, 12, 14});
    ly = __builtin_shuffle(v0, v1, i8{1, 3, 5, 7, 9, 11, 13, 15});
    la = load8(qa + s0);
  } else {
    lx = ly = la = f8{};
    for (int64_t i = 0; s0 + i < LP; ++i) lx[i] = ql[2 * (s0 + i)], ly[i] = ql[2 * (s0 + i) + 1], la[i] = qa[s0 + i];
  }
  return Corners8(lx, ly, la, load8(&ll.wf[s0]), load8(&ll.hf[s0]), load8(&ll.wf1[s0]), load8(&ll.hf1[s0]),
                  load8(&ll.w[s0]), load8(&ll.h[s0]), load8(&ll.start[s0]));
}

// forward_queries for float math with D in registers: each group of eight samples' corners at once
// (Corners8), then their rows summed in the same order as forward_queries does.
template <typename R, int DC>
SSRVG_INLINE void forward_queries8(const R* rows, int64_t rs, bool in_place, int64_t n, int64_t m, const float* loc,
                                   const float* attn, const std::vector<int64_t>& lv, const LaneLevels& ll,
                                   const Dims& d, float* out) {
  const int64_t LP = d.L * d.P;
  if (in_place && d.Lq > 0) prefetch_query(rows, rs, loc, lv, d, n * d.Lq * d.M + m);
  for (int64_t q = 0; q < d.Lq; ++q) {
    Acc<float, DC> acc(nullptr, d.D);
    const int64_t qm = (n * d.Lq + q) * d.M + m;
    prefetch_ahead(rows, rs, in_place, loc, attn, lv, d, q, qm);
    const float* ql = loc + 2 * qm * LP;
    const float* qa = attn + qm * LP;
    for (int64_t s0 = 0; s0 < LP; s0 += 8) {
      const Corners8 c = corners8(ql, qa, s0, LP, ll);
      for (int64_t i = 0; i < std::min<int64_t>(8, LP - s0); ++i)
        for (int k = 0; k < 4; ++k) acc.add_keep(c.keep[k][i], c.w[k][i], rows + c.row[k][i] * rs);
    }
    acc.store(out + qm * d.D);
  }
}
#endif

// forward_queries8 where lane tables are given (lane_levels), else forward_queries.
template <typename T, typename R, int DC>
SSRVG_INLINE void forward_queries_any(const R* rows, int64_t rs, bool in_place, int64_t n, int64_t m, const T* loc,
                                      const T* attn, const std::vector<int64_t>& lv,
                                      const std::optional<LaneLevels>& ll, const Dims& d, T* scratch, T* out) {
#if SSRVG_VEC8
  if constexpr (DC > 0 && std::is_same_v<T, float>) {
    if (ll) return forward_queries8<R, DC>(rows, rs, in_place, n, m, loc, attn, lv, *ll, d, out);
  }
#endif
  forward_queries<T, R, DC>(rows, rs, in_place, n, m, loc, attn, lv, d, scratch, out);
}

// Tasks [s, e) of the forward. T: the math type (float, double); V: value's storage (T, or
// bfloat16 / half: read as stored and widened sample by sample in place; a copied slice is
// widened once, as it is copied).
template <typename T, typename V, int DC>
SSRVG_INLINE void forward_tasks(int64_t s, int64_t e, const V* value, const T* loc, const T* attn,
                                const std::vector<int64_t>& lv, const Dims& d, T* out) {
  const bool copy = copies_slice(d);
  std::vector<T> scratch(DC > 0 ? 0 : d.D);
  std::vector<T> slice(copy ? d.S * d.D : 0);
  const std::optional<LaneLevels> ll = lane_levels<T, DC>(lv, d);
  for (int64_t task = s; task < e; ++task) {
    const int64_t n = task / d.M, m = task % d.M;
    if (copy) {
      copy_slice(value, d, n, m, slice.data());
      forward_queries_any<T, T, DC>(slice.data(), d.D, false, n, m, loc, attn, lv, ll, d, scratch.data(), out);
    } else {  // row r of value[n, :, m, :] at rows + r * M * D
      forward_queries_any<T, V, DC>(value + (n * d.S * d.M + m) * d.D, d.M * d.D, true, n, m, loc, attn, lv, ll, d,
                                    scratch.data(), out);
    }
  }
}

// The queries of one task, backward; as forward_queries. grows: the task's value-gradient rows
// (rs apart), accumulated in T.
template <typename T, typename R, int DC>
SSRVG_INLINE void backward_queries(const R* rows, T* grows, int64_t rs, bool in_place, int64_t n, int64_t m,
                                   const T* loc, const T* attn, const T* grad_out, const std::vector<int64_t>& lv,
                                   const Dims& d, T* grad_loc, T* grad_attn) {
  if (in_place && d.Lq > 0) prefetch_query(rows, rs, loc, lv, d, n * d.Lq * d.M + m);
  for (int64_t q = 0; q < d.Lq; ++q) {
    const int64_t qm = (n * d.Lq + q) * d.M + m;
    const GradRow<T, DC> g(grad_out + qm * d.D, d.D);
    prefetch_ahead(rows, rs, in_place, loc, attn, lv, d, q, qm);
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
          const T dot = g.dot(rows + off);
          g.axpy(a * c.weight(k), grows + off);
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
}

#if SSRVG_VEC8
// backward_queries for float math with D in registers, the corners as in forward_queries8; every
// sum in the same order as backward_queries.
template <typename R, int DC>
SSRVG_INLINE void backward_queries8(const R* rows, float* grows, int64_t rs, bool in_place, int64_t n, int64_t m,
                                    const float* loc, const float* attn, const float* grad_out,
                                    const std::vector<int64_t>& lv, const LaneLevels& ll, const Dims& d,
                                    float* grad_loc, float* grad_attn) {
  const int64_t LP = d.L * d.P;
  if (in_place && d.Lq > 0) prefetch_query(rows, rs, loc, lv, d, n * d.Lq * d.M + m);
  for (int64_t q = 0; q < d.Lq; ++q) {
    const int64_t qm = (n * d.Lq + q) * d.M + m;
    const GradRow<float, DC> g(grad_out + qm * d.D, d.D);
    prefetch_ahead(rows, rs, in_place, loc, attn, lv, d, q, qm);
    const float* ql = loc + 2 * qm * LP;
    const float* qa = attn + qm * LP;
    for (int64_t s0 = 0; s0 < LP; s0 += 8) {
      const Corners8 c = corners8(ql, qa, s0, LP, ll);
      for (int64_t i = 0; i < std::min<int64_t>(8, LP - s0); ++i) {
        // Corners::dweight_dx / dweight_dy of corners 0..3
        const float dx[4] = {-c.gy[i], c.gy[i], -c.fy[i], c.fy[i]}, dy[4] = {-c.gx[i], -c.fx[i], c.gx[i], c.fx[i]};
        float g_attn = 0, g_x = 0, g_y = 0;
        for (int k = 0; k < 4; ++k) {
          if (!c.keep[k][i]) continue;
          const int64_t off = c.row[k][i] * rs;
          const float dot = g.dot(rows + off);
          g.axpy(c.w[k][i], grows + off);
          g_attn += c.bil[k][i] * dot;
          g_x += dx[k] * dot;
          g_y += dy[k] * dot;
        }
        const int64_t sidx = qm * LP + s0 + i;
        const float a = qa[s0 + i];
        grad_attn[sidx] = g_attn;
        grad_loc[2 * sidx] = a * g_x * ll.wf[s0 + i];
        grad_loc[2 * sidx + 1] = a * g_y * ll.hf[s0 + i];
      }
    }
  }
}
#endif

// backward_queries8 where lane tables are given (lane_levels), else backward_queries.
template <typename T, typename R, int DC>
SSRVG_INLINE void backward_queries_any(const R* rows, T* grows, int64_t rs, bool in_place, int64_t n, int64_t m,
                                       const T* loc, const T* attn, const T* grad_out, const std::vector<int64_t>& lv,
                                       const std::optional<LaneLevels>& ll, const Dims& d, T* grad_loc,
                                       T* grad_attn) {
#if SSRVG_VEC8
  if constexpr (DC > 0 && std::is_same_v<T, float>) {
    if (ll) return backward_queries8<R, DC>(rows, grows, rs, in_place, n, m, loc, attn, grad_out, lv, *ll, d, grad_loc,
                                            grad_attn);
  }
#endif
  backward_queries<T, R, DC>(rows, grows, rs, in_place, n, m, loc, attn, grad_out, lv, d, grad_loc, grad_attn);
}

// Tasks [s, e) of the backward; as forward_tasks.
template <typename T, typename V, int DC>
SSRVG_INLINE void backward_tasks(int64_t s, int64_t e, const V* value, const T* loc, const T* attn, const T* grad_out,
                                 const std::vector<int64_t>& lv, const Dims& d, T* grad_value, T* grad_loc,
                                 T* grad_attn) {
  const bool copy = copies_slice(d);
  std::vector<T> slice(copy ? d.S * d.D : 0);
  std::vector<T> gslice(copy ? d.S * d.D : 0);
  const std::optional<LaneLevels> ll = lane_levels<T, DC>(lv, d);
  for (int64_t task = s; task < e; ++task) {
    const int64_t n = task / d.M, m = task % d.M;
    if (copy) {
      copy_slice(value, d, n, m, slice.data());
      std::fill(gslice.begin(), gslice.end(), T(0));
      backward_queries_any<T, T, DC>(slice.data(), gslice.data(), d.D, false, n, m, loc, attn, grad_out, lv, ll, d,
                                     grad_loc, grad_attn);
      for (int64_t r = 0; r < d.S; ++r)  // this task owns grad_value[n, :, m, :]
        std::copy(gslice.data() + r * d.D, gslice.data() + (r + 1) * d.D, grad_value + ((n * d.S + r) * d.M + m) * d.D);
    } else {  // grad_value zeroed by backward_kernel (zero_value_grad)
      const int64_t first = (n * d.S * d.M + m) * d.D;
      backward_queries_any<T, V, DC>(value + first, grad_value + first, d.M * d.D, true, n, m, loc, attn, grad_out, lv,
                                     ll, d, grad_loc, grad_attn);
    }
  }
}

// Non-template entry points, one per storage type, each running tasks [s, e): the float ones get
// AVX2 clones, with the loops inside them (cpu_simd.h); double (gradcheck) stays generic.
#define SSRVG_MSDA_FWD(DC) forward_tasks<float, V, DC>(s, e, value, loc, attn, lv, d, out)
#define SSRVG_MSDA_BWD(DC) backward_tasks<float, V, DC>(s, e, value, loc, attn, g, lv, d, gv, gl, ga)
SSRVG_CLONES void forward_f32(int64_t s, int64_t e, const float* value, const float* loc, const float* attn,
                              const std::vector<int64_t>& lv, const Dims& d, float* out) {
  using V = float;
  SSRVG_MSDA_SWITCH_D(d.D, SSRVG_MSDA_FWD)
}
SSRVG_CLONES void forward_bf16(int64_t s, int64_t e, const c10::BFloat16* value, const float* loc, const float* attn,
                               const std::vector<int64_t>& lv, const Dims& d, float* out) {
  using V = c10::BFloat16;
  SSRVG_MSDA_SWITCH_D(d.D, SSRVG_MSDA_FWD)
}
SSRVG_CLONES void forward_f16(int64_t s, int64_t e, const c10::Half* value, const float* loc, const float* attn,
                              const std::vector<int64_t>& lv, const Dims& d, float* out) {
  forward_tasks<float, c10::Half, 0>(s, e, value, loc, attn, lv, d, out);
}
void forward_f64(int64_t s, int64_t e, const double* value, const double* loc, const double* attn,
                 const std::vector<int64_t>& lv, const Dims& d, double* out) {
  forward_tasks<double, double, 0>(s, e, value, loc, attn, lv, d, out);
}
SSRVG_CLONES void backward_f32(int64_t s, int64_t e, const float* value, const float* loc, const float* attn,
                               const float* g, const std::vector<int64_t>& lv, const Dims& d, float* gv, float* gl,
                               float* ga) {
  using V = float;
  SSRVG_MSDA_SWITCH_D(d.D, SSRVG_MSDA_BWD)
}
SSRVG_CLONES void backward_bf16(int64_t s, int64_t e, const c10::BFloat16* value, const float* loc, const float* attn,
                                const float* g, const std::vector<int64_t>& lv, const Dims& d, float* gv, float* gl,
                                float* ga) {
  using V = c10::BFloat16;
  SSRVG_MSDA_SWITCH_D(d.D, SSRVG_MSDA_BWD)
}
// (no clone: its half -> float widening does not vectorise; the test of the clones would say so)
void backward_f16(int64_t s, int64_t e, const c10::Half* value, const float* loc, const float* attn,
                               const float* g, const std::vector<int64_t>& lv, const Dims& d, float* gv, float* gl,
                               float* ga) {
  backward_tasks<float, c10::Half, 0>(s, e, value, loc, attn, g, lv, d, gv, gl, ga);
}
void backward_f64(int64_t s, int64_t e, const double* value, const double* loc, const double* attn, const double* g,
                  const std::vector<int64_t>& lv, const Dims& d, double* gv, double* gl, double* ga) {
  backward_tasks<double, double, 0>(s, e, value, loc, attn, g, lv, d, gv, gl, ga);
}
#undef SSRVG_MSDA_FWD
#undef SSRVG_MSDA_BWD

// One task per (batch, head) pair; a call too small to repay waking a second thread runs on one:
// tasks are grouped until a group holds ~64K channel multiply-adds, a corner read in place (a
// likely cache miss) counted as 64 more.
int64_t grain(const Dims& d) {
  const bool copy = copies_slice(d);
  const int64_t work = d.Lq * d.L * d.P * 4 * (d.D + (copy ? 0 : 64)) + (copy ? d.S * d.D : 0);
  return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(work, 1));
}

template <typename T, typename V>
void forward_kernel(const V* value, const T* loc, const T* attn, const std::vector<int64_t>& lv, const Dims& d, T* out) {
  at::parallel_for(0, d.N * d.M, grain(d), [&](int64_t s, int64_t e) {
    if constexpr (std::is_same_v<V, c10::BFloat16>) forward_bf16(s, e, value, loc, attn, lv, d, out);
    else if constexpr (std::is_same_v<V, c10::Half>) forward_f16(s, e, value, loc, attn, lv, d, out);
    else if constexpr (std::is_same_v<T, double>) forward_f64(s, e, value, loc, attn, lv, d, out);
    else forward_f32(s, e, value, loc, attn, lv, d, out);
  });
}

// The value gradient's zeros, where the tasks do not write it whole (they accumulate in place): one
// contiguous fill (a task zeroing its own strided slice read the memory several times over), on
// the calling thread below 1 MiB -- a parallel fill of a small gradient woke the sleeping second
// thread, ~0.1 ms per call when the kernel itself ran on one.
template <typename T>
void zero_value_grad(T* gv, const Dims& d) {
  if (copies_slice(d)) return;
  const int64_t n = d.N * d.S * d.M * d.D;
  constexpr int64_t kSerial = (int64_t(1) << 20) / sizeof(T);
  if (n <= kSerial) {
    std::fill_n(gv, n, T(0));
    return;
  }
  at::parallel_for(0, n, kSerial, [&](int64_t b, int64_t e) { std::fill(gv + b, gv + e, T(0)); });
}

template <typename T, typename V>
void backward_kernel(const V* value, const T* loc, const T* attn, const T* g, const std::vector<int64_t>& lv,
                     const Dims& d, T* gv, T* gl, T* ga) {
  zero_value_grad(gv, d);
  at::parallel_for(0, d.N * d.M, grain(d), [&](int64_t s, int64_t e) {
    if constexpr (std::is_same_v<V, c10::BFloat16>) backward_bf16(s, e, value, loc, attn, g, lv, d, gv, gl, ga);
    else if constexpr (std::is_same_v<V, c10::Half>) backward_f16(s, e, value, loc, attn, g, lv, d, gv, gl, ga);
    else if constexpr (std::is_same_v<T, double>) backward_f64(s, e, value, loc, attn, g, lv, d, gv, gl, ga);
    else backward_f32(s, e, value, loc, attn, g, lv, d, gv, gl, ga);
  });
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
      forward_kernel(value.data_ptr<c10::BFloat16>(), loc.data_ptr<float>(), attn.data_ptr<float>(), lv, d,
                     out.data_ptr<float>());
    else
      forward_kernel(value.data_ptr<c10::Half>(), loc.data_ptr<float>(), attn.data_ptr<float>(), lv, d,
                     out.data_ptr<float>());
    return out.to(vt);
  }
  const at::Tensor value = value_in.to(mt).contiguous();
  at::Tensor out = at::empty({d.N, d.Lq, d.M * d.D}, value.options());
  AT_DISPATCH_FLOATING_TYPES(mt, "ms_deform_attn_forward_cpu", [&] {
    forward_kernel(value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), lv, d,
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
  at::Tensor grad_value = empty_large(value_in.sizes(), loc.options());  // cpu_alloc.h; zeroed by backward_kernel
  at::Tensor grad_loc = at::empty(loc.sizes(), loc.options());
  at::Tensor grad_attn = at::empty(attn.sizes(), attn.options());
  const auto vt = value_in.scalar_type();
  if (vt == at::kBFloat16 || vt == at::kHalf) {  // value read as stored; every gradient in float32
    const at::Tensor value = value_in.contiguous();
    if (vt == at::kBFloat16)
      backward_kernel(value.data_ptr<c10::BFloat16>(), loc.data_ptr<float>(), attn.data_ptr<float>(),
                    grad_out.data_ptr<float>(), lv, d, grad_value.data_ptr<float>(), grad_loc.data_ptr<float>(),
                    grad_attn.data_ptr<float>());
    else
      backward_kernel(value.data_ptr<c10::Half>(), loc.data_ptr<float>(), attn.data_ptr<float>(),
                   grad_out.data_ptr<float>(), lv, d, grad_value.data_ptr<float>(), grad_loc.data_ptr<float>(),
                   grad_attn.data_ptr<float>());
    at::Tensor grad_value_out = empty_large(grad_value.sizes(), grad_value.options().dtype(vt));
    grad_value_out.copy_(grad_value);
    return {grad_value_out, grad_loc.to(loc_in.scalar_type()), grad_attn.to(attn_in.scalar_type())};
  }
  const at::Tensor value = value_in.to(mt).contiguous();
  AT_DISPATCH_FLOATING_TYPES(mt, "ms_deform_attn_backward_cpu", [&] {
    backward_kernel(value.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(),
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
