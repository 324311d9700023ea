// Helpers for CPU kernels whose inner loops should vectorise without -ffast-math.
#pragma once

#include <cstdint>

// On x86-64 Linux with GCC, a function marked SSRVG_CLONES is also compiled for AVX2 + FMA
// ("haswell") and the best version is picked when the library loads (ifunc). Elsewhere: no-op.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define SSRVG_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define SSRVG_CLONES
#endif

namespace ssrvg {

// Sum / dot product with 8 independent partial sums: vectorisable without reassociation flags.
template <typename T>
inline double sum8(const T* x, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += x[i + k];
  double s = 0;
  for (int k = 0; k < 8; ++k) s += acc[k];
  for (; i < n; ++i) s += x[i];
  return s;
}

// a may be stored narrower (bfloat16, half) than the math type T of b: widened element by element.
template <typename A, typename T>
inline T dot8(const A* __restrict__ a, const T* __restrict__ b, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) acc[k] += static_cast<T>(a[i + k]) * b[i + k];
  T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += static_cast<T>(a[i]) * b[i];
  return s;
}

}  // namespace ssrvg
