// CUDA kernels of the COCO RLE ops that work on pixels: encode, decode and pairwise mask IoU.
// (The string, bbox, merge and RLE-IoU ops work on host-side RLEs and have CPU kernels only.)
//
// Encode: COCO reads pixels column-major while the tensor is row-major, so one thread owns one
// column (n, x) and walks its rows: a warp reads 32 neighbouring bytes of a row per step
// (coalesced), and the column's run boundaries come out in COCO order. Two passes: count the
// boundaries per column, scan, write them; a last elementwise pass turns boundaries into counts.

#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "rle.h"

namespace ssrvg {
namespace rle {
namespace {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

// Number of run boundaries inside column (n, x): positions k in [x*h, (x+1)*h) whose pixel differs
// from the previous pixel in column-major order (the pixel before k = 0 counts as background).
__global__ void column_boundaries_count(const uint8_t* __restrict__ masks, int64_t n, int64_t h,
                                        int64_t w, int64_t* __restrict__ col_counts) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= n * w) return;
  const int64_t i = t / w, x = t % w;
  const uint8_t* d = masks + i * h * w;
  bool prev = x == 0 ? false : (h > 0 && d[(h - 1) * w + x - 1] != 0);
  int64_t c = 0;
  for (int64_t y = 0; y < h; ++y) {
    const bool v = d[y * w + x] != 0;
    c += v != prev;
    prev = v;
  }
  col_counts[t] = c;
}

// Writes the boundary positions of column (n, x) at its slot. `col_end` is the inclusive scan of
// the column counts over all (n, x); mask n's boundaries are stored after n extra slots (one per
// earlier mask, for the final count), i.e. at out_offsets[n] + local index.
__global__ void column_boundaries_write(const uint8_t* __restrict__ masks, int64_t n, int64_t h,
                                        int64_t w, const int64_t* __restrict__ col_end,
                                        const int64_t* __restrict__ col_counts,
                                        int64_t* __restrict__ pos) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= n * w) return;
  const int64_t i = t / w, x = t % w;
  const uint8_t* d = masks + i * h * w;
  int64_t slot = col_end[t] - col_counts[t] + i;
  bool prev = x == 0 ? false : (h > 0 && d[(h - 1) * w + x - 1] != 0);
  for (int64_t y = 0; y < h; ++y) {
    const bool v = d[y * w + x] != 0;
    if (v != prev) pos[slot++] = x * h + y;
    prev = v;
  }
}

// counts[j] = end of run j - start of run j, where run j of mask n starts at its j-th boundary
// (0 for j = 0) and ends at the next boundary (h*w for the last run).
__global__ void boundaries_to_counts(const int64_t* __restrict__ pos,
                                     const int64_t* __restrict__ offsets, int64_t n, int64_t hw,
                                     int64_t total, int64_t* __restrict__ counts) {
  const int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (j >= total) return;
  // Which mask owns slot j: binary search in offsets (n + 1 entries).
  int64_t lo = 0, hi = n;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (offsets[mid] <= j) lo = mid; else hi = mid;
  }
  const int64_t first = offsets[lo], last = offsets[lo + 1] - 1;
  const int64_t end = j == last ? hw : pos[j];
  const int64_t start = j == first ? 0 : pos[j - 1];
  counts[j] = end - start;
}

