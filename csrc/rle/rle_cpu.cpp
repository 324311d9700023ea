// CPU kernels of the COCO RLE ops (schemas in csrc/ops.cpp; semantics in docs/design.md section 3).
// Results equal pycocotools (>= 2.0.7) on canonical RLEs; on RLEs with zero-length runs anywhere
// box, area, IoU and merge are those of the mask the RLE encodes (the true values), since the
// walks below skip empty runs instead of stopping at them. Counts are 64-bit, validated
// overflow-proof before any kernel runs (check_rles_host), and every loop is bounded by H*W.

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "rle.h"

namespace ssrvg {
namespace rle {
namespace {

struct Rle {
  const int64_t* cnts;
  int64_t m;
  int64_t h, w;
};

std::vector<Rle> view_rles(const at::Tensor& counts, const at::Tensor& offsets,
                           const at::Tensor& sizes) {
  const int64_t n = offsets.numel() - 1;
  const int64_t* c = counts.data_ptr<int64_t>();
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t* s = sizes.data_ptr<int64_t>();
  std::vector<Rle> r(n);
  for (int64_t i = 0; i < n; ++i) r[i] = Rle{c + o[i], o[i + 1] - o[i], s[2 * i], s[2 * i + 1]};
  return r;
}

// Concatenates per-mask vectors into (values, offsets).
template <typename T>
std::tuple<at::Tensor, at::Tensor> pack(const std::vector<std::vector<T>>& parts,
                                        at::ScalarType dtype) {
  const int64_t n = static_cast<int64_t>(parts.size());
  at::Tensor offsets = at::empty({n + 1}, at::kLong);
  int64_t* o = offsets.data_ptr<int64_t>();
  o[0] = 0;
  for (int64_t i = 0; i < n; ++i) o[i + 1] = o[i] + static_cast<int64_t>(parts[i].size());
  at::Tensor values = at::empty({o[n]}, dtype);
  T* v = static_cast<T*>(values.data_ptr());
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::copy(parts[i].begin(), parts[i].end(), v + o[i]);
  });
  return {values, offsets};
}

// ---------------------------------------------------------------------------------------------
// Encoding. COCO's RLE runs over the pixels in column-major order, starting with a background run.
// Two layouts are read without a copy, 8 pixels per step: a mask whose columns are contiguous
// (a Fortran-ordered H x W x N array seen as (N, H, W), pycocotools' own layout) is one linear
// scan; a row-major mask (what models produce) is compared row against row above, and the
// positions where a pixel differs from the one above it (and the first pixel of each column from
// the last pixel of the column before) are sorted into column-major order. Other strides are made
// row-major first. "Differs" is between foreground (any nonzero byte) and background.

constexpr uint64_t kOnes = 0x0101010101010101ULL, kHigh = 0x8080808080808080ULL, kLow7 = 0x7F7F7F7F7F7F7F7FULL;

inline uint64_t load8(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
// High bit of each byte set where the byte is nonzero.
inline uint64_t nonzero_bytes(uint64_t v) { return (((v & kLow7) + kLow7) | v) & kHigh; }
inline bool has_zero_byte(uint64_t v) { return ((v - kOnes) & ~v & kHigh) != 0; }

// Whether any of the 32 bytes at p is zero (as has_zero_byte, four words at a time).
inline bool has_zero_byte32(const uint8_t* p) {
  const uint64_t a = load8(p), b = load8(p + 8), c = load8(p + 16), d = load8(p + 24);
  return (((a - kOnes) & ~a) | ((b - kOnes) & ~b) | ((c - kOnes) & ~c) | ((d - kOnes) & ~d)) & kHigh;
}

// Runs of ``len`` pixels stored contiguously in RLE order: 32 bytes per step inside a run (the
// runs of object masks span hundreds to thousands of pixels), then 8, then 1 up to its end.
void runs_linear(const uint8_t* p, int64_t len, std::vector<int64_t>& out) {
  bool fg = false;
  int64_t k = 0, start = 0;
  while (k < len) {
    if (!fg) {
      while (k + 32 <= len && (load8(p + k) | load8(p + k + 8) | load8(p + k + 16) | load8(p + k + 24)) == 0) k += 32;
      while (k + 8 <= len && load8(p + k) == 0) k += 8;
      while (k < len && p[k] == 0) ++k;
    } else {
      while (k + 32 <= len && !has_zero_byte32(p + k)) k += 32;
      while (k + 8 <= len && !has_zero_byte(load8(p + k))) k += 8;
      while (k < len && p[k] != 0) ++k;
    }
    out.push_back(k - start);
    start = k;
    fg = !fg;
  }
  if (len == 0) out.push_back(0);
}

// Runs of an h x w row-major mask; ``ev`` and ``col`` are scratch buffers.
void runs_row_major(const uint8_t* d, int64_t h, int64_t w, std::vector<int64_t>& out, std::vector<int64_t>& ev,
                    std::vector<int64_t>& sorted, std::vector<int64_t>& col) {
  ev.clear();  // (x, y) pairs of every change, in row order
  const uint8_t* top = d;
  for (int64_t x = 0; x < w; ++x) {  // row 0: against the last pixel of the column before
    const bool above = x > 0 && d[(h - 1) * w + x - 1] != 0;
    if ((top[x] != 0) != above) ev.push_back(x), ev.push_back(0);
  }
  for (int64_t y = 1; y < h; ++y) {
    const uint8_t* a = d + y * w;
    const uint8_t* b = a - w;
    int64_t x = 0;
    for (; x + 8 <= w; x += 8) {
      uint64_t t = nonzero_bytes(load8(a + x)) ^ nonzero_bytes(load8(b + x));
      while (t) {
        ev.push_back(x + (__builtin_ctzll(t) >> 3)), ev.push_back(y);
        t &= t - 1;
      }
    }
    for (; x < w; ++x)
      if ((a[x] != 0) != (b[x] != 0)) ev.push_back(x), ev.push_back(y);
  }
  // counting sort by column (stable: rows stay in order), into linear positions x * h + y
  const int64_t ne = static_cast<int64_t>(ev.size()) / 2;
  col.assign(w + 1, 0);
  for (int64_t i = 0; i < ne; ++i) ++col[ev[2 * i] + 1];
  for (int64_t x = 0; x < w; ++x) col[x + 1] += col[x];
  sorted.resize(ne);
  for (int64_t i = 0; i < ne; ++i) sorted[col[ev[2 * i]]++] = ev[2 * i] * h + ev[2 * i + 1];
  int64_t last = 0;
  for (int64_t i = 0; i < ne; ++i) {
    out.push_back(sorted[i] - last);
    last = sorted[i];
  }
  out.push_back(h * w - last);
}

std::tuple<at::Tensor, at::Tensor> rle_encode_cpu(const at::Tensor& masks_in) {
  check_masks(masks_in, "masks");
  const int64_t n = masks_in.size(0), h = masks_in.size(1), w = masks_in.size(2);
  // columns contiguous (a Fortran-ordered array): scanned in place; otherwise row-major
  const bool columns = h > 0 && w > 0 && masks_in.stride(1) == 1 && (w == 1 || masks_in.stride(2) == h);
  const at::Tensor masks = columns ? masks_in : masks_in.contiguous();
  const uint8_t* data = static_cast<const uint8_t*>(masks.data_ptr());
  const int64_t mask_stride = columns ? masks.stride(0) : h * w;
  std::vector<std::vector<int64_t>> runs(n);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    std::vector<int64_t> ev, sorted, col;
    for (int64_t i = b; i < e; ++i) {
      runs[i].reserve(64);
      if (columns)
        runs_linear(data + i * mask_stride, h * w, runs[i]);
      else if (h == 0 || w == 0)
        runs[i].push_back(0);
      else
        runs_row_major(data + i * mask_stride, h, w, runs[i], ev, sorted, col);
    }
  });
  return pack(runs, at::kLong);
}

