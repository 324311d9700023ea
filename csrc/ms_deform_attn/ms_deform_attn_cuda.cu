// CUDA kernels of multi-scale deformable attention (ms_deform_attn.h).
//
// Layout of the work: a group of GROUP threads (a power of two <= 32, inside one warp) serves one
// (batch, query, head); each thread owns VEC consecutive channels (16-byte loads when D allows)
// and strides over the channel chunks. The sampling math of a point is computed once per thread
// and shared by its channels. Backward reduces the location / weight gradients of a point across
// the group with warp shuffles (fixed order, no atomics). The value gradient uses float atomics by
// default; under torch.use_deterministic_algorithms(True) it is gathered instead: the (value row,
// sample corner) pairs are stable-sorted by row and each (row, channel) sums its samples in order.
//
// No host synchronisation: the level table (H, W, start) travels by value in the kernel arguments
// (at most kMaxLevels levels). spatial_shapes / level_start_index on the CPU (as the model passes
// them) are validated on the host for free; on the GPU they cost one device-to-host copy per call.

#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

#include "ms_deform_attn.h"

namespace ssrvg {
namespace msda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxLevels = 16;

// Level l: rows h[l] x w[l], first flattened position start[l]. Passed by value (384 bytes).
struct Levels {
  int64_t h[kMaxLevels], w[kMaxLevels], start[kMaxLevels];
};

struct Geometry {
  int64_t N, S, M, D, Lq, L, P;
  int vec, group;        // channels per load, threads per (n, q, m)
  int64_t chunks;        // D / vec
};

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Pack {
  scalar_t v[VEC];
};

template <typename scalar_t, int VEC>
__device__ inline void load(const scalar_t* p, at::opmath_type<scalar_t>* out) {
  if constexpr (VEC == 1) {
    out[0] = static_cast<at::opmath_type<scalar_t>>(p[0]);
  } else {
    const Pack<scalar_t, VEC> pk = *reinterpret_cast<const Pack<scalar_t, VEC>*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = static_cast<at::opmath_type<scalar_t>>(pk.v[i]);
  }
}

// Adds VEC consecutive values at p (16-byte aligned when VEC > 1): float4 atomics on sm_90+ (one
// instruction per 4 channels instead of 4), scalar atomics elsewhere.
template <typename T, int VEC>
__device__ inline void atomic_add_vec(T* p, const T* v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kVector = std::is_same_v<T, float> && VEC % 4 == 0;
#else
  constexpr bool kVector = false;
#endif
  if constexpr (kVector) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) atomicAdd(reinterpret_cast<float4*>(p + i), make_float4(v[i], v[i + 1], v[i + 2], v[i + 3]));
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) atomicAdd(p + i, v[i]);
  }
}

template <typename T>
__device__ inline T group_sum(T v, int group) {
  for (int o = group / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o, group);
  return v;
}

