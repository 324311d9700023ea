// empty_large: see cpu_alloc.h.
#include "cpu_alloc.h"

#include <ATen/Parallel.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/empty.h>
#include <c10/util/accumulate.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ssrvg {

#if defined(__linux__) && defined(MADV_HUGEPAGE)
namespace {

constexpr size_t kHuge = size_t(2) << 20, kMin = size_t(1) << 20;  // cpu_alloc.h: from 1 MiB up

constexpr int kSlots = 2;  // a gradient and its narrower copy (bfloat16 value) both recur

struct Spare {  // leaked on purpose: tensors may be freed after static destructors ran
  std::mutex mu;
  char* p[kSlots] = {nullptr, nullptr};
  size_t len[kSlots] = {0, 0};
  bool keep = true;
};

Spare& spare() {
  static Spare* s = [] {
    auto* st = new Spare;
    const char* env = std::getenv("SSRVG_CPU_SPARE_BLOCK");
    st->keep = !(env && std::strcmp(env, "0") == 0);
    return st;
  }();
  return *s;
}

// A freed block goes into an empty slot, or replaces the smallest kept block if it is larger.
void release(void* q, size_t len) {
  Spare& s = spare();
  char* drop = static_cast<char*>(q);
  size_t drop_len = len;
  {
    std::lock_guard<std::mutex> g(s.mu);
    int k = 0;
    for (int i = 1; i < kSlots; ++i)
      if (s.len[i] < s.len[k]) k = i;  // an empty slot has len 0
    if (s.keep && s.len[k] < len) {
      std::swap(drop, s.p[k]);
      std::swap(drop_len, s.len[k]);
    }
  }
  if (drop) munmap(drop, drop_len);
}

// The smallest kept block of at least need bytes, taken out of its slot; or nullptr.
char* take(size_t need, size_t* len) {
  Spare& s = spare();
  std::lock_guard<std::mutex> g(s.mu);
  int k = -1;
  for (int i = 0; i < kSlots; ++i)
    if (s.p[i] && s.len[i] >= need && (k < 0 || s.len[i] < s.len[k])) k = i;
  if (k < 0) return nullptr;
  char* p = s.p[k];
  *len = s.len[k];
  s.p[k] = nullptr;
  s.len[k] = 0;
  return p;
}

// A fresh 2 MiB-aligned anonymous mapping of len bytes (zero), or nullptr.
char* fresh(size_t len) {
  void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHuge - 1) / kHuge * kHuge;  // only aligned 2 MiB can be huge pages
  if (aligned > start) munmap(raw, aligned - start);
  if (start + kHuge > aligned) munmap(reinterpret_cast<void*>(aligned + len), start + kHuge - aligned);
  char* p = reinterpret_cast<char*>(aligned);
  madvise(p, len, MADV_HUGEPAGE);  // a hint: without it (THP off) the pages are 4 KiB, still zero
  at::parallel_for(0, static_cast<int64_t>(len / 4096), 512, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) reinterpret_cast<volatile char*>(p)[i * 4096] = 0;  // resident now
  });
  return p;
}

// A block of at least `bytes` (a kept one, contents stale, or a fresh one), or undefined when the
// tensor is small, not on the CPU, or no memory could be mapped.
at::Tensor large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) * options.dtype().itemsize();
  if (!options.device().is_cpu() || bytes < kMin) return at::Tensor();
  const size_t need = (bytes + kHuge - 1) / kHuge * kHuge;
  size_t len = 0;
  char* p = take(need, &len);
  if (!p) {
    len = need;
    if (!(p = fresh(len))) return at::Tensor();
  }
  return at::from_blob(p, sizes, [len](void* q) { release(q, len); }, options);
}

}  // namespace

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = large(sizes, options);
  return t.defined() ? t : at::empty(sizes, options);
}

#else

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) { return at::empty(sizes, options); }

#endif

}  // namespace ssrvg