at::Tensor rle_decode_cpu(const at::Tensor& counts_in, const at::Tensor& offsets_in, int64_t h,
                          int64_t w) {
  const at::Tensor counts = counts_in.contiguous(), offsets = offsets_in.contiguous();
  const at::Tensor sizes = check_decode_host(counts, offsets, h, w);
  const int64_t n = offsets.numel() - 1;
  at::Tensor out = at::zeros({n, h, w}, at::kByte);
  uint8_t* o = out.data_ptr<uint8_t>();
  const std::vector<Rle> r = view_rles(counts, offsets, sizes);
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint8_t* d = o + i * h * w;
      int64_t k = 0;
      for (int64_t j = 0; j < r[i].m; ++j) {
        const int64_t c = r[i].cnts[j];
        if (j % 2 == 1 && c > 0) {
          int64_t y = k % h, x = k / h;
          for (int64_t t = 0; t < c; ++t) {
            d[y * w + x] = 1;
            if (++y == h) {
              y = 0;
              ++x;
            }
          }
        }
        k += c;
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> rle_to_string_cpu(const at::Tensor& counts_in,
                                                     const at::Tensor& offsets_in) {
  const at::Tensor counts = counts_in.contiguous(), offsets = offsets_in.contiguous();
  check_counts_nonnegative(counts, offsets);  // so cn[j] - cn[j - 2] cannot overflow
  const int64_t n = offsets.numel() - 1;
  const int64_t* c = counts.data_ptr<int64_t>();
  const int64_t* o = offsets.data_ptr<int64_t>();
  std::vector<std::vector<uint8_t>> strs(n);
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t* cn = c + o[i];
      const int64_t m = o[i + 1] - o[i];
      std::vector<uint8_t>& s = strs[i];
      s.reserve(m * 2);
      for (int64_t j = 0; j < m; ++j) {
        int64_t x = cn[j];
        if (j > 2) x -= cn[j - 2];
        bool more = true;
        while (more) {
          uint8_t ch = static_cast<uint8_t>(x & 0x1f);
          x >>= 5;  // arithmetic shift on int64
          more = (ch & 0x10) ? x != -1 : x != 0;
          if (more) ch |= 0x20;
          s.push_back(static_cast<uint8_t>(ch + 48));
        }
      }
    }
  });
  return pack(strs, at::kByte);
}