template <typename scalar_t, int VEC>
__global__ void forward_kernel(const scalar_t* __restrict__ value, const Levels levels,
                               const at::opmath_type<scalar_t>* __restrict__ loc,
                               const at::opmath_type<scalar_t>* __restrict__ attn, Geometry g,
                               scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t qm = t / g.group;  // (n, q, m)
  const int lane = static_cast<int>(t % g.group);
  if (qm >= g.N * g.Lq * g.M) return;
  const int64_t m = qm % g.M, n = qm / (g.Lq * g.M);
  for (int64_t c = lane; c < g.chunks; c += g.group) {
    T acc[VEC];
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[i] = 0;
    for (int64_t l = 0; l < g.L; ++l) {
      const int64_t H = levels.h[l], W = levels.w[l], start = levels.start[l];
      const scalar_t* vbase = value + ((n * g.S + start) * g.M + m) * g.D + c * VEC;
      for (int64_t p = 0; p < g.P; ++p) {
        const int64_t s = (qm * g.L + l) * g.P + p;
        const T a = attn[s];
        const Corners<T> cr(loc[2 * s], loc[2 * s + 1], H, W);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (!cr.inside(k, H, W)) continue;
          T v[VEC];
          load<scalar_t, VEC>(vbase + cr.offset(k, W) * g.M * g.D, v);
          const T wgt = a * cr.weight(k);
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[i] += wgt * v[i];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[qm * g.D + c * VEC + i] = static_cast<scalar_t>(acc[i]);
  }
}

// Location / weight gradients (group shuffles) and, when ATOMIC, the value gradient (atomics).
template <typename scalar_t, int VEC, bool ATOMIC>
__global__ void backward_kernel(const scalar_t* __restrict__ value, const Levels levels,
                                const at::opmath_type<scalar_t>* __restrict__ loc,
                                const at::opmath_type<scalar_t>* __restrict__ attn,
                                const scalar_t* __restrict__ grad_out, Geometry g,
                                at::opmath_type<scalar_t>* __restrict__ grad_value,
                                at::opmath_type<scalar_t>* __restrict__ grad_loc,
                                at::opmath_type<scalar_t>* __restrict__ grad_attn) {
  using T = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t qm_raw = t / g.group;
  const int lane = static_cast<int>(t % g.group);
  const bool active = qm_raw < g.N * g.Lq * g.M;  // inactive lanes still join the shuffles
  const int64_t qm = active ? qm_raw : 0;
  const int64_t m = qm % g.M, n = qm / (g.Lq * g.M);
  for (int64_t l = 0; l < g.L; ++l) {
    const int64_t H = levels.h[l], W = levels.w[l], start = levels.start[l];
    const int64_t base = ((n * g.S + start) * g.M + m) * g.D;
    for (int64_t p = 0; p < g.P; ++p) {
      const int64_t s = (qm * g.L + l) * g.P + p;
      const T a = attn[s];
      const Corners<T> cr(loc[2 * s], loc[2 * s + 1], H, W);
      T g_attn = 0, g_x = 0, g_y = 0;
      if (active) {
        for (int64_t c = lane; c < g.chunks; c += g.group) {
          T go[VEC];
          load<scalar_t, VEC>(grad_out + qm * g.D + c * VEC, go);
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            if (!cr.inside(k, H, W)) continue;
            const int64_t off = base + cr.offset(k, W) * g.M * g.D + c * VEC;
            T v[VEC];
            load<scalar_t, VEC>(value + off, v);
            T dot = 0;
#pragma unroll
            for (int i = 0; i < VEC; ++i) dot += v[i] * go[i];
            if constexpr (ATOMIC) {
              const T wa = a * cr.weight(k);
              T add[VEC];
#pragma unroll
              for (int i = 0; i < VEC; ++i) add[i] = wa * go[i];
              atomic_add_vec<T, VEC>(grad_value + off, add);
            }
            g_attn += cr.weight(k) * dot;
            g_x += cr.dweight_dx(k) * dot;
            g_y += cr.dweight_dy(k) * dot;
          }
        }
      }
      g_attn = group_sum(g_attn, g.group);
      g_x = group_sum(g_x, g.group);
      g_y = group_sum(g_y, g.group);
      if (active && lane == 0) {
        grad_attn[s] = g_attn;
        grad_loc[2 * s] = a * g_x * static_cast<T>(W);
        grad_loc[2 * s + 1] = a * g_y * static_cast<T>(H);
      }
    }
  }
}

// Deterministic value gradient, step 1: one key per (sample, corner): the value row it reads
// ((n * S + s) * M + m), or INT64_MAX when the corner is outside.
template <typename T>
__global__ void corner_keys_kernel(const Levels levels, const T* __restrict__ loc, Geometry g,
                                   int64_t* __restrict__ keys) {
  const int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t samples = g.N * g.Lq * g.M * g.L * g.P;
  if (e >= samples * 4) return;
  const int64_t s = e / 4;
  const int k = static_cast<int>(e % 4);
  const int64_t l = (s / g.P) % g.L, qm = s / (g.P * g.L);
  const int64_t m = qm % g.M, n = qm / (g.Lq * g.M);
  const int64_t H = levels.h[l], W = levels.w[l], start = levels.start[l];
  const Corners<T> cr(loc[2 * s], loc[2 * s + 1], H, W);
  keys[e] = cr.inside(k, H, W) ? (n * g.S + start + cr.offset(k, W)) * g.M + m : INT64_MAX;
}

// Step 2: thread per (value row, channel): sum its sorted (sample, corner) entries in order.
template <typename scalar_t>
__global__ void gather_value_grad_kernel(const Levels levels,
                                         const at::opmath_type<scalar_t>* __restrict__ loc,
                                         const at::opmath_type<scalar_t>* __restrict__ attn,
                                         const scalar_t* __restrict__ grad_out, const int64_t* __restrict__ order,
                                         const int64_t* __restrict__ row_start, Geometry g,
                                         scalar_t* __restrict__ grad_value) {
  using T = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const int64_t rows = g.N * g.S * g.M;
  if (t >= rows * g.D) return;
  const int64_t r = t / g.D, ch = t % g.D;
  T acc = 0;
  for (int64_t j = row_start[r]; j < row_start[r + 1]; ++j) {
    const int64_t e = order[j], s = e / 4;
    const int k = static_cast<int>(e % 4);
    const int64_t l = (s / g.P) % g.L, qm = s / (g.P * g.L);
    const Corners<T> cr(loc[2 * s], loc[2 * s + 1], levels.h[l], levels.w[l]);
    acc += attn[s] * cr.weight(k) * static_cast<T>(grad_out[qm * g.D + ch]);
  }
  grad_value[t] = static_cast<scalar_t>(acc);
}

Geometry geometry(const at::Tensor& value, const at::Tensor& loc, bool aligned) {
  Geometry g{value.size(0), value.size(1), value.size(2), value.size(3), loc.size(1), loc.size(3), loc.size(4), 1, 1, 0};
  const int vec = static_cast<int>(16 / value.element_size());
  g.vec = (aligned && g.D % vec == 0) ? vec : 1;
  g.chunks = g.D / g.vec;
  int group = 1;
  while (group < 32 && group < g.chunks) group *= 2;
  g.group = group;
  return g;
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

Levels levels_by_value(const std::vector<int64_t>& lv) {
  const int64_t L = static_cast<int64_t>(lv.size()) / 3;
  TORCH_CHECK_VALUE(L <= kMaxLevels, "the CUDA kernel takes at most ", kMaxLevels, " levels; got ", L);
  Levels out{};
  for (int64_t l = 0; l < L; ++l) out.h[l] = lv[3 * l], out.w[l] = lv[3 * l + 1], out.start[l] = lv[3 * l + 2];
  return out;
}

int64_t blocks(int64_t threads) { return (threads + kThreads - 1) / kThreads; }

// Checked inputs on the device: value contiguous in its dtype, locations and weights in the math
// type (float32, or float64 for float64 values), level table (H, W, start) by value.
struct Inputs {
  at::Tensor value, loc, attn;
  Levels levels;
  at::ScalarType math_type;
  Inputs(const at::Tensor& value_in, const at::Tensor& shapes, const at::Tensor& starts, const at::Tensor& loc_in,
         const at::Tensor& attn_in) {
    // Checked before the caller's device guard: a CPU tensor here is an error, not a guard assert.
    TORCH_CHECK_VALUE(value_in.is_cuda(), "value must be a CUDA tensor here (all inputs on one device); got ",
                      value_in.device());
    const std::vector<int64_t> lv = check_inputs(value_in, shapes, starts, loc_in, attn_in);
    value = value_in.contiguous();
    math_type = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    loc = loc_in.to(math_type).contiguous();
    attn = attn_in.to(math_type).contiguous();
    levels = levels_by_value(lv);
  }
};

// geometry() picks vec = 16 bytes of scalar_t, or 1: instantiate exactly those two widths.
#define SSRVG_VEC_SWITCH(vec, ...)                                           \
  if ((vec) > 1) {                                                           \
    constexpr int VEC = 16 / sizeof(scalar_t);                               \
    __VA_ARGS__;                                                             \
  } else {                                                                   \
    constexpr int VEC = 1;                                                   \
    __VA_ARGS__;                                                             \
  }

at::Tensor forward_cuda(const at::Tensor& value_in, const at::Tensor& shapes, const at::Tensor& starts,
                        const at::Tensor& loc_in, const at::Tensor& attn_in) {
  const Inputs in(value_in, shapes, starts, loc_in, attn_in);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor &value = in.value, &loc = in.loc, &attn = in.attn;
  const Geometry g = geometry(value, loc, aligned16(value));
  at::Tensor out = at::empty({g.N, g.Lq, g.M * g.D}, value.options());
  const int64_t threads = g.N * g.Lq * g.M * g.group;
  if (threads == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    SSRVG_VEC_SWITCH(g.vec, {
      forward_kernel<scalar_t, VEC><<<blocks(threads), kThreads, 0, stream>>>(
          value.data_ptr<scalar_t>(), in.levels, loc.data_ptr<T>(), attn.data_ptr<T>(), g,
          out.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out_in, const at::Tensor& value_in,
                                                             const at::Tensor& shapes, const at::Tensor& starts,
                                                             const at::Tensor& loc_in, const at::Tensor& attn_in) {
  const Inputs in(value_in, shapes, starts, loc_in, attn_in);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor &value = in.value, &loc = in.loc, &attn = in.attn;
  const auto mt = in.math_type;
  TORCH_CHECK_VALUE(grad_out_in.device() == value.device(), "grad_output must be on the device of value; got ",
                    grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.to(value.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(grad_out.dim() == 3 && grad_out.size(0) == value.size(0) && grad_out.size(1) == loc.size(1) &&
                        grad_out.size(2) == value.size(2) * value.size(3),
                    "grad_output must have shape (N, Lq, M*D); got ", grad_out.sizes());
  const Geometry g = geometry(value, loc, aligned16(value) && aligned16(grad_out));
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  at::Tensor grad_loc = at::zeros(loc.sizes(), loc.options());
  at::Tensor grad_attn = at::zeros(attn.sizes(), attn.options());
  at::Tensor grad_value_acc = deterministic ? at::Tensor() : at::zeros(value.sizes(), value.options().dtype(mt));
  at::Tensor grad_value;
  const int64_t threads = g.N * g.Lq * g.M * g.group;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    if (threads > 0) {
      SSRVG_VEC_SWITCH(g.vec, {
        if (deterministic) {
          backward_kernel<scalar_t, VEC, false><<<blocks(threads), kThreads, 0, stream>>>(
              value.data_ptr<scalar_t>(), in.levels, loc.data_ptr<T>(), attn.data_ptr<T>(),
              grad_out.data_ptr<scalar_t>(), g, nullptr, grad_loc.data_ptr<T>(), grad_attn.data_ptr<T>());
        } else {
          backward_kernel<scalar_t, VEC, true><<<blocks(threads), kThreads, 0, stream>>>(
              value.data_ptr<scalar_t>(), in.levels, loc.data_ptr<T>(), attn.data_ptr<T>(),
              grad_out.data_ptr<scalar_t>(), g, grad_value_acc.data_ptr<T>(), grad_loc.data_ptr<T>(),
              grad_attn.data_ptr<T>());
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    }
    if (!deterministic) {
      grad_value = grad_value_acc.to(value.scalar_type());
      return;
    }
    grad_value = at::empty(value.sizes(), value.options());
    const int64_t entries = g.N * g.Lq * g.M * g.L * g.P * 4, rows = g.N * g.S * g.M;
    at::Tensor keys = at::empty({entries}, value.options().dtype(at::kLong));
    if (entries > 0) {
      corner_keys_kernel<T><<<blocks(entries), kThreads, 0, stream>>>(in.levels, loc.data_ptr<T>(), g,
                                                                      keys.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor row_start = at::searchsorted(sorted, at::arange(rows + 1, keys.options()));
    if (rows * g.D > 0) {
      gather_value_grad_kernel<scalar_t><<<blocks(rows * g.D), kThreads, 0, stream>>>(
          in.levels, loc.data_ptr<T>(), attn.data_ptr<T>(), grad_out.data_ptr<scalar_t>(),
          order.data_ptr<int64_t>(), row_start.data_ptr<int64_t>(), g, grad_value.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_value, grad_loc.to(loc_in.scalar_type()), grad_attn.to(attn_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, CUDA, m) {
  m.impl("ms_deform_attn", &forward_cuda);
  m.impl("ms_deform_attn_backward", &backward_cuda);
}

}  // namespace msda
}  // namespace ssrvg
