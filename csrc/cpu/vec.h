// Element-wise passes of the fused agent-attention kernels over small score tiles that live in L1/L2.
//
// Two layouts:
//  - row passes (stage 1, softmax over the long key axis): one score row of `len` contiguous values;
//  - column passes (stage 2, softmax over the n agents): a tile ST of n rows x R query columns (row
//    stride ld), the softmax runs down each column, so every vector op works on 8 queries at once
//    whatever n is (n = 9 wastes no lanes).
// Generic versions are plain loops (float64, and float32 builds without AVX2); float32 with AVX2+FMA
// uses intrinsics and a Cephes-style exp (relative error about 1e-7 over the clamped range).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define AGENTATTN_AVX2 1
#endif
// Small vector helpers must be inlined: an out-of-line exp8 called through the PLT cost ~9 % of the n=9
// forward in a profile.
#define AGENTATTN_INLINE __attribute__((always_inline)) inline

namespace agentattn::vec {

template <typename T>
constexpr T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

#ifdef AGENTATTN_AVX2
// exp(x) for 8 floats: x clamped to [-87.3, 88.3], n = round(x log2 e), r = x - n ln2 (two-part ln2),
// exp(r) by a degree-5 polynomial on [-ln2/2, ln2/2], times 2^n built in the exponent bits.
AGENTATTN_INLINE __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  // n = round(x log2 e) by adding 1.5 * 2^23 (spacing 1 there: n lands in the low mantissa bits of t,
  // which also give 2^n below); one FMA and one subtraction instead of mul, round and convert
  const __m256 magic = _mm256_set1_ps(12582912.0f);
  const __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 n = _mm256_sub_ps(t, magic);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // (bits(t) + 127) << 23 keeps the low 9 bits: n + 127, in [1, 254] for the clamped x
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
AGENTATTN_INLINE float hmax8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
AGENTATTN_INLINE float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

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

#ifdef AGENTATTN_AVX2
template <>
inline float add_bias_max<float>(float* x, const float* b, int64_t len) {
  __m256 m = _mm256_set1_ps(neg_inf<float>());
  int64_t j = 0;
  if (b) {
    for (; j + 8 <= len; j += 8) {
      const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(b + j));
      _mm256_storeu_ps(x + j, v);
      m = _mm256_max_ps(m, v);
    }
  } else {
    for (; j + 8 <= len; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
  }
  float ms = hmax8(m);
  for (; j < len; ++j) {
    if (b) x[j] += b[j];
    ms = std::max(ms, x[j]);
  }
  return ms;
}

template <>
inline float exp_sub_sum<float>(float* x, int64_t len, float m) {
  const __m256 mv = _mm256_set1_ps(m);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const __m256 e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    const __m256 e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), mv));
    _mm256_storeu_ps(x + j, e0);
    _mm256_storeu_ps(x + j + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  for (; j + 8 <= len; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    _mm256_storeu_ps(x + j, e);
    s0 = _mm256_add_ps(s0, e);
  }
  float s = hsum8(_mm256_add_ps(s0, s1));
  for (; j < len; ++j) {
    x[j] = std::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

template <>
inline void exp_bias_sub<float>(float* x, const float* b, int64_t len, float l) {
  const __m256 lv = _mm256_set1_ps(l);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    __m256 v = _mm256_loadu_ps(x + j);
    if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + j));
    _mm256_storeu_ps(x + j, exp8(_mm256_sub_ps(v, lv)));
  }
  for (; j < len; ++j) x[j] = std::exp(x[j] + (b ? b[j] : 0.0f) - l);
}

template <>
inline void dsoftmax_row<float>(float* ds, const float* p, int64_t len, float di, float* g) {
  const __m256 dv = _mm256_set1_ps(di);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + j), _mm256_sub_ps(_mm256_loadu_ps(ds + j), dv));
    _mm256_storeu_ps(ds + j, v);
    if (g) _mm256_storeu_ps(g + j, _mm256_add_ps(_mm256_loadu_ps(g + j), v));
  }
  for (; j < len; ++j) {
    ds[j] = p[j] * (ds[j] - di);
    if (g) g[j] += ds[j];
  }
}
#endif

// One row of the column pass: ds[i] = p[i] * (ds[i] - di[i]), g[i] += ds[i] when g is not null.
template <typename T>
inline void dsoftmax_row_vec(T* ds, const T* p, int64_t len, const T* di, T* g) {
  int64_t i = 0;
#ifdef AGENTATTN_AVX2
  if constexpr (std::is_same_v<T, float>) {
    for (; i + 8 <= len; i += 8) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(p + i),
                                     _mm256_sub_ps(_mm256_loadu_ps(ds + i), _mm256_loadu_ps(di + i)));
      _mm256_storeu_ps(ds + i, v);
      if (g) _mm256_storeu_ps(g + i, _mm256_add_ps(_mm256_loadu_ps(g + i), v));
    }
  }
#endif
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

#ifdef AGENTATTN_AVX2
template <>
inline void col_softmax<float>(float* ST, int64_t n, int64_t R, int64_t ld, const float* bT, int64_t ldb,
                               float* m, float* l) {
  int64_t i = 0;
  for (; i + 8 <= R; i += 8) {
    __m256 mv = _mm256_set1_ps(neg_inf<float>());
    for (int64_t j = 0; j < n; ++j) {
      float* p = ST + j * ld + i;
      __m256 v = _mm256_loadu_ps(p);
      if (bT) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(bT + j * ldb + i));
        _mm256_storeu_ps(p, v);
      }
      mv = _mm256_max_ps(mv, v);
    }
    __m256 lv = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      float* p = ST + j * ld + i;
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
      _mm256_storeu_ps(p, e);
      lv = _mm256_add_ps(lv, e);
    }
    _mm256_storeu_ps(m + i, mv);
    _mm256_storeu_ps(l + i, lv);
  }
  if (i < R) {
    const int64_t r = R - i;
    float mt[8], lt[8];
    for (int64_t c = 0; c < r; ++c) mt[c] = neg_inf<float>(), lt[c] = 0;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < r; ++c) {
        float& x = ST[j * ld + i + c];
        if (bT) x += bT[j * ldb + i + c];
        mt[c] = std::max(mt[c], x);
      }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < r; ++c) {
        float& x = ST[j * ld + i + c];
        x = std::exp(x - mt[c]);
        lt[c] += x;
      }
    for (int64_t c = 0; c < r; ++c) m[i + c] = mt[c], l[i + c] = lt[c];
  }
}

template <>
inline void col_probs<float>(float* ST, int64_t n, int64_t R, int64_t ld, const float* bT, int64_t ldb,
                             const float* lse) {
  int64_t i = 0;
  for (; i + 8 <= R; i += 8) {
    const __m256 lv = _mm256_loadu_ps(lse + i);
    for (int64_t j = 0; j < n; ++j) {
      float* p = ST + j * ld + i;
      __m256 v = _mm256_loadu_ps(p);
      if (bT) v = _mm256_add_ps(v, _mm256_loadu_ps(bT + j * ldb + i));
      _mm256_storeu_ps(p, exp8(_mm256_sub_ps(v, lv)));
    }
  }
  for (int64_t j = 0; j < n && i < R; ++j)
    for (int64_t c = i; c < R; ++c) {
      float& x = ST[j * ld + c];
      x = std::exp(x + (bT ? bT[j * ldb + c] : 0.0f) - lse[c]);
    }
}
#endif

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