std::tuple<at::Tensor, at::Tensor> rle_from_string_cpu(const at::Tensor& chars_in,
                                                       const at::Tensor& char_offsets_in,
                                                       const at::Tensor& sizes_in) {
  TORCH_CHECK_TYPE(chars_in.scalar_type() == at::kByte, "chars must be uint8; got ",
                   chars_in.scalar_type());
  TORCH_CHECK_VALUE(chars_in.dim() == 1, "chars must be 1-D; got shape ", chars_in.sizes());
  const at::Tensor chars = chars_in.contiguous(), char_offsets = char_offsets_in.contiguous();
  const at::Tensor sizes = sizes_in.contiguous();
  check_int64_1d(char_offsets, "char_offsets");
  const int64_t n = char_offsets.numel() - 1;
  TORCH_CHECK_VALUE(n >= 0, "char_offsets must have N+1 >= 1 entries");
  check_sizes(sizes, n);
  const int64_t* co = char_offsets.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(co[0] == 0 && co[n] == chars.numel(),
                    "char_offsets must run from 0 to the number of chars (", chars.numel(), ")");
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(co[i + 1] >= co[i], "char_offsets must be non-decreasing at ", i + 1);
  const uint8_t* ch = chars.data_ptr<uint8_t>();
  const int64_t* sz = sizes.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> cnts(n);
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t h = sz[2 * i], w = sz[2 * i + 1];
      TORCH_CHECK_VALUE(h >= 0 && w >= 0, "RLE ", i, ": size must be non-negative; got [", h,
                        ", ", w, "]");
      const int64_t hw = checked_mul(h, w, "RLE size H x W");
      std::vector<int64_t>& out = cnts[i];
      int64_t p = co[i];
      const int64_t end = co[i + 1];
      int64_t total = 0;
      while (p < end) {
        int64_t x = 0;
        int k = 0;
        bool more = true;
        while (more) {
          TORCH_CHECK_VALUE(p < end, "RLE ", i, ": compressed counts end in the middle of a number");
          const int c = static_cast<int>(ch[p]) - 48;
          TORCH_CHECK_VALUE(c >= 0 && c < 64, "RLE ", i, ": invalid character ",
                            static_cast<int>(ch[p]), " at position ", p - co[i],
                            " (COCO strings use '0'..'o')");
          TORCH_CHECK_VALUE(k < 12, "RLE ", i, ": a count is too long (more than 12 groups)");
          x |= static_cast<int64_t>(c & 0x1f) << (5 * k);
          more = (c & 0x20) != 0;
          ++p;
          ++k;
          if (!more && (c & 0x10)) x |= static_cast<int64_t>(-1) * (int64_t(1) << (5 * k));
        }
        const int64_t m = static_cast<int64_t>(out.size());
        TORCH_CHECK_VALUE(m <= 2 || !c10::add_overflows(x, out[m - 2], &x), "RLE ", i, ": count ", m,
                          " overflows int64");
        TORCH_CHECK_VALUE(x >= 0, "RLE ", i, ": count ", m, " decodes to a negative value (", x,
                          ")");
        TORCH_CHECK_VALUE(x <= hw - total, "RLE ", i, ": counts overrun the ", h, "x", w,
                          " mask (they sum past ", hw, ")");
        total += x;
        out.push_back(x);
      }
      TORCH_CHECK_VALUE(!out.empty() || hw == 0,
                        "RLE ", i, ": counts string is empty but the mask has ", hw, " pixels");
      TORCH_CHECK_VALUE(total == hw, "RLE ", i, ": counts sum to ", total, " but the ", h, "x",
                        w, " mask has ", hw, " pixels");
      if (out.empty()) out.push_back(0);  // pycocotools writes "0" for a 0-pixel mask
    }
  });
  return pack(cnts, at::kLong);
}

