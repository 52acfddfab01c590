// Small float32 GEMM micro-kernels (AVX2 + FMA) for the agent-attention tiles, without packing.
//
// gemm_bcast computes C[m, x] (+)= rs[m] * sum_k a(m, k) * B[k, x] for m < M, x < NC, k < K, with
//   a(m, k) = a[m * sam + k * sak]   (any strides: the scalar is broadcast from memory),
//   B row-major (ldb), C row-major (ldc), NC a multiple of 8.
// Every product in the kernel has this form with operands as they lie in memory: the rows of K or Q
// against the packed, scaled agents (s A)^T (d x n_pad), and a probability tile (read row- or
// column-wise through the strides) against the rows of V or V_A. Register tiles of 12 accumulators, 6 x 16
// (gemm_bcast) or 3 x 32 (gemm_wide); the B panel stays in L1 across the row tiles. rs (per-row output
// scale) may be null.
#pragma once
#include <cstdint>

#include "cpu/vec.h"

#ifdef AGENTATTN_AVX2
namespace agentattn::ukernel {

// What the tiles do with C (the `accumulate` argument; false/true are kStore/kAccumulate):
constexpr int kStore = 0;       // C = result
constexpr int kAccumulate = 1;  // C += result
constexpr int kStream = 2;      // C = result with non-temporal stores (C 32-byte aligned, ldc % 8 == 0;
                                // the caller issues _mm_sfence): the output is not read back, so it
                                // skips the read-for-ownership of every line

template <int MR, int NV>
inline void tile(int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb, float* C,
                 int64_t ldc, int accumulate, const float* rs) {
  __m256 c[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[m][v] = _mm256_setzero_ps();
  if constexpr (MR * NV + NV + 1 <= 16) {
    // B row in registers, one broadcast at a time (6 x 16: 12 + 2 + 1 registers)
#pragma GCC unroll 2
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
  } else {
    // all broadcasts in registers, one B vector at a time (3 x 32: 12 + 3 + 1 registers; the other order
    // needs 17 and the compiler then re-reads B from memory in every FMA)
#pragma GCC unroll 2
    for (int64_t k = 0; k < K; ++k) {
      __m256 x[MR];
      const float* ak = a + k * sak;
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) x[m] = _mm256_broadcast_ss(ak + m * sam);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        __m256 b = _mm256_loadu_ps(B + k * ldb + 8 * v);
        asm("" : "+x"(b));  // keep b in a register: GCC otherwise folds the load into each of the MR FMAs
#pragma GCC unroll 8
        for (int m = 0; m < MR; ++m) c[m][v] = _mm256_fmadd_ps(x[m], b, c[m][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const __m256 s = rs ? _mm256_broadcast_ss(rs + m) : _mm256_set1_ps(1.0f);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* p = C + m * ldc + 8 * v;
      __m256 r = rs ? _mm256_mul_ps(c[m][v], s) : c[m][v];
      if (accumulate == kAccumulate) r = _mm256_add_ps(r, _mm256_loadu_ps(p));
      if (accumulate == kStream)
        _mm256_stream_ps(p, r);
      else
        _mm256_storeu_ps(p, r);
    }
  }
}

// The rows left over after the full tiles of row_tiles: one tile of r <= R rows (nothing when r = 0).
template <int R, int NV>
inline void tail_tile(int64_t r, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb,
                      float* C, int64_t ldc, int acc, const float* rs) {
  if constexpr (R > 0) {
    if (r == R)
      tile<R, NV>(K, a, sam, sak, B, ldb, C, ldc, acc, rs);
    else
      tail_tile<R - 1, NV>(r, K, a, sam, sak, B, ldb, C, ldc, acc, rs);
  }
}

// M rows in tiles of MR rows x 8 NV columns.
template <int MR, int NV>
inline void row_tiles(int64_t M, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb,
                      float* C, int64_t ldc, int acc, const float* rs) {
  int64_t m0 = 0;
  for (; m0 + MR <= M; m0 += MR)
    tile<MR, NV>(K, a + m0 * sam, sam, sak, B, ldb, C + m0 * ldc, ldc, acc, rs ? rs + m0 : nullptr);
  tail_tile<MR - 1, NV>(M - m0, K, a + m0 * sam, sam, sak, B, ldb, C + m0 * ldc, ldc, acc, rs ? rs + m0 : nullptr);
}

inline void gemm_bcast(int64_t M, int64_t NC, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B,
                       int64_t ldb, float* C, int64_t ldc, int accumulate, const float* rs) {
  for (int64_t x0 = 0; x0 < NC; x0 += 16) {
    if (NC - x0 >= 16)
      row_tiles<6, 2>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, accumulate, rs);
    else
      row_tiles<6, 1>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, accumulate, rs);
  }
}

// The same product with 3 x 32 register tiles (12 accumulators) on column blocks of 32, the rest of the
// columns with 6-row tiles: for products whose row count is small or not a multiple of 6 (the
// agent-major score tiles have n rows, e.g. 9 = 3 x 3).
inline void gemm_wide(int64_t M, int64_t NC, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B,
                      int64_t ldb, float* C, int64_t ldc, int accumulate, const float* rs) {
  int64_t x0 = 0;
  for (; x0 + 32 <= NC; x0 += 32)
    row_tiles<3, 4>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, accumulate, rs);
  if (NC - x0 >= 16) {
    row_tiles<6, 2>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, accumulate, rs);
    x0 += 16;
  }
  if (NC - x0 >= 8) row_tiles<6, 1>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, accumulate, rs);
}

// dst (8 x 8, row stride ldd) = src^T (8 x 8, row stride lds).
AGENTATTN_INLINE void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8], u[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {  // rows 0-3 (h = 0) and 4-7 (h = 1)
    u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
  }
}

// dst (d x ldd) = src^T for src (rows x d, row stride d), d a multiple of 8; columns rows..pad8(rows) of dst
// are zero.
inline void pack_transposed(const float* src, int64_t rows, int64_t d, float* dst, int64_t ldd) {
  int64_t c = 0;
  for (; c + 8 <= rows; c += 8)
    for (int64_t k = 0; k < d; k += 8) transpose8x8(src + c * d + k, d, dst + k * ldd + c, ldd);
  if (c == rows) return;
  for (int64_t k = 0; k < d; ++k) {
    float* out = dst + k * ldd;
    for (int64_t i = c; i < rows; ++i) out[i] = src[i * d + k];
    for (int64_t i = rows; i < c + 8; ++i) out[i] = 0.0f;
  }
}

// log(x) for 8 positive normal floats (Cephes logf polynomial).
AGENTATTN_INLINE __m256 log8(__m256 x) {
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