std::tuple<at::Tensor, at::Tensor> rle_encode_cuda(const at::Tensor& masks_in) {
  check_masks(masks_in, "masks");
  TORCH_CHECK_VALUE(masks_in.is_cuda(), "rle_encode: masks must be a CUDA tensor here; got ", masks_in.device());
  const c10::cuda::CUDAGuard guard(masks_in.device());
  const at::Tensor masks = masks_in.contiguous();
  const int64_t n = masks.size(0), h = masks.size(1), w = masks.size(2);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto lopt = masks.options().dtype(at::kLong);
  const uint8_t* data = static_cast<const uint8_t*>(masks.data_ptr());

  at::Tensor col_counts = at::empty({n * w}, lopt);
  if (n * w > 0) {
    column_boundaries_count<<<blocks_for(n * w), kThreads, 0, stream>>>(data, n, h, w,
                                                                        col_counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // Boundaries per mask -> output offsets (one more count than boundaries per mask).
  at::Tensor per_mask = n * w > 0 ? col_counts.view({n, w}).sum(1) : at::zeros({n}, lopt);
  at::Tensor offsets = at::zeros({n + 1}, lopt);
  if (n > 0) offsets.slice(0, 1).copy_(at::cumsum(per_mask.add(1), 0));
  const int64_t total = n > 0 ? offsets[n].item<int64_t>() : 0;  // syncs: output size is data-dependent

  at::Tensor pos = at::empty({total}, lopt);
  if (n * w > 0) {
    at::Tensor col_end = at::cumsum(col_counts, 0);
    column_boundaries_write<<<blocks_for(n * w), kThreads, 0, stream>>>(
        data, n, h, w, col_end.data_ptr<int64_t>(), col_counts.data_ptr<int64_t>(),
        pos.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  at::Tensor counts = at::empty({total}, lopt);
  if (total > 0) {
    boundaries_to_counts<<<blocks_for(total), kThreads, 0, stream>>>(
        pos.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), n, h * w, total,
        counts.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {counts, offsets};
}

// One thread per output pixel (row-major, coalesced writes): its column-major index is found by
// binary search in the running ends of its mask's runs. Reads stay inside the mask's own counts
// whatever they hold, so malformed counts cannot cause an out-of-bounds access.
__global__ void decode_kernel(const int64_t* __restrict__ ends, const int64_t* __restrict__ offsets,
                              int64_t n, int64_t h, int64_t w, uint8_t* __restrict__ out) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= n * h * w) return;
  const int64_t i = t / (h * w), r = t % (h * w);
  const int64_t y = r / w, x = r % w, k = x * h + y;
  const int64_t first = offsets[i], last = offsets[i + 1];
  const int64_t base = first > 0 ? ends[first - 1] : 0;
  int64_t lo = first, hi = last;  // first j in [first, last) with ends[j] - base > k
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (ends[mid] - base > k) hi = mid; else lo = mid + 1;
  }
  out[t] = (lo < last) ? static_cast<uint8_t>((lo - first) & 1) : 0;
}

at::Tensor rle_decode_cuda(const at::Tensor& counts_in, const at::Tensor& offsets, int64_t h,
                           int64_t w) {
  check_int64_1d(counts_in, "counts");
  check_int64_1d(offsets, "offsets");
  // Checked before any guard: a CPU tensor here would make the CUDA guard fail with an internal
  // assert rather than this error.
  TORCH_CHECK_VALUE(counts_in.is_cuda() && offsets.device() == counts_in.device(),
                    "rle_decode: counts and offsets must be on one CUDA device; got ",
                    counts_in.device(), " and ", offsets.device());
  // The same full validation as the CPU kernel, on the host: counts are a few numbers per run,
  // far fewer than the pixels written.
  check_decode_host(counts_in.cpu(), offsets.cpu(), h, w);
  const int64_t n = offsets.numel() - 1;
  const c10::cuda::CUDAGuard guard(counts_in.device());
  const at::Tensor counts = counts_in.contiguous();
  const at::Tensor dev_offsets = offsets.contiguous();
  const at::Tensor ends = at::cumsum(counts, 0);
  at::Tensor out = at::empty({n, h, w}, counts.options().dtype(at::kByte));
  if (out.numel() > 0) {
    decode_kernel<<<blocks_for(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        ends.data_ptr<int64_t>(), dev_offsets.data_ptr<int64_t>(), n, h, w,
        out.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// ---- pairwise IoU: rows packed into 64-bit words, then tiled AND + popcount ----
__global__ void pack_kernel(const uint8_t* __restrict__ masks, int64_t rows, int64_t w,
                            int64_t wpr, unsigned long long* __restrict__ words) {
  const int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (t >= rows * wpr) return;
  const int64_t row = t / wpr, k = t % wpr;
  const uint8_t* src = masks + row * w + 64 * k;
  const int64_t x_end = min((int64_t)64, w - 64 * k);
  unsigned long long word = 0;
  for (int64_t x = 0; x < x_end; ++x) word |= (unsigned long long)(src[x] != 0) << x;
  words[t] = word;
}

__global__ void area_kernel(const unsigned long long* __restrict__ words, int64_t per_mask,
                            int64_t first, int64_t* __restrict__ area) {
  __shared__ int64_t partial[kThreads];
  const int64_t i = first + blockIdx.x;
  int64_t s = 0;
  for (int64_t k = threadIdx.x; k < per_mask; k += blockDim.x) s += __popcll(words[i * per_mask + k]);
  partial[threadIdx.x] = s;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) area[i] = partial[0];
}

constexpr int kTile = 16;   // 16 x 16 pairs per block
constexpr int kChunk = 32;  // words staged in shared memory per step

__global__ void pair_iou_kernel(const unsigned long long* __restrict__ a,
                                const unsigned long long* __restrict__ b, int64_t n, int64_t m,
                                int64_t per_mask, const int64_t* __restrict__ area_a,
                                const int64_t* __restrict__ area_b,
                                const uint8_t* __restrict__ crowd, int64_t row_tile0,
                                double* __restrict__ out) {
  __shared__ unsigned long long sa[kTile][kChunk + 1];
  __shared__ unsigned long long sb[kTile][kChunk + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t tile_y = row_tile0 + blockIdx.y;  // launches are chunked along the rows
  const int64_t i = tile_y * kTile + ty, j = blockIdx.x * (int64_t)kTile + tx;
  const int tid = ty * kTile + tx;
  int64_t inter = 0;
  for (int64_t k0 = 0; k0 < per_mask; k0 += kChunk) {
    for (int e = tid; e < kTile * kChunk; e += kTile * kTile) {
      const int r = e / kChunk, c = e % kChunk;
      const int64_t ia = tile_y * kTile + r, jb = blockIdx.x * (int64_t)kTile + r;
      const bool in_k = k0 + c < per_mask;
      sa[r][c] = (ia < n && in_k) ? a[ia * per_mask + k0 + c] : 0ull;
      sb[r][c] = (jb < m && in_k) ? b[jb * per_mask + k0 + c] : 0ull;
    }
    __syncthreads();
#pragma unroll 8
    for (int c = 0; c < kChunk; ++c) inter += __popcll(sa[ty][c] & sb[tx][c]);
    __syncthreads();
  }
  if (i >= n || j >= m) return;
  double v = 0;
  if (inter > 0) {
    const bool is_crowd = crowd != nullptr && crowd[j];
    const int64_t uni = is_crowd ? area_a[i] : area_a[i] + area_b[j] - inter;
    v = (double)inter / (double)uni;
  }
  out[i * m + j] = v;
}

at::Tensor mask_iou_cuda(const at::Tensor& a_in, const at::Tensor& b_in,
                         const at::Tensor& iscrowd_in) {
  check_masks(a_in, "a");
  check_masks(b_in, "b");
  check_same_hw(a_in, b_in);
  check_iscrowd(iscrowd_in, b_in.size(0));
  TORCH_CHECK_VALUE(a_in.is_cuda() && a_in.device() == b_in.device(),
                    "mask_iou: a and b must be on one CUDA device; got ", a_in.device(), " and ",
                    b_in.device());
  const c10::cuda::CUDAGuard guard(a_in.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const at::Tensor crowd = iscrowd_in.to(a.device(), at::kByte).contiguous();
  const int64_t n = a.size(0), m = b.size(0), h = a.size(1), w = a.size(2);
  const int64_t wpr = (w + 63) / 64, per_mask = h * wpr;
  const auto lopt = a.options().dtype(at::kLong);
  at::Tensor out = at::zeros({n, m}, a.options().dtype(at::kDouble));
  if (n == 0 || m == 0 || per_mask == 0) return out;

  at::Tensor wa = at::empty({n * per_mask}, lopt), wb = at::empty({m * per_mask}, lopt);
  auto* pa = reinterpret_cast<unsigned long long*>(wa.data_ptr<int64_t>());
  auto* pb = reinterpret_cast<unsigned long long*>(wb.data_ptr<int64_t>());
  pack_kernel<<<blocks_for(n * per_mask), kThreads, 0, stream>>>(
      static_cast<const uint8_t*>(a.data_ptr()), n * h, w, wpr, pa);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  pack_kernel<<<blocks_for(m * per_mask), kThreads, 0, stream>>>(
      static_cast<const uint8_t*>(b.data_ptr()), m * h, w, wpr, pb);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor area_a = at::empty({n}, lopt), area_b = at::empty({m}, lopt);
  // Grid limits: x < 2^31, y < 2^16. Areas and row tiles are launched in chunks, so any N and M
  // that fit in memory work (as on the CPU).
  constexpr int64_t kMaxX = (int64_t(1) << 31) - 1, kMaxY = 65535;
  for (int64_t s0 = 0; s0 < n; s0 += kMaxX) {
    area_kernel<<<(unsigned)std::min(kMaxX, n - s0), kThreads, 0, stream>>>(pa, per_mask, s0, area_a.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  for (int64_t s0 = 0; s0 < m; s0 += kMaxX) {
    area_kernel<<<(unsigned)std::min(kMaxX, m - s0), kThreads, 0, stream>>>(pb, per_mask, s0, area_b.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t col_tiles = (m + kTile - 1) / kTile, row_tiles = (n + kTile - 1) / kTile;
  TORCH_CHECK_VALUE(col_tiles <= kMaxX, "mask_iou: too many masks in b (", m, ")");
  for (int64_t t0 = 0; t0 < row_tiles; t0 += kMaxY) {
    const dim3 grid((unsigned)col_tiles, (unsigned)std::min(kMaxY, row_tiles - t0)), block(kTile, kTile);
    pair_iou_kernel<<<grid, block, 0, stream>>>(pa, pb, n, m, per_mask, area_a.data_ptr<int64_t>(),
                                                area_b.data_ptr<int64_t>(),
                                                crowd.numel() ? crowd.data_ptr<uint8_t>() : nullptr,
                                                t0, out.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, CUDA, m) {
  m.impl("rle_encode", &rle_encode_cuda);
  m.impl("rle_decode", &rle_decode_cuda);
  m.impl("mask_iou", &mask_iou_cuda);
}

}  // namespace rle
}  // namespace ssrvg