void rle_check_cpu(const at::Tensor& counts, const at::Tensor& offsets, const at::Tensor& sizes) {
  check_rles_host(counts.contiguous(), offsets.contiguous(), sizes.contiguous());
}

at::Tensor rle_area_cpu(const at::Tensor& counts_in, const at::Tensor& offsets_in) {
  const at::Tensor counts = counts_in.contiguous(), offsets = offsets_in.contiguous();
  check_counts_nonnegative(counts, offsets);  // the op has no sizes: sums in range, no negatives
  const int64_t n = offsets.numel() - 1;
  const int64_t* c = counts.data_ptr<int64_t>();
  const int64_t* o = offsets.data_ptr<int64_t>();
  at::Tensor out = at::empty({n}, at::kLong);
  int64_t* a = out.data_ptr<int64_t>();
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t s = 0;
      for (int64_t j = o[i] + 1; j < o[i + 1]; j += 2) s += c[j];
      a[i] = s;
    }
  });
  return out;
}

// Box [x, y, w, h] of the mask one valid RLE encodes: the extent of its non-empty foreground runs.
// A run that crosses a column boundary covers the bottom row of one column and the top row of the
// next, so it spans every row. No foreground: [0, 0, 0, 0] (as pycocotools).
void bbox_of(const Rle& r, double* bb) {
  const int64_t h = r.h;
  int64_t xs = r.w, ys = r.h, xe = -1, ye = -1, start = 0;
  for (int64_t j = 0; j < r.m; ++j) {
    const int64_t len = r.cnts[j];
    if (j % 2 == 1 && len > 0) {
      const int64_t end = start + len - 1;
      const int64_t x0 = start / h, x1 = end / h;
      xs = std::min(xs, x0);
      xe = std::max(xe, x1);
      if (x0 != x1) {
        ys = 0;
        ye = h - 1;
      } else {
        ys = std::min(ys, start % h);
        ye = std::max(ye, end % h);
      }
    }
    start += len;
  }
  if (xe < 0) {
    bb[0] = bb[1] = bb[2] = bb[3] = 0;
    return;
  }
  bb[0] = static_cast<double>(xs);
  bb[1] = static_cast<double>(ys);
  bb[2] = static_cast<double>(xe - xs + 1);
  bb[3] = static_cast<double>(ye - ys + 1);
}

// Walks one valid RLE run by run, skipping zero-length runs: `left` pixels of value `v` remain.
struct RunCursor {
  const int64_t* c;
  int64_t m, j, left;
  bool v;
  explicit RunCursor(const Rle& r) : c(r.cnts), m(r.m), j(0), left(r.cnts[0]), v(false) {}
  // Moves past empty runs; with pixels left in the mask, `left` > 0 afterwards.
  void settle() {
    while (left == 0 && j + 1 < m) {
      left = c[++j];
      v = !v;
    }
  }
};

// Calls f(value_a, value_b, length) for each maximal stretch of equal values of two same-size
// valid RLEs, in pixel order. Each call consumes length > 0 pixels, so it ends after at most
// m_a + m_b calls, whatever the runs (the counts of each sum to hw, checked before).
template <typename F>
void walk_pair(const Rle& A, const Rle& B, F&& f) {
  const int64_t hw = A.h * A.w;
  RunCursor a(A), b(B);
  for (int64_t done = 0; done < hw;) {
    a.settle();
    b.settle();
    const int64_t c = std::min(a.left, b.left);
    TORCH_INTERNAL_ASSERT(c > 0, "RLE walk made no progress (counts not validated?)");
    f(a.v, b.v, c);
    a.left -= c;
    b.left -= c;
    done += c;
  }
}

