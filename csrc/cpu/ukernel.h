// Small float32 GEMM micro-kernels (AVX2 + FMA) for the agent-attention tiles, without packing.
//
// gemm_bcast computes C[m, x] (+)= rs[m] * sum_k a(m, k) * B[k, x] for m < M, x < NC, k < K, with
//   a(m, k) = a[m * sam + k * sak]   (any strides: the scalar is broadcast from memory),
//   B row-major (ldb), C row-major (ldc), NC a multiple of 8.
// Every product in the kernel has this form with operands as they lie in memory: the rows of K or Q
// against the packed, scaled agents (s A)^T (d x n_pad), and a probability tile (read row- or
// column-wise through the strides) against the rows of V or V_A. Register tile 6 x 16 (12 accumulators);
// the B panel (K x 16) stays in L1 across the row tiles. rs (per-row output scale) may be null.
#pragma once
#include <cstdint>

#include "cpu/vec.h"

#ifdef AGENTATTN_AVX2
namespace agentattn::ukernel {

template <int MR, int NV>
inline void tile(int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb, float* C,
                 int64_t ldc, bool accumulate, const float* rs) {
  __m256 c[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[m][v] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(B + k * ldb + 8 * v);
    const float* ak = a + k * sak;
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const __m256 x = _mm256_broadcast_ss(ak + m * sam);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[m][v] = _mm256_fmadd_ps(x, b[v], c[m][v]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const __m256 s = rs ? _mm256_broadcast_ss(rs + m) : _mm256_set1_ps(1.0f);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* p = C + m * ldc + 8 * v;
      __m256 r = rs ? _mm256_mul_ps(c[m][v], s) : c[m][v];
      if (accumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(p));
      _mm256_storeu_ps(p, r);
    }
  }
}

template <int NV>
inline void row_tiles(int64_t M, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb,
                      float* C, int64_t ldc, bool acc, const float* rs) {
  int64_t m0 = 0;
  for (; m0 + 6 <= M; m0 += 6)
    tile<6, NV>(K, a + m0 * sam, sam, sak, B, ldb, C + m0 * ldc, ldc, acc, rs ? rs + m0 : nullptr);
  const float* am = a + m0 * sam;
  float* cm = C + m0 * ldc;
  const float* r = rs ? rs + m0 : nullptr;
  switch (M - m0) {
    case 5: tile<5, NV>(K, am, sam, sak, B, ldb, cm, ldc, acc, r); break;
    case 4: tile<4, NV>(K, am, sam, sak, B, ldb, cm, ldc, acc, r); break;
    case 3: tile<3, NV>(K, am, sam, sak, B, ldb, cm, ldc, acc, r); break;
    case 2: tile<2, NV>(K, am, sam, sak, B, ldb, cm, ldc, acc, r); break;
    case 1: tile<1, NV>(K, am, sam, sak, B, ldb, cm, ldc, acc, r); break;
    default: break;
  }
}

inline void gemm_bcast(int64_t M, int64_t NC, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B,
                       int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* rs) {
  for (int64_t x0 = 0; x0 < NC; x0 += 16) {
    if (NC - x0 >= 16)
      row_tiles<2>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, accumulate, rs);
    else
      row_tiles<1>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, accumulate, rs);
  }
}

// log(x) for 8 positive normal floats (Cephes logf polynomial).
inline __m256 log8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  x = _mm256_max_ps(x, _mm256_set1_ps(1.17549435e-38f));
  const __m256i xi = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(xi, 23), _mm256_set1_epi32(126)));
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(xi, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
  const __m256 lt = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(one, lt));
  m = _mm256_add_ps(_mm256_sub_ps(m, one), _mm256_and_ps(m, lt));
  const __m256 z = _mm256_mul_ps(m, m);
  __m256 y = _mm256_set1_ps(7.0376836292e-2f);
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.1514610310e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.1676998740e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.2420140846e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(1.4249322787e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-1.6668057665e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(2.0000714765e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(-2.4999993993e-1f));
  y = _mm256_fmadd_ps(y, m, _mm256_set1_ps(3.3333331174e-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, m), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), _mm256_add_ps(m, y));
}

// Lanes [0, valid) set, for masked loads of a row tail.
inline __m256i tail_mask(int64_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), idx);
}

}  // namespace agentattn::ukernel
#endif
