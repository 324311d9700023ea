// Helpers for CPU kernels whose inner loops should vectorise without -ffast-math.
#pragma once

#include <cstdint>

// On x86-64 Linux with GCC, a function marked SSRVG_CLONES is also compiled for AVX2 and the best
// version is picked when the library loads (ifunc). Elsewhere: no-op. Two traps, both checked by
// `python_tests/test_cpu_clones.py` on the built library:
// - only the marked function's own body is cloned: a lambda (e.g. the body given to at::parallel_for)
//   or a function it calls without inlining stays generic, so the loops must be in the marked function
//   or in functions inlined into it;
// - "avx2" (an ISA) and not "arch=haswell": with another arch than the callee's, GCC inlines nothing
//   that is not always_inline into the clone. FMA is not enabled: without -ffp-contract=fast
//   nothing would use it, and the clone computes exactly what the generic version does.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define SSRVG_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SSRVG_CLONES
#endif

#if defined(__GNUC__)
#define SSRVG_INLINE __attribute__((always_inline)) inline
#else
#define SSRVG_INLINE inline
#endif

// Eight floats as one GCC / Clang vector (an AVX register in an AVX2 clone, two SSE ones otherwise).
#if defined(__GNUC__)
#define SSRVG_VEC8 1
// Always inlined: the ABI of passing vectors to functions (which GCC warns about) never arises.
#pragma GCC diagnostic ignored "-Wpsabi"
namespace ssrvg {
typedef float f8 __attribute__((vector_size(32)));
SSRVG_INLINE f8 load8(const float* p) {
  f8 r;
  __builtin_memcpy(&r, p, sizeof r);
  return r;
}
SSRVG_INLINE void store8(float* p, f8 x) { __builtin_memcpy(p, &x, sizeof x); }
typedef int32_t i8 __attribute__((vector_size(32)));
// (a shuffle of lane 0: one vbroadcastss, where GCC builds {w, ..., w} from eight inserts)
SSRVG_INLINE f8 splat8(float w) { return __builtin_shuffle(f8{w}, i8{0, 0, 0, 0, 0, 0, 0, 0}); }
// Lanes summed in the order dot8 / sum8 use: ((0+1)+(2+3))+((4+5)+(6+7)).
SSRVG_INLINE float hsum8(f8 a) { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); }
}  // namespace ssrvg
#else
#define SSRVG_VEC8 0
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