at::Tensor rle_to_bbox_cpu(const at::Tensor& counts_in, const at::Tensor& offsets_in,
                           const at::Tensor& sizes_in) {
  const at::Tensor counts = counts_in.contiguous(), offsets = offsets_in.contiguous(),
                   sizes = sizes_in.contiguous();
  check_rles_host(counts, offsets, sizes);
  const std::vector<Rle> r = view_rles(counts, offsets, sizes);
  const int64_t n = static_cast<int64_t>(r.size());
  at::Tensor out = at::empty({n, 4}, at::kDouble);
  double* bb = out.data_ptr<double>();
  at::parallel_for(0, n, 64, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) bbox_of(r[i], bb + 4 * i);
  });
  return out;
}

at::Tensor rle_merge_cpu(const at::Tensor& counts_in, const at::Tensor& offsets_in,
                         const at::Tensor& sizes_in, bool intersect) {
  const at::Tensor counts = counts_in.contiguous(), offsets = offsets_in.contiguous(),
                   sizes = sizes_in.contiguous();
  check_rles_host(counts, offsets, sizes);
  const std::vector<Rle> r = view_rles(counts, offsets, sizes);
  const int64_t n = static_cast<int64_t>(r.size());
  TORCH_CHECK_VALUE(n >= 1, "rle_merge needs at least one RLE");
  for (int64_t i = 1; i < n; ++i) {
    TORCH_CHECK_VALUE(r[i].h == r[0].h && r[i].w == r[0].w, "rle_merge: RLE ", i, " has size [",
                      r[i].h, ", ", r[i].w, "] but RLE 0 has [", r[0].h, ", ", r[0].w, "]");
  }
  // The result is canonical (only the first run may be empty), whatever runs the inputs have.
  std::vector<int64_t> acc, next;
  const int64_t hw = r[0].h * r[0].w;
  auto append = [](std::vector<int64_t>& out, bool& cur, bool v, int64_t len) {
    if (v != cur) {
      out.push_back(0);
      cur = v;
    }
    out.back() += len;
  };
  {  // the first RLE, canonicalised
    acc.assign(1, 0);
    bool cur = false;
    for (int64_t j = 0; j < r[0].m; ++j)
      if (r[0].cnts[j] > 0) append(acc, cur, j % 2 == 1, r[0].cnts[j]);
  }
  for (int64_t i = 1; i < n && hw > 0; ++i) {
    const Rle A{acc.data(), static_cast<int64_t>(acc.size()), r[0].h, r[0].w};
    next.assign(1, 0);
    bool cur = false;
    walk_pair(A, r[i], [&](bool va, bool vb, int64_t len) {
      append(next, cur, intersect ? (va && vb) : (va || vb), len);
    });
    acc.swap(next);
  }
  at::Tensor out = at::empty({static_cast<int64_t>(acc.size())}, at::kLong);
  std::copy(acc.begin(), acc.end(), out.data_ptr<int64_t>());
  return out;
}

// The foreground runs of an RLE as sorted half-open pixel intervals [s, e) (empty runs left out).
struct Intervals {
  std::vector<int64_t> s, e;
};

Intervals foreground_intervals(const Rle& r) {
  Intervals out;
  int64_t pos = 0;
  for (int64_t j = 0; j < r.m; ++j) {
    const int64_t c = r.cnts[j];
    if ((j & 1) && c > 0) {
      out.s.push_back(pos);
      out.e.push_back(pos + c);
    }
    pos += c;
  }
  return out;
}

// Pixels in both interval lists within [lo, hi): binary search to lo, then a merge until hi.
int64_t overlap_in(const Intervals& A, const Intervals& B, int64_t lo, int64_t hi) {
  size_t i = std::upper_bound(A.e.begin(), A.e.end(), lo) - A.e.begin();
  size_t j = std::upper_bound(B.e.begin(), B.e.end(), lo) - B.e.begin();
  int64_t inter = 0;
  while (i < A.s.size() && j < B.s.size() && A.s[i] < hi && B.s[j] < hi) {
    const int64_t a = std::max(A.s[i], B.s[j]), b = std::min(A.e[i], B.e[j]);
    if (b > a) inter += b - a;
    if (A.e[i] < B.e[j])
      ++i;
    else
      ++j;
  }
  return inter;
}

