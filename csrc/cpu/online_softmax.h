// The online softmax of stage 1 (softmax over the keys, in tiles or chunks), shared by every path: the
// float32 tile kernels of each ISA, the BLAS-tile path (float64) and the merge of key chunks.
//
// A row's running state is (m, l, acc): m the largest score seen, l = sum exp(score - m), acc = sum
// exp(score - m) v (d values). A new tile whose scores have max mb moves m to m' = max(m, mb), rescales
// l and acc by alpha = exp(m - m') and adds the tile's exp(score - m'). Partial states of disjoint key
// chunks merge the same way. The final row is lse = m + log l, acc / l.
//
// Internal linkage (anonymous namespace): each translation unit, whatever its ISA flags, gets its own copy.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#ifndef AGENTATTN_ISA_NS
#define AGENTATTN_ISA_NS base
#endif

namespace agentattn::cpu {
inline namespace AGENTATTN_ISA_NS {
namespace {

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// alpha = exp(m_old - m_new): 0 for a row that had seen nothing yet (m_old = -inf).
template <typename T>
inline T rescale_factor(T m_old, T m_new) {
  return m_old == neg_inf<T>() ? T(0) : std::exp(m_old - m_new);
}

// Commit a tile to a row: m_new = max(m, tile max) (the tile's exponentials were taken against it),
// tile_sum their sum; scale_acc(alpha) rescales the row's accumulator (not called when m is unchanged).
template <typename T, typename F>
inline void online_commit(T& m, T& l, T m_new, T tile_sum, const F& scale_acc) {
  if (m_new != m) {
    const T alpha = rescale_factor(m, m_new);
    l *= alpha;
    scale_acc(alpha);
    m = m_new;
  }
  l += tile_sum;
}

// Merge the partial states of nparts key chunks for one row: part(c) returns {m, l, acc}; writes the
// normalised row (d values) to out and returns its log-sum-exp.
template <typename T>
struct Partial {
  T m, l;
  const T* acc;
};

template <typename T, typename F>
inline T merge_partials(int64_t nparts, const F& part, int64_t d, T* out) {
  T M = neg_inf<T>();
  for (int64_t c = 0; c < nparts; ++c) M = std::max(M, part(c).m);
  T lsum = 0;
  for (int64_t x = 0; x < d; ++x) out[x] = T(0);
  for (int64_t c = 0; c < nparts; ++c) {
    const Partial<T> p = part(c);
    const T w = rescale_factor(p.m, M);
    lsum += w * p.l;
    for (int64_t x = 0; x < d; ++x) out[x] += w * p.acc[x];
  }
  const T inv = T(1) / lsum;
  for (int64_t x = 0; x < d; ++x) out[x] *= inv;
  return M + std::log(lsum);
}

// The final row of a single-chunk state: acc /= l in place, returns lse = m + log l.
template <typename T>
inline T finish_row(T m, T l, T* acc, int64_t d) {
  const T inv = T(1) / l;
  for (int64_t x = 0; x < d; ++x) acc[x] *= inv;
  return m + std::log(l);
}

}  // namespace
}  // namespace AGENTATTN_ISA_NS
}  // namespace agentattn::cpu
