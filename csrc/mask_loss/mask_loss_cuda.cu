// CUDA kernels of the fused upsampled mask loss and of the fused inference path (mask_loss.h).
//
// Forward: a fixed number of blocks per mask (set by the shape only), each taking whole target
// rows, accumulate the five sums in the math type, reduce with warp shuffles, and write per-block
// partials; a second kernel adds them in double in a fixed order. No atomics: bit-identical from
// run to run.
// Backward: a block per (b, Y) computes the row's dL/dz once into shared memory and gathers it
// along x into R (B, H, w) (rows too wide for shared memory: a thread per (b, Y, j) recomputes
// its taps); thread per (b, i, j) gathers R along y. Nothing of size H x W is allocated.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "mask_loss.h"

namespace ssrvg {
namespace mask_loss {
namespace {

constexpr int kThreads = 256;
constexpr int kPixelsPerThread = 16;
constexpr int kMaxBlocksPerMask = 512;
constexpr size_t kMaxRowBytes = 48 * 1024;  // dL/dz of one target row in shared memory (default limit)

template <typename T>
__device__ inline T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  return v;
}

// The focal term's (1 - p_t)^gamma as the CPU computes it: gamma 0 and 2 without pow.
#define SSRVG_GAMMA_SWITCH(gamma, ...)          \
  switch (gamma_kind(gamma)) {                  \
    case kGammaZero: {                          \
      constexpr int G = kGammaZero;             \
      __VA_ARGS__;                              \
      break;                                    \
    }                                           \
    case kGammaTwo: {                           \
      constexpr int G = kGammaTwo;              \
      __VA_ARGS__;                              \
      break;                                    \
    }                                           \
    default: {                                  \
      constexpr int G = kGammaAny;              \
      __VA_ARGS__;                              \
    }                                           \
  }

// alpha / gamma arrive in the math type (float64 for float64 logits), as on the CPU.
template <typename scalar_t, int G>
__global__ void sums_kernel(const scalar_t* __restrict__ logits, const uint8_t* __restrict__ targets,
                            const uint8_t* __restrict__ valid, int64_t h, int64_t w, int64_t H, int64_t W,
                            at::opmath_type<scalar_t> alpha, at::opmath_type<scalar_t> gamma, int blocks_per_mask,
                            at::opmath_type<scalar_t>* __restrict__ partials) {
  using T = at::opmath_type<scalar_t>;
  const int64_t b = blockIdx.y;
  const T sy = static_cast<T>(h) / static_cast<T>(H), sx = static_cast<T>(w) / static_cast<T>(W);
  const scalar_t* v = logits + b * h * w;
  const uint8_t* tg = targets + b * H * W;
  const uint8_t* vd = valid ? valid + b * H * W : nullptr;
  T acc[kSums] = {0, 0, 0, 0, 0};
  // Block k of a mask takes rows k, k + blocks_per_mask, ...; its threads stride over a row's
  // columns (the row's source taps once per row, no per-pixel index division).
  for (int64_t Y = blockIdx.x; Y < H; Y += blocks_per_mask) {
    const Lerp<T> ly = source_index<T>(Y, sy, h);
    const uint8_t* trow = tg + Y * W;
    const uint8_t* vrow = vd ? vd + Y * W : nullptr;
    for (int64_t X = threadIdx.x; X < W; X += blockDim.x) {
      if (vrow && !vrow[X]) continue;
      const T z = interp(v, w, ly, source_index<T>(X, sx, w));
      const T t = trow[X] ? T(1) : T(0);
      const Pixel<G, StdMath, T> px(z, t);
      acc[0] += px.p * t;
      acc[1] += px.p;
      acc[2] += t;
      acc[3] += px.bce;
      if (G != kNoFocal) acc[4] += px.focal(t, alpha, gamma);
    }
  }
  __shared__ T warp_acc[kThreads / 32][kSums];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int s = 0; s < kSums; ++s) {
    const T r = warp_sum(acc[s]);
    if (lane == 0) warp_acc[warp][s] = r;
  }
  __syncthreads();
  if (threadIdx.x < kSums) {
    T r = 0;
    for (int i = 0; i < kThreads / 32; ++i) r += warp_acc[i][threadIdx.x];
    partials[(b * blocks_per_mask + blockIdx.x) * kSums + threadIdx.x] = r;
  }
}

template <typename T, typename out_t>
__global__ void finish_sums_kernel(const T* __restrict__ partials, int64_t B, int blocks_per_mask, out_t* __restrict__ out) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= B * kSums) return;
  const int64_t b = t / kSums, s = t % kSums;
  double r = 0;
  for (int i = 0; i < blocks_per_mask; ++i) r += static_cast<double>(partials[(b * blocks_per_mask + i) * kSums + s]);
  out[t] = static_cast<out_t>(r);
}