int64_t area_of(const Rle& r) {
  int64_t s = 0;
  for (int64_t j = 1; j < r.m; j += 2) s += r.cnts[j];
  return s;
}

at::Tensor rle_iou_cpu(const at::Tensor& dc, const at::Tensor& doff, const at::Tensor& dsz,
                       const at::Tensor& gc, const at::Tensor& goff, const at::Tensor& gsz,
                       const at::Tensor& iscrowd_in) {
  const at::Tensor dcc = dc.contiguous(), doc = doff.contiguous(), dsc = dsz.contiguous();
  const at::Tensor gcc = gc.contiguous(), goc = goff.contiguous(), gsc = gsz.contiguous();
  check_rles_host(dcc, doc, dsc);
  check_rles_host(gcc, goc, gsc);
  const std::vector<Rle> dt = view_rles(dcc, doc, dsc), gt = view_rles(gcc, goc, gsc);
  const int64_t m = static_cast<int64_t>(dt.size()), n = static_cast<int64_t>(gt.size());
  check_iscrowd(iscrowd_in, n);
  const at::Tensor iscrowd = iscrowd_in.to(at::kByte).contiguous();
  const uint8_t* crowd = iscrowd.numel() ? iscrowd.data_ptr<uint8_t>() : nullptr;
  std::vector<double> db(4 * m), gb(4 * n);
  std::vector<int64_t> darea(m);
  for (int64_t d = 0; d < m; ++d) {
    bbox_of(dt[d], db.data() + 4 * d);
    darea[d] = area_of(dt[d]);
  }
  for (int64_t g = 0; g < n; ++g) bbox_of(gt[g], gb.data() + 4 * g);
  // Foreground intervals of every RLE, once: a pair then only merges the runs of the columns both
  // boxes cover (outside them one of the masks is empty), instead of walking both RLEs whole.
  std::vector<Intervals> di(m), gi(n);
  at::parallel_for(0, m + n, 16, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      if (k < m)
        di[k] = foreground_intervals(dt[k]);
      else
        gi[k - m] = foreground_intervals(gt[k - m]);
    }
  });
  at::Tensor out = at::zeros({m, n}, at::kDouble);
  double* o = out.data_ptr<double>();
  at::parallel_for(0, m, 1, [&](int64_t b, int64_t e) {
    for (int64_t d = b; d < e; ++d) {
      const double* D = db.data() + 4 * d;
      const double da = D[2] * D[3];
      for (int64_t g = 0; g < n; ++g) {
        const double* G = gb.data() + 4 * g;
        const bool is_crowd = crowd != nullptr && crowd[g];
        // Bounding-box pre-filter (bbIou): no overlap -> 0 and no exact computation.
        const double bw = std::min(D[2] + D[0], G[2] + G[0]) - std::max(D[0], G[0]);
        if (bw <= 0) continue;
        const double bh = std::min(D[3] + D[1], G[3] + G[1]) - std::max(D[1], G[1]);
        if (bh <= 0) continue;
        const double bi = bw * bh;
        const double bu = is_crowd ? da : da + G[2] * G[3] - bi;
        if (!(bi / bu > 0)) continue;
        if (dt[d].h != gt[g].h || dt[d].w != gt[g].w) {
          o[d * n + g] = -1;
          continue;
        }
        const int64_t h = dt[d].h;
        const int64_t x0 = static_cast<int64_t>(std::max(D[0], G[0])), x1 = static_cast<int64_t>(std::min(D[0] + D[2], G[0] + G[2]));
        const int64_t inter = overlap_in(di[d], gi[g], x0 * h, x1 * h);
        int64_t uni;
        if (inter == 0) {
          uni = 1;
        } else if (is_crowd) {
          uni = darea[d];
        } else {
          uni = darea[d] + area_of(gt[g]) - inter;
        }
        o[d * n + g] = static_cast<double>(inter) / static_cast<double>(uni);
      }
    }
  });
  return out;
}

// ---- pairwise IoU straight from masks: bit-packed rows + bounding-box pruning ----
struct Packed {
  std::vector<uint64_t> words;  // (N, H, wpr)
  std::vector<int64_t> area;
  std::vector<int64_t> box;  // (N, 4): y0, y1, w0, w1 (inclusive rows, inclusive word columns)
  int64_t wpr;
};

