// Element-wise passes of the BLAS-tile path (float64; float32 with d % 8 != 0 or AGENTATTN_CPU_BLAS_PATH)
// over small score tiles that live in L1/L2. Plain loops, compiled for the baseline ISA with the driver;
// the float32 SIMD passes of the tile kernels are in aa_kernels_impl.h.
//
// Two layouts:
//  - row passes (stage 1, softmax over the long key axis): one score row of `len` contiguous values;
//  - column passes (stage 2, softmax over the n agents): a tile ST of n rows x R query columns (row
//    stride ld), the softmax runs down each column, so every vector op works on 8 queries at once
//    whatever n is (n = 9 wastes no lanes).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace agentattn::vec {

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

// ------------------------------------------------------------------------------------------ row passes
// x[j] += b[j] (b may be null); returns max_j x[j].
template <typename T>
inline T add_bias_max(T* x, const T* b, int64_t len) {
  T m = neg_inf<T>();
  if (b) {
    for (int64_t j = 0; j < len; ++j) {
      x[j] += b[j];
      m = std::max(m, x[j]);
    }
  } else {
    for (int64_t j = 0; j < len; ++j) m = std::max(m, x[j]);
  }
  return m;
}

// x[j] = exp(x[j] - m); returns the sum.
template <typename T>
inline T exp_sub_sum(T* x, int64_t len, T m) {
  T s = 0;
  for (int64_t j = 0; j < len; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

// x[j] = exp(x[j] + b[j] - l) (b may be null): probabilities recomputed from the log-sum-exp l.
template <typename T>
inline void exp_bias_sub(T* x, const T* b, int64_t len, T l) {
  for (int64_t j = 0; j < len; ++j) x[j] = std::exp(x[j] + (b ? b[j] : T(0)) - l);
}

// ds[j] = p[j] * (ds[j] - di); when g is not null also g[j] += ds[j] (bias gradient).
template <typename T>
inline void dsoftmax_row(T* ds, const T* p, int64_t len, T di, T* g) {
  for (int64_t j = 0; j < len; ++j) {
    ds[j] = p[j] * (ds[j] - di);
    if (g) g[j] += ds[j];
  }
}

// One row of the column pass: ds[i] = p[i] * (ds[i] - di[i]), g[i] += ds[i] when g is not null.
template <typename T>
inline void dsoftmax_row_vec(T* ds, const T* p, int64_t len, const T* di, T* g) {
  int64_t i = 0;
  for (; i < len; ++i) {
    ds[i] = p[i] * (ds[i] - di[i]);
    if (g) g[i] += ds[i];
  }
}

// --------------------------------------------------------------------------------------- column passes
// Forward softmax down the columns of ST (n x R, row stride ld), in place, unnormalised:
//   ST[j, i] = exp(ST[j, i] + bT[j, i] - m[i]),  m[i] = max_j (ST + bT)[j, i],  l[i] = sum_j ST[j, i].
// bT (n x R, row stride ldb) may be null.
template <typename T>
inline void col_softmax(T* ST, int64_t n, int64_t R, int64_t ld, const T* bT, int64_t ldb, T* m, T* l) {
  for (int64_t i = 0; i < R; ++i) m[i] = neg_inf<T>(), l[i] = 0;
  for (int64_t j = 0; j < n; ++j) {
    T* row = ST + j * ld;
    const T* b = bT ? bT + j * ldb : nullptr;
    for (int64_t i = 0; i < R; ++i) {
      if (b) row[i] += b[i];
      m[i] = std::max(m[i], row[i]);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    T* row = ST + j * ld;
    for (int64_t i = 0; i < R; ++i) {
      row[i] = std::exp(row[i] - m[i]);
      l[i] += row[i];
    }
  }
}

// Backward recompute down the columns: ST[j, i] = exp(ST[j, i] + bT[j, i] - lse[i]).
template <typename T>
inline void col_probs(T* ST, int64_t n, int64_t R, int64_t ld, const T* bT, int64_t ldb, const T* lse) {
  for (int64_t j = 0; j < n; ++j) {
    T* row = ST + j * ld;
    const T* b = bT ? bT + j * ldb : nullptr;
    for (int64_t i = 0; i < R; ++i) row[i] = std::exp(row[i] + (b ? b[i] : T(0)) - lse[i]);
  }
}

// ds[j, i] = p[j, i] * (ds[j, i] - di[i]); g (row stride ldg) += ds when not null.
template <typename T>
inline void col_dsoftmax(T* ds, const T* p, int64_t n, int64_t R, int64_t ld, const T* di, T* g, int64_t ldg) {
  for (int64_t j = 0; j < n; ++j) dsoftmax_row_vec(ds + j * ld, p + j * ld, R, di, g ? g + j * ldg : nullptr);
}

// y[i] *= a (len values).
template <typename T>
inline void scale_inplace(T* y, int64_t len, T a) {
  for (int64_t i = 0; i < len; ++i) y[i] *= a;
}

// dot product of two rows.
template <typename T>
inline T dot(const T* x, const T* y, int64_t len) {
  T acc = 0;
  for (int64_t i = 0; i < len; ++i) acc += x[i] * y[i];
  return acc;
}

}  // namespace agentattn::vec