template <typename scalar_t, int G>
void launch_sums(dim3 grid, cudaStream_t stream, const scalar_t* logits, const uint8_t* targets, const uint8_t* valid,
                 int64_t h, int64_t w, int64_t H, int64_t W, double alpha, double gamma, int blocks,
                 at::opmath_type<scalar_t>* partials) {
  using T = at::opmath_type<scalar_t>;
  sums_kernel<scalar_t, G><<<grid, kThreads, 0, stream>>>(logits, targets, valid, h, w, H, W, static_cast<T>(alpha),
                                                          static_cast<T>(gamma), blocks, partials);
}

// The (B, 5) sums (float32, float64 for float64 logits); focal = false leaves the focal sum 0 and
// does not compute it. The caller holds the device guard.
at::Tensor sums_impl(const LossInputs& in, double alpha, double gamma, bool focal) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor& logits = in.logits;
  const int64_t B = in.B, h = in.h, w = in.w, H = in.H, W = in.W;
  const int64_t per_block = (int64_t)kThreads * kPixelsPerThread;
  const int blocks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>({kMaxBlocksPerMask, H, (H * W + per_block - 1) / per_block})));
  const bool is_double = logits.scalar_type() == at::kDouble;
  at::Tensor out = at::empty({B, kSums}, logits.options().dtype(is_double ? at::kDouble : at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "upsampled_mask_sums_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    at::Tensor partials = at::empty({B, blocks, kSums}, logits.options().dtype(c10::CppTypeToScalarType<T>::value));
    if (B == 0) return;
    // grid.y (masks) is at most 65535: launch in chunks of masks, pointers offset per chunk.
    const uint8_t* vd = in.valid_data();
    for (int64_t b0 = 0; b0 < B; b0 += 65535) {
      const int64_t nb = std::min<int64_t>(65535, B - b0);
const scalar_t* lg = logits.data_ptr<scalar_t>() + b0 * h * w;
      const uint8_t* tg = in.target_data() + b0 * H * W;
      const uint8_t* vb = vd ? vd + b0 * H * W : nullptr;
      T* part = partials.data_ptr<T>() + b0 * blocks * kSums;
      const dim3 grid(blocks, (unsigned)nb);
      if (focal) {
        SSRVG_GAMMA_SWITCH(gamma, launch_sums<scalar_t, G>(grid, stream, lg, tg, vb, h, w, H, W, alpha, gamma, blocks,
                                                           part));
      } else {
        launch_sums<scalar_t, kNoFocal>(grid, stream, lg, tg, vb, h, w, H, W, alpha, gamma, blocks, part);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t n = B * kSums;
    if (is_double) {
      finish_sums_kernel<T, double><<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(partials.data_ptr<T>(), B, blocks, out.data_ptr<double>());
    } else {
      finish_sums_kernel<T, float><<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(partials.data_ptr<T>(), B, blocks, out.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor sums_cuda(const at::Tensor& logits_in, const at::Tensor& targets_in,
                     const c10::optional<at::Tensor>& valid_in, double alpha, double gamma) {
  const LossInputs in(logits_in, targets_in, valid_in, alpha, gamma);
  TORCH_CHECK_VALUE(logits_in.is_cuda(), "logits must be a CUDA tensor here; got ", logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  return sums_impl(in, alpha, gamma, /*focal=*/true);
}

// ranges[i] = (first, last) output index whose bilinear taps touch input index i (output_range),
// once per input row / column instead of once per (mask, row, column).
template <typename T>
__global__ void ranges_kernel(int64_t in, int64_t out, int64_t* __restrict__ ranges) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= in) return;
  output_range<T>(i, static_cast<T>(in) / static_cast<T>(out), in, out, ranges + 2 * i, ranges + 2 * i + 1);
}

// R[b, Y, j] = sum over the output columns X that read column j of tap_weight * dL/dz(Y, X).
template <typename scalar_t, int G>
__global__ void gather_x_kernel(const scalar_t* __restrict__ logits, const uint8_t* __restrict__ targets,
                                const uint8_t* __restrict__ valid, const at::opmath_type<scalar_t>* __restrict__ grad,
                                int64_t B, int64_t h, int64_t w, int64_t H, int64_t W, at::opmath_type<scalar_t> alpha,
                                at::opmath_type<scalar_t> gamma, const int64_t* __restrict__ xranges,
                                at::opmath_type<scalar_t>* __restrict__ R) {
  using T = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= B * H * w) return;
  const int64_t j = t % w, Y = (t / w) % H, b = t / (w * H);
  const T sy = static_cast<T>(h) / static_cast<T>(H), sx = static_cast<T>(w) / static_cast<T>(W);
  const Lerp<T> ly = source_index<T>(Y, sy, h);
  const scalar_t* v = logits + b * h * w;
  const uint8_t* trow = targets + (b * H + Y) * W;
  const uint8_t* vrow = valid ? valid + (b * H + Y) * W : nullptr;
  const T* g = grad + b * kSums;
  const int64_t x0 = xranges[2 * j], x1 = xranges[2 * j + 1];
  T acc = 0;
  for (int64_t X = x0; X <= x1; ++X) {
    if (vrow && !vrow[X]) continue;
    const Lerp<T> lx = source_index<T>(X, sx, w);
    const T z = interp(v, w, ly, lx);
    const T t = trow[X] ? T(1) : T(0);
    acc += tap_weight(lx, j) * Pixel<G, StdMath, T>(z, t).dz(t, g, alpha, gamma);
  }
  R[t] = acc;
}

// The same R, a block per (b, Y): dL/dz of the row's W pixels is computed once into shared memory
// (the per-column kernel above evaluates each pixel for both columns it reads), then each column
// j gathers its taps in the same order. Used when the row fits in shared memory.
template <typename scalar_t, int G>
__global__ void gather_x_row_kernel(const scalar_t* __restrict__ logits, const uint8_t* __restrict__ targets,
                                    const uint8_t* __restrict__ valid, const at::opmath_type<scalar_t>* __restrict__ grad,
                                    int64_t h, int64_t w, int64_t H, int64_t W, at::opmath_type<scalar_t> alpha,
                                    at::opmath_type<scalar_t> gamma, const int64_t* __restrict__ xranges,
                                    at::opmath_type<scalar_t>* __restrict__ R) {
  using T = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char row_smem[];
  T* dz = reinterpret_cast<T*>(row_smem);
  const int64_t Y = blockIdx.x, b = blockIdx.y;
  const T sy = static_cast<T>(h) / static_cast<T>(H), sx = static_cast<T>(w) / static_cast<T>(W);
  const Lerp<T> ly = source_index<T>(Y, sy, h);
  const scalar_t* v = logits + b * h * w;
  const uint8_t* trow = targets + (b * H + Y) * W;
  const uint8_t* vrow = valid ? valid + (b * H + Y) * W : nullptr;
  const T* g = grad + b * kSums;
  for (int64_t X = threadIdx.x; X < W; X += blockDim.x) {
    T d = 0;
    if (!vrow || vrow[X]) {
      const T z = interp(v, w, ly, source_index<T>(X, sx, w));
      const T t = trow[X] ? T(1) : T(0);
      d = Pixel<G, StdMath, T>(z, t).dz(t, g, alpha, gamma);
    }
    dz[X] = d;
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j < w; j += blockDim.x) {
    const int64_t x0 = xranges[2 * j], x1 = xranges[2 * j + 1];
    T acc = 0;
    for (int64_t X = x0; X <= x1; ++X) acc += tap_weight(source_index<T>(X, sx, w), j) * dz[X];
    R[(b * H + Y) * w + j] = acc;
  }
}

template <typename scalar_t>
__global__ void gather_y_kernel(const at::opmath_type<scalar_t>* __restrict__ R, int64_t B, int64_t h, int64_t w,
                                int64_t H, const int64_t* __restrict__ yranges, scalar_t* __restrict__ grad_logits) {
  using T = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= B * h * w) return;
  const int64_t j = t % w, i = (t / w) % h, b = t / (w * h);
  const T sy = static_cast<T>(h) / static_cast<T>(H);
  const int64_t y0 = yranges[2 * i], y1 = yranges[2 * i + 1];
  T acc = 0;
  for (int64_t Y = y0; Y <= y1; ++Y) acc += tap_weight(source_index<T>(Y, sy, h), i) * R[(b * H + Y) * w + j];
  grad_logits[t] = static_cast<scalar_t>(acc);
}

at::Tensor sums_backward_cuda(const at::Tensor& grad_in, const at::Tensor& logits_in, const at::Tensor& targets_in,
                              const c10::optional<at::Tensor>& valid_in, double alpha, double gamma) {
  const LossInputs in(logits_in, targets_in, valid_in, alpha, gamma);
  TORCH_CHECK_VALUE(logits_in.is_cuda(), "logits must be a CUDA tensor here; got ", logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor& logits = in.logits;
  const int64_t B = in.B, h = in.h, w = in.w, H = in.H, W = in.W;
  in.check_grad(grad_in);
  at::Tensor grad_logits = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "upsampled_mask_sums_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto topt = logits.options().dtype(c10::CppTypeToScalarType<T>::value);
    const at::Tensor g = grad_in.to(topt).contiguous();
    at::Tensor R = at::empty({B, H, w}, topt);
    if (R.numel() == 0) return;
    at::Tensor xranges = at::empty({w, 2}, logits.options().dtype(at::kLong));
    at::Tensor yranges = at::empty({h, 2}, logits.options().dtype(at::kLong));
    ranges_kernel<T><<<(w + kThreads - 1) / kThreads, kThreads, 0, stream>>>(w, W, xranges.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ranges_kernel<T><<<(h + kThreads - 1) / kThreads, kThreads, 0, stream>>>(h, H, yranges.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const size_t row_bytes = static_cast<size_t>(W) * sizeof(T);
    if (row_bytes <= kMaxRowBytes && H <= std::numeric_limits<int>::max()) {
      // grid.y (masks) is at most 65535: launch in chunks of masks, pointers offset per chunk.
      for (int64_t b0 = 0; b0 < B; b0 += 65535) {
        const int64_t nb = std::min<int64_t>(65535, B - b0);
        SSRVG_GAMMA_SWITCH(gamma, gather_x_row_kernel<scalar_t, G><<<dim3((unsigned)H, (unsigned)nb), kThreads, row_bytes, stream>>>(
            logits.data_ptr<scalar_t>() + b0 * h * w, in.target_data() + b0 * H * W,
            in.valid_data() ? in.valid_data() + b0 * H * W : nullptr, g.data_ptr<T>() + b0 * kSums, h, w, H, W,
            static_cast<T>(alpha), static_cast<T>(gamma), xranges.data_ptr<int64_t>(), R.data_ptr<T>() + b0 * H * w));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    } else {
      SSRVG_GAMMA_SWITCH(gamma, gather_x_kernel<scalar_t, G><<<(R.numel() + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          logits.data_ptr<scalar_t>(), in.target_data(), in.valid_data(), g.data_ptr<T>(), B, h, w, H, W,
          static_cast<T>(alpha), static_cast<T>(gamma), xranges.data_ptr<int64_t>(), R.data_ptr<T>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    gather_y_kernel<scalar_t><<<(grad_logits.numel() + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        R.data_ptr<T>(), B, h, w, H, yranges.data_ptr<int64_t>(), grad_logits.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_logits;
}

template <typename scalar_t>
__global__ void postprocess_kernel(const scalar_t* __restrict__ logits, int64_t B, int64_t h, int64_t w, int64_t in_h,
                                   int64_t in_w, int64_t crop_h, int64_t crop_w, int64_t out_h, int64_t out_w,
                                   at::opmath_type<scalar_t> threshold, uint8_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= B * out_h * out_w) return;
  const int64_t X = t % out_w, Y = (t / out_w) % out_h, b = t / (out_w * out_h);
  const T s1y = static_cast<T>(h) / static_cast<T>(in_h), s1x = static_cast<T>(w) / static_cast<T>(in_w);
  const T s2y = static_cast<T>(crop_h) / static_cast<T>(out_h), s2x = static_cast<T>(crop_w) / static_cast<T>(out_w);
  const Lerp<T> ly = source_index<T>(Y, s2y, crop_h), lx = source_index<T>(X, s2x, crop_w);
  const Lerp<T> ay0 = source_index<T>(ly.i0, s1y, h), ay1 = source_index<T>(ly.i1, s1y, h);
  const Lerp<T> ax0 = source_index<T>(lx.i0, s1x, w), ax1 = source_index<T>(lx.i1, s1x, w);
  const T z = resize_of_upsample(logits + b * h * w, w, ly, lx, ay0, ay1, ax0, ax1);
  out[t] = z > threshold ? 1 : 0;
}

at::Tensor postprocess_cuda(const at::Tensor& logits_in, int64_t in_h, int64_t in_w, int64_t crop_h, int64_t crop_w,
                            int64_t out_h, int64_t out_w, double threshold) {
  check_postprocess(logits_in, in_h, in_w, crop_h, crop_w, out_h, out_w, threshold);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t B = logits.size(0), h = logits.size(1), w = logits.size(2);
  at::Tensor out = at::empty({B, out_h, out_w}, logits.options().dtype(at::kByte));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "mask_postprocess_cuda", [&] {
    postprocess_kernel<scalar_t><<<(out.numel() + kThreads - 1) / kThreads, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        logits.data_ptr<scalar_t>(), B, h, w, in_h, in_w, crop_h, crop_w, out_h, out_w,
        static_cast<at::opmath_type<scalar_t>>(threshold),
        out.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// One block: each thread takes masks b = tid, tid + blockDim, ... (their stats rows and terms), then
// a fixed-order tree reduction in double; thread 0 writes the values and the loss. No atomics.
template <typename out_t>
__global__ void combine_kernel(const out_t* __restrict__ sums, const double* __restrict__ counts, double pixels,
                               int64_t B, TermWeights tw, out_t* __restrict__ stats, out_t* __restrict__ values,
                               out_t* __restrict__ loss) {
  __shared__ double part[kThreads][kTerms];
  double acc[kTerms] = {0, 0, 0, 0};
  for (int64_t b = threadIdx.x; b < B; b += blockDim.x) {
    double s[kStats];
    for (int k = 0; k < kSums; ++k) s[k] = static_cast<double>(sums[b * kSums + k]);
    s[kSums] = counts ? counts[b] : pixels;
    for (int k = 0; k < kStats; ++k) stats[b * kStats + k] = static_cast<out_t>(s[k]);
    for (int k = 0; k < kTerms; ++k)
      if (tw.want[k]) acc[k] += mask_term<double>(k, s);
  }
  for (int k = 0; k < kTerms; ++k) part[threadIdx.x][k] = acc[k];
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride)
      for (int k = 0; k < kTerms; ++k) part[threadIdx.x][k] += part[threadIdx.x + stride][k];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double l = 0;
    for (int k = 0; k < kTerms; ++k) {
      const double v = tw.want[k] ? part[0][k] / tw.num_masks : 0.0;
      values[k] = static_cast<out_t>(v);
      l += tw.weight[k] * v;
    }
    *loss = static_cast<out_t>(l);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> loss_cuda(const at::Tensor& logits_in, const at::Tensor& targets_in,
                                                         const c10::optional<at::Tensor>& valid_in,
                                                         at::IntArrayRef terms, at::ArrayRef<double> weights,
                                                         double alpha, double gamma, double num_masks) {
  const LossInputs in(logits_in, targets_in, valid_in, alpha, gamma);
  const TermWeights tw = check_terms(terms, weights, num_masks);
  TORCH_CHECK_VALUE(logits_in.is_cuda(), "logits must be a CUDA tensor here; got ", logits_in.device());
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor sums = sums_impl(in, alpha, gamma, tw.focal());
  at::Tensor counts;  // valid pixels per mask, only where a mean term needs them
  if (tw.pixel_count() && in.valid.defined()) counts = in.valid.flatten(1).sum(1, /*keepdim=*/false, at::kDouble);
  const auto opts = sums.options();
  at::Tensor stats = at::empty({in.B, kStats}, opts), values = at::empty({kTerms}, opts), loss = at::empty({}, opts);
  const double pixels = static_cast<double>(in.H) * static_cast<double>(in.W);
  AT_DISPATCH_FLOATING_TYPES(sums.scalar_type(), "upsampled_mask_loss_cuda", [&] {
    combine_kernel<scalar_t><<<1, kThreads, 0, stream>>>(sums.data_ptr<scalar_t>(),
                                                        counts.defined() ? counts.data_ptr<double>() : nullptr, pixels,
                                                        in.B, tw, stats.data_ptr<scalar_t>(),
                                                        values.data_ptr<scalar_t>(), loss.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, values, stats};
}

// Per mask: d(loss)/d(sums) (B, 5) from its stats and the incoming gradients (read on the device:
// no host synchronisation).
template <typename T>
__global__ void loss_grad_kernel(const T* __restrict__ grad_loss, const T* __restrict__ grad_values,
                                 const T* __restrict__ stats, int64_t B, TermWeights tw, double* __restrict__ g) {
  const int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (b >= B) return;
  double gv[kTerms], c[kTerms], s[kStats];
  for (int k = 0; k < kTerms; ++k) gv[k] = static_cast<double>(grad_values[k]);
  for (int k = 0; k < kStats; ++k) s[k] = static_cast<double>(stats[b * kStats + k]);
  term_coefficients<double>(tw, static_cast<double>(*grad_loss), gv, c);
  mask_term_grad<double>(c, s, g + b * kSums);
}

at::Tensor loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& grad_values, const at::Tensor& stats_in,
                              const at::Tensor& logits, const at::Tensor& targets,
                              const c10::optional<at::Tensor>& valid, at::IntArrayRef terms,
                              at::ArrayRef<double> weights, double alpha, double gamma, double num_masks) {
  check_inputs(logits, targets, valid);
  const TermWeights tw = check_terms(terms, weights, num_masks);
  check_loss_grads(grad_loss, grad_values, stats_in, logits);
  TORCH_CHECK_VALUE(logits.is_cuda(), "logits must be a CUDA tensor here; got ", logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = logits.size(0);
  const at::Tensor stats = stats_in.contiguous();
  const at::Tensor gl = grad_loss.to(stats.scalar_type()).contiguous();
  const at::Tensor gv = grad_values.to(stats.scalar_type()).contiguous();
  at::Tensor g = at::empty({B, kSums}, logits.options().dtype(at::kDouble));
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "upsampled_mask_loss_backward_cuda", [&] {
      loss_grad_kernel<scalar_t><<<(B + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          gl.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(), B, tw, g.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return sums_backward_cuda(g, logits, targets, valid, alpha, gamma);
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, CUDA, m) {
  m.impl("upsampled_mask_sums", &sums_cuda);
  m.impl("upsampled_mask_sums_backward", &sums_backward_cuda);
  m.impl("upsampled_mask_loss", &loss_cuda);
  m.impl("upsampled_mask_loss_backward", &loss_backward_cuda);
  m.impl("mask_postprocess", &postprocess_cuda);
}

}  // namespace mask_loss
}  // namespace ssrvg