Packed pack_masks(const at::Tensor& masks) {
  const int64_t n = masks.size(0), h = masks.size(1), w = masks.size(2);
  Packed p;
  p.wpr = (w + 63) / 64;
  p.words.assign(static_cast<size_t>(n * h * p.wpr), 0);
  p.area.assign(n, 0);
  p.box.assign(4 * n, 0);
  const uint8_t* data = static_cast<const uint8_t*>(masks.data_ptr());
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      int64_t area = 0, y0 = h, y1 = -1, w0 = p.wpr, w1 = -1;
      for (int64_t y = 0; y < h; ++y) {
        const uint8_t* row = data + (i * h + y) * w;
        uint64_t* out = p.words.data() + (i * h + y) * p.wpr;
        for (int64_t k = 0; k < p.wpr; ++k) {
          uint64_t word = 0;
          const int64_t x_end = std::min<int64_t>(64, w - 64 * k);
          for (int64_t x = 0; x < x_end; ++x) word |= uint64_t(row[64 * k + x] != 0) << x;
          out[k] = word;
          if (word) {
            area += __builtin_popcountll(word);
            y0 = std::min(y0, y);
            y1 = y;
            w0 = std::min(w0, k);
            w1 = std::max(w1, k);
          }
        }
      }
      p.area[i] = area;
      int64_t* bx = p.box.data() + 4 * i;
      bx[0] = y0, bx[1] = y1, bx[2] = w0, bx[3] = w1;
    }
  });
  return p;
}

at::Tensor mask_iou_cpu(const at::Tensor& a_in, const at::Tensor& b_in,
                        const at::Tensor& iscrowd_in) {
  check_masks(a_in, "a");
  check_masks(b_in, "b");
  check_same_hw(a_in, b_in);
  check_iscrowd(iscrowd_in, b_in.size(0));
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const at::Tensor iscrowd = iscrowd_in.to(at::kByte).contiguous();
  const uint8_t* crowd = iscrowd.numel() ? iscrowd.data_ptr<uint8_t>() : nullptr;
  const int64_t n = a.size(0), m = b.size(0), h = a.size(1);
  const Packed pa = pack_masks(a), pb = pack_masks(b);
  const int64_t wpr = pa.wpr;
  at::Tensor out = at::zeros({n, m}, at::kDouble);
  double* o = out.data_ptr<double>();
  at::parallel_for(0, n, 1, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) {
      const int64_t* A = pa.box.data() + 4 * i;
      for (int64_t j = 0; j < m; ++j) {
        const int64_t* B = pb.box.data() + 4 * j;
        const int64_t y0 = std::max(A[0], B[0]), y1 = std::min(A[1], B[1]);
        const int64_t k0 = std::max(A[2], B[2]), k1 = std::min(A[3], B[3]);
        if (y0 > y1 || k0 > k1) continue;  // disjoint boxes: intersection is 0
        int64_t inter = 0;
        for (int64_t y = y0; y <= y1; ++y) {
          const uint64_t* ra = pa.words.data() + (i * h + y) * wpr;
          const uint64_t* rb = pb.words.data() + (j * h + y) * wpr;
          for (int64_t k = k0; k <= k1; ++k) inter += __builtin_popcountll(ra[k] & rb[k]);
        }
        if (inter == 0) continue;
        const bool is_crowd = crowd != nullptr && crowd[j];
        const int64_t uni = is_crowd ? pa.area[i] : pa.area[i] + pb.area[j] - inter;
        o[i * m + j] = static_cast<double>(inter) / static_cast<double>(uni);
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(ssrvg, CPU, m) {
  m.impl("rle_encode", &rle_encode_cpu);
  m.impl("rle_decode", &rle_decode_cpu);
  m.impl("rle_to_string", &rle_to_string_cpu);
  m.impl("rle_from_string", &rle_from_string_cpu);
  m.impl("rle_check", &rle_check_cpu);
  m.impl("rle_area", &rle_area_cpu);
  m.impl("rle_to_bbox", &rle_to_bbox_cpu);
  m.impl("rle_merge", &rle_merge_cpu);
  m.impl("rle_iou", &rle_iou_cpu);
  m.impl("mask_iou", &mask_iou_cpu);
}

}  // namespace rle
}  // namespace ssrvg
