// The float32 agent-attention kernels, written once over the vector traits of simd.h and compiled once
// per ISA: each aa_kernels_<isa>.cpp defines, in agentattn::cpu's anonymous namespace,
//   S        the full-width vector traits (SimdGeneric, Simd256, Simd512)
//   Sh       the traits for a remaining 8-column piece when S::W = 16 (Simd256; else S itself)
//   kIsa     the Isa value, kBcastMR / kWideMR the register-tile heights (below)
// and then includes this file, which defines the kernels and the table kTable.
//
// Per (batch, head), with scale s, agents A (n x d), keys/values K, V (M x d), queries Q (N x d):
//   stage 1: S1 = s A K^T + B1 (n x M) -> softmax over M -> P1;  V_A = P1 V (n x d)
//   stage 2: S2 = s Q A^T + B2 (N x n) -> softmax over n -> P2;  O = P2 V_A (N x d)
// Every product runs in unpacked register-tile micro-kernels (gemm_bcast / gemm_wide) on the tensors as
// they lie in memory. Two forward layouts (the plan picks one):
//   token-major: agents in the vector lanes, padded to np = 8 ceil(n / 8) (at 16 lanes the last vector of a
//     row may hold 8: masked loads and stores); stage 1 in key tiles
//     ST = K_tile (sA)^T (C x np) with an online softmax down the columns, stage 2 in query tiles
//     S2 = Q_tile (sA)^T (R x np) with the softmax along the rows; only (sA)^T packed; the stage-1 bias
//     transposed once per call (fwd_bias_copy);
//   agent-major: tokens in the lanes, each K/Q tile packed transposed: S = sA K_tile^T (n x C) with the
//     online softmax along the rows, ST = sA Q_tile^T (n x R) with the softmax down the columns (W queries
//     per vector op, no padding of n); batches that share the biases run in groups, tile outer, so that
//     a bias tile is read once per group; the stage-2 bias transposed once per call.
// The backward uses the token-major layout, one (batch, head) per task.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/aa_kernels.h"
#include "cpu/online_softmax.h"
#include "cpu/simd.h"

namespace agentattn::cpu {
inline namespace AGENTATTN_ISA_NS {
namespace {

constexpr int64_t W = S::W;
constexpr int64_t kKeyTile = 128;  // stage-1 keys per tile (a multiple of every W)
constexpr int64_t kRowTile = 96;   // stage-2 queries per tile
#if defined(__AVX2__) && defined(__FMA__)
constexpr bool kHave256 = true;  // 8 x 8 transposes in 256-bit registers
AGENTATTN_INLINE void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  Simd256::transpose8x8(src, lds, dst, ldd);
}
#else
constexpr bool kHave256 = false;
inline void transpose8x8(const float*, int64_t, float*, int64_t) {}
#endif

inline int64_t pad_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Extent of the tile of `tile` items starting at x0 in [.., end): 0 past the end.
inline int64_t tile_extent(int64_t x0, int64_t tile, int64_t end) { return x0 < end ? std::min(tile, end - x0) : 0; }

// Prefetch [p, p + count floats) into L2 (the next tile's rows of K, V or Q while this tile computes).
inline void prefetch(const float* p, int64_t count) {
  const char* c = reinterpret_cast<const char*>(p);
#pragma GCC unroll 4
  for (int64_t off = 0; off < count * 4; off += 64) prefetch_l2(c + off);
}
// The same into L1: the bias tiles (read by the softmax passes right after the product).
inline void prefetch_to_l1(const float* p, int64_t count) {
  const char* c = reinterpret_cast<const char*>(p);
#pragma GCC unroll 4
  for (int64_t off = 0; off < count * 4; off += 64) prefetch_l1(c + off);
}
// n rows of a row-major matrix (row stride ld), columns [off, off + count), into L1; nothing for a null
// matrix or count 0 (the next bias tile of the agent-major stages: n rows M apart, a stream pattern the
// hardware prefetcher does not follow).
inline void prefetch_rows_l1(const float* rows, int64_t n, int64_t ld, int64_t off, int64_t count) {
  if (!rows || count <= 0) return;
  for (int64_t j = 0; j < n; ++j) prefetch_to_l1(rows + j * ld + off, count);
}

// =========================================================================================== register tiles
// C[m, x] (+)= rs[m] * sum_k a(m, k) * B[k, x] for m < M, x < NC, k < K, with a(m, k) = a[m sam + k sak]
// (any strides: the scalar is broadcast from memory), B row-major (ldb), C row-major (ldc), NC a multiple
// of 8. Register tiles of MR rows x NV vectors; the B panel stays in L1 across the row tiles. rs (per-row
// output scale) may be null.
constexpr int kStore = 0;       // C = result
constexpr int kAccumulate = 1;  // C += result
constexpr int kStream = 2;      // C = result with non-temporal stores (C 4 W-byte aligned, ldc % W == 0;
                                // the caller fences): the output is not read back here

template <class T, int MR, int NV>
inline void tile(int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb, float* C,
                 int64_t ldc, int mode, const float* rs) {
  using V = typename T::V;
  constexpr int w = T::W;
  V c[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[m][v] = T::zero();
  if constexpr (MR * NV + NV + 1 <= T::kRegs) {
    // B row in registers, one broadcast at a time (AVX2 6 x 2: 12 + 2 + 1 registers)
#pragma GCC unroll 2
    for (int64_t k = 0; k < K; ++k) {
      V b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[v] = T::load(B + k * ldb + w * v);
      const float* ak = a + k * sak;
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        const V x = T::bcast(ak + m * sam);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) c[m][v] = T::fmadd(x, b[v], c[m][v]);
      }
    }
  } else {
    // all broadcasts in registers, one B vector at a time (AVX2 3 x 4: 12 + 3 + 1 registers; the other
    // order needs 17 and the compiler then re-reads B from memory in every FMA)
#pragma GCC unroll 2
    for (int64_t k = 0; k < K; ++k) {
      V x[MR];
      const float* ak = a + k * sak;
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) x[m] = T::bcast(ak + m * sam);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        V b = T::load(B + k * ldb + w * v);
        T::keep(b);  // keep b in a register: GCC otherwise folds the load into each of the MR FMAs
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) c[m][v] = T::fmadd(x[m], b, c[m][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    const V s = rs ? T::bcast(rs + m) : T::set1(1.0f);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* p = C + m * ldc + w * v;
      V r = rs ? T::mul(c[m][v], s) : c[m][v];
      if (mode == kAccumulate) r = T::add(r, T::load(p));
      if (mode == kStream)
        T::stream(p, r);
      else
        T::store(p, r);
    }
  }
}

// The rows left over after the full tiles of row_tiles: one tile of r <= R rows (nothing when r = 0).
template <class T, int R, int NV>
inline void tail_tile(int64_t r, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb,
                      float* C, int64_t ldc, int mode, const float* rs) {
  if constexpr (R > 0) {
    if (r == R)
      tile<T, R, NV>(K, a, sam, sak, B, ldb, C, ldc, mode, rs);
    else
      tail_tile<T, R - 1, NV>(r, K, a, sam, sak, B, ldb, C, ldc, mode, rs);
  }
}

// M rows in tiles of MR rows x NV vectors.
template <class T, int MR, int NV>
inline void row_tiles(int64_t M, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B, int64_t ldb,
                      float* C, int64_t ldc, int mode, const float* rs) {
  int64_t m0 = 0;
  for (; m0 + MR <= M; m0 += MR)
    tile<T, MR, NV>(K, a + m0 * sam, sam, sak, B, ldb, C + m0 * ldc, ldc, mode, rs ? rs + m0 : nullptr);
  tail_tile<T, MR - 1, NV>(M - m0, K, a + m0 * sam, sam, sak, B, ldb, C + m0 * ldc, ldc, mode, rs ? rs + m0 : nullptr);
}

// The columns [x0, NC) left after the wide blocks: 2W-column blocks of kBcastMR rows, a W-column block, and
// (W = 16) an 8-column piece in 256-bit vectors.
inline void narrow_columns(int64_t x0, int64_t M, int64_t NC, int64_t K, const float* a, int64_t sam, int64_t sak,
                           const float* B, int64_t ldb, float* C, int64_t ldc, int mode, const float* rs) {
  for (; x0 + 2 * W <= NC; x0 += 2 * W)
    row_tiles<S, kBcastMR, 2>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, mode, rs);
  if (x0 + W <= NC) {
    row_tiles<S, kBcastMR, 1>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, mode, rs);
    x0 += W;
  }
  if constexpr (W > 8) {
    if (x0 + 8 <= NC) row_tiles<Sh, kBcastMR, 1>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, mode, rs);
  }
}

inline void gemm_bcast(int64_t M, int64_t NC, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B,
                       int64_t ldb, float* C, int64_t ldc, int mode, const float* rs) {
  narrow_columns(0, M, NC, K, a, sam, sak, B, ldb, C, ldc, mode, rs);
}

// The same product with kWideMR x 4 W register tiles on column blocks of 4 W, the rest as gemm_bcast: for
// products whose row count is small or not a multiple of kBcastMR (the agent-major score tiles have n rows).
inline void gemm_wide(int64_t M, int64_t NC, int64_t K, const float* a, int64_t sam, int64_t sak, const float* B,
                      int64_t ldb, float* C, int64_t ldc, int mode, const float* rs) {
  int64_t x0 = 0;
  for (; x0 + 4 * W <= NC; x0 += 4 * W) row_tiles<S, kWideMR, 4>(M, K, a, sam, sak, B + x0, ldb, C + x0, ldc, mode, rs);
  narrow_columns(x0, M, NC, K, a, sam, sak, B, ldb, C, ldc, mode, rs);
}

// Output tiles of O (rows of d floats) go out with non-temporal stores when every row starts on a vector
// boundary (O is not read back here).
inline int out_mode(const float* Op, int64_t d) {
  return reinterpret_cast<uintptr_t>(Op) % (4 * W) == 0 && d % W == 0 ? kStream : kStore;
}

// ============================================================================================= packing
// dst (d x ldd) = src^T for src (rows x d, row stride d), d a multiple of 8; columns rows..pad_to(rows, W)
// of dst are zero.
inline void pack_transposed(const float* src, int64_t rows, int64_t d, float* dst, int64_t ldd) {
  int64_t c = 0;
  if constexpr (kHave256) {
    for (; c + 8 <= rows; c += 8)
      for (int64_t k = 0; k < d; k += 8) transpose8x8(src + c * d + k, d, dst + k * ldd + c, ldd);
  }
  const int64_t end = pad_to(rows, W);
  if (c == end) return;
  for (int64_t k = 0; k < d; ++k) {
    float* out = dst + k * ldd;
    for (int64_t i = c; i < rows; ++i) out[i] = src[i * d + k];
    for (int64_t i = std::max(c, rows); i < end; ++i) out[i] = 0.0f;
  }
}

// AT (d x np) = s A^T, columns n..np zero.
inline void pack_agents(const float* Ap, int64_t n, int64_t d, int64_t np, float s, float* AT) {
  for (int64_t c = 0; c < d; ++c) {
    float* row = AT + c * np;
    for (int64_t j = 0; j < n; ++j) row[j] = s * Ap[j * d + c];
    for (int64_t j = n; j < np; ++j) row[j] = 0.0f;
  }
}

// sA (n x d) = s A.
inline void scale_agents(const float* Ap, int64_t n, int64_t d, float s, float* sA) {
  for (int64_t i = 0; i < n * d; ++i) sA[i] = s * Ap[i];
}

// ========================================================================================== row passes
using Vf = S::V;

// Vector v of a row whose last vector holds fewer than W floats (part, lanes mk): masked there.
template <class T>
AGENTATTN_INLINE typename T::V load_part(const float* p, bool part, typename T::Mask mk) {
  return part ? T::load_first(p, mk) : T::load(p);
}
template <class T>
AGENTATTN_INLINE void store_part(float* p, typename T::V x, bool part, typename T::Mask mk) {
  if (part)
    T::store_first(p, mk, x);
  else
    T::store(p, x);
}

inline void scale_row(float* y, int64_t len, float a) {
  const Vf av = S::set1(a);
  int64_t i = 0;
  for (; i + W <= len; i += W) S::store(y + i, S::mul(S::load(y + i), av));
  for (; i < len; ++i) y[i] *= a;
}

// x[j] += b[j] (b may be null); returns max_j x[j].
inline float add_bias_max(float* x, const float* b, int64_t len) {
  const Vf ninf = S::set1(neg_inf<float>());
  Vf m = ninf;
  int64_t j = 0;
  if (b) {
    for (; j + W <= len; j += W) {
      const Vf v = S::add(S::load(x + j), S::load(b + j));
      S::store(x + j, v);
      m = S::max(m, v);
    }
  } else {
    for (; j + W <= len; j += W) m = S::max(m, S::load(x + j));
  }
  if (j < len) {
    const auto mk = S::first(len - j);
    Vf v = S::load_first(x + j, mk);
    if (b) {
      v = S::add(v, S::load_first(b + j, mk));
      S::store_first(x + j, mk, v);
    }
    m = S::max(m, S::select(mk, v, ninf));
  }
  return S::hmax(m);
}

// x[j] = exp(x[j] - m); returns the sum.
inline float exp_sub_sum(float* x, int64_t len, float m) {
  const Vf mv = S::set1(m);
  Vf s0 = S::zero(), s1 = S::zero();
  int64_t j = 0;
  for (; j + 2 * W <= len; j += 2 * W) {
    const Vf e0 = S::exp(S::sub(S::load(x + j), mv));
    const Vf e1 = S::exp(S::sub(S::load(x + j + W), mv));
    S::store(x + j, e0);
    S::store(x + j + W, e1);
    s0 = S::add(s0, e0);
    s1 = S::add(s1, e1);
  }
  for (; j + W <= len; j += W) {
    const Vf e = S::exp(S::sub(S::load(x + j), mv));
    S::store(x + j, e);
    s0 = S::add(s0, e);
  }
  if (j < len) {
    const auto mk = S::first(len - j);
    const Vf e = S::select(mk, S::exp(S::sub(S::load_first(x + j, mk), mv)), S::zero());
    S::store_first(x + j, mk, e);
    s1 = S::add(s1, e);
  }
  return S::hsum(S::add(s0, s1));
}

// Softmax down the columns of ST (n x R, row stride ld >= pad_to(R, W), the padding columns finite), in
// place, unnormalised: ST[j, i] = exp(ST[j, i] + bT[j, i] - m[i]), m[i] = max_j (ST + bT)[j, i],
// l[i] = sum_j ST[j, i]. bT (n x R, row stride ldb) may be null; m and l hold pad_to(R, W) values.
inline void col_softmax(float* ST, int64_t n, int64_t R, int64_t ld, const float* bT, int64_t ldb, float* m, float* l) {
  for (int64_t i = 0; i < R; i += W) {
    const auto mk = S::first(R - i);  // bias columns past R are not there to read
    Vf mv = S::set1(neg_inf<float>());
    for (int64_t j = 0; j < n; ++j) {
      float* p = ST + j * ld + i;
      Vf v = S::load(p);
      if (bT) {
        const float* b = bT + j * ldb + i;
        v = S::add(v, i + W <= R ? S::load(b) : S::load_first(b, mk));
        S::store(p, v);
      }
      mv = S::max(mv, v);
    }
    Vf lv = S::zero();
    for (int64_t j = 0; j < n; ++j) {
      float* p = ST + j * ld + i;
      const Vf e = S::exp(S::sub(S::load(p), mv));
      S::store(p, e);
      lv = S::add(lv, e);
    }
    S::store(m + i, mv);
    S::store(l + i, lv);
  }
}

// For R rows with max m and sum l of their exponentials: lse = m + log l (R values written), and l
// becomes 1 / l (pad_to(R, W) values: the row scale of the O product).
inline void finish_rows(const float* m, float* l, int64_t R, float* lse) {
  for (int64_t i = 0; i < R; i += W) {
    const Vf sv = S::load(l + i);
    const Vf r = S::add(S::load(m + i), S::log(sv));
    if (i + W <= R)
      S::store(lse + i, r);
    else
      S::store_first(lse + i, S::first(R - i), r);
    S::store(l + i, S::div(S::set1(1.0f), sv));
  }
}

// ============================================================================== token-major forward
// Stage-1 tile pass over C rows x NV vectors of ST (row stride ld, the last vector `last` <= W columns wide;
// the bias, same layout, may be null): adds the bias in place, takes the column max, mnew = max(m, column
// max), then ST = exp(ST - mnew) and the column sums tsum (m, mnew, tsum: NV full vectors). Row by row so
// that ST and the bias stream through memory; pf prefetches the next tile's K and V rows.
struct Prefetch {
  const float *a = nullptr, *b = nullptr;
  int64_t len = 0, rows = 0;  // rows of len floats at a and at b
  void row(int64_t i) const {
    if (i >= rows) return;
    prefetch(a + i * len, len);
    prefetch(b + i * len, len);
  }
};

template <class T, int NV>
inline void softmax_cols(float* ST, int64_t C, int64_t ld, const float* bias, const float* m, float* mnew, float* tsum,
                         const Prefetch& pf, int64_t last) {
  using V = typename T::V;
  constexpr int w = T::W;
  const bool part = last < w;
  const auto mk = T::first(last);
  V mx[NV], sm[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) mx[v] = T::set1(neg_inf<float>());
  for (int64_t i = 0; i < C; ++i) {
    float* p = ST + i * ld;
    pf.row(i);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const bool pv = v == NV - 1 && part;
      V x = load_part<T>(p + w * v, pv, mk);
      if (bias) {
        x = T::add(x, load_part<T>(bias + i * ld + w * v, pv, mk));
        store_part<T>(p + w * v, x, pv, mk);
      }
      mx[v] = T::max(mx[v], x);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    mx[v] = T::max(T::load(m + w * v), mx[v]);
    T::store(mnew + w * v, mx[v]);
    sm[v] = T::zero();
  }
  for (int64_t i = 0; i < C; ++i) {
    float* p = ST + i * ld;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const bool pv = v == NV - 1 && part;
      const V e = T::exp(T::sub(load_part<T>(p + w * v, pv, mk), mx[v]));
      store_part<T>(p + w * v, e, pv, mk);
      sm[v] = T::add(sm[v], e);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) T::store(tsum + w * v, sm[v]);
}

// columns [j0, j0 + width) of the tile, width a multiple of 8, up to 8 W
inline void softmax_cols_block(int64_t width, float* ST, int64_t C, int64_t ld, const float* bias, const float* m,
                               float* mnew, float* tsum, const Prefetch& pf) {
  const int64_t nv = (width + W - 1) / W, last = width - (nv - 1) * W;
  switch (nv) {
    case 1: return softmax_cols<S, 1>(ST, C, ld, bias, m, mnew, tsum, pf, last);
    case 2: return softmax_cols<S, 2>(ST, C, ld, bias, m, mnew, tsum, pf, last);
    case 3: return softmax_cols<S, 3>(ST, C, ld, bias, m, mnew, tsum, pf, last);
    case 4: return softmax_cols<S, 4>(ST, C, ld, bias, m, mnew, tsum, pf, last);
    case 5: return softmax_cols<S, 5>(ST, C, ld, bias, m, mnew, tsum, pf, last);
    case 6: return softmax_cols<S, 6>(ST, C, ld, bias, m, mnew, tsum, pf, last);
    case 7: return softmax_cols<S, 7>(ST, C, ld, bias, m, mnew, tsum, pf, last);
    default: return softmax_cols<S, 8>(ST, C, ld, bias, m, mnew, tsum, pf, last);
  }
}

// The token-major statistics in the stats scratch (each buffer a whole number of vectors past its end).
struct TmStats {
  float *mnew, *tsum, *mrow, *srow, *m, *l;
  static int64_t size(int64_t np) { return 4 * (np + W) + 2 * (kRowTile + W); }
  TmStats(float* p, int64_t np)
      : mnew(p),
        tsum(mnew + np + W),
        mrow(tsum + np + W),
        srow(mrow + kRowTile + W),
        m(srow + kRowTile + W),
        l(m + np + W) {}
};

// Stage 1 over keys [k0, k1) of one slice, token-major: m, l (np each) and acc (n x d), unnormalised.
inline void stage1_tm(const FwdParams& P, const float* AT, const float* Kp, const float* Vp, const float* B1Tp,
                      int64_t k0, int64_t k1, float* m, float* l, float* acc, const Scratch& ws) {
  const int64_t n = P.n, np = P.plan.np, d = P.d;
  float* ST = ws.s1;
  const TmStats st(ws.stats, np);
  float *mnew = st.mnew, *tsum = st.tsum;
  for (int64_t j = 0; j < np; ++j) m[j] = neg_inf<float>(), l[j] = 0.0f;
  std::fill(acc, acc + n * d, 0.0f);
  for (int64_t c0 = k0; c0 < k1; c0 += kKeyTile) {
    const int64_t C = std::min(kKeyTile, k1 - c0);
    gemm_bcast(C, np, d, Kp + c0 * d, d, 1, AT, np, ST, np, kStore, nullptr);
    // the next tile's K and V rows, one row each per row of this tile's softmax pass
    const Prefetch pf{Kp + (c0 + kKeyTile) * d, Vp + (c0 + kKeyTile) * d, d, tile_extent(c0 + kKeyTile, kKeyTile, k1)};
    const float* bias = B1Tp ? B1Tp + c0 * np : nullptr;
    for (int64_t j0 = 0; j0 < np; j0 += 8 * W) {  // register-resident max and sum for up to 8 vectors
      const int64_t width = std::min<int64_t>(8 * W, np - j0);
      softmax_cols_block(width, ST + j0, C, np, bias ? bias + j0 : nullptr, m + j0, mnew + j0, tsum + j0,
                         j0 == 0 ? pf : Prefetch{});
    }
    const bool rescale = c0 > k0;
    for (int64_t j = 0; j < n; ++j)
      online_commit(m[j], l[j], mnew[j], tsum[j], [&](float alpha) {
        if (rescale) scale_row(acc + j * d, d, alpha);
      });
    gemm_bcast(n, d, C, ST, 1, np, Vp + c0 * d, d, acc, d, kAccumulate, nullptr);
  }
}

// Stage-2 softmax along the rows of S (R x NV vectors, row stride ld = np, the last vector np - (NV - 1) W
// wide; n valid columns, tmask the last vector's valid lanes): adds the bias rows (stride n), keeps the row
// in registers between max and exp, writes the unnormalised exp (0 in the padding lanes), the row max and
// the row sum; prefetches the next tile's Q rows.
template <int NV>
inline void softmax_rows(float* Sc, int64_t R, int64_t ld, const float* b, int64_t n, float* mrow, float* srow,
                         const float* qnext, int64_t Rn, int64_t d) {
  const Vf ninf = S::set1(neg_inf<float>());
  const auto tmask = S::first(n - (NV - 1) * W);
  const int64_t last = ld - (NV - 1) * W;
  const bool part = last < W;
  const auto mk = S::first(last);
  for (int64_t i = 0; i < R; ++i) {
    if (i < Rn) prefetch(qnext + i * d, d);
    float* row = Sc + i * ld;
    const float* brow = b ? b + i * n : nullptr;
    Vf x[NV];
    Vf mx = ninf;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      x[v] = load_part<S>(row + W * v, v == NV - 1 && part, mk);
      if (v < NV - 1) {
        if (brow) x[v] = S::add(x[v], S::load(brow + W * v));
      } else {
        if (brow) x[v] = S::add(x[v], S::load_first(brow + W * v, tmask));
        x[v] = S::select(tmask, x[v], ninf);
      }
      mx = S::max(mx, x[v]);
    }
    const float ms = S::hmax(mx);
    const Vf msv = S::set1(ms);
    Vf sum = S::zero();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      Vf e = S::exp(S::sub(x[v], msv));
      if (v == NV - 1) e = S::select(tmask, e, S::zero());
      store_part<S>(row + W * v, e, v == NV - 1 && part, mk);
      sum = S::add(sum, e);
    }
    mrow[i] = ms;
    srow[i] = S::hsum(sum);
  }
}

// The same for more than 8 vectors per row (n > 8 W): two passes over the row in memory.
inline void softmax_rows_long(float* Sc, int64_t R, int64_t ld, const float* b, int64_t n, int64_t nv, float* mrow,
                              float* srow, const float* qnext, int64_t Rn, int64_t d) {
  const Vf ninf = S::set1(neg_inf<float>());
  const auto tmask = S::first(n - (nv - 1) * W);
  const int64_t last = ld - (nv - 1) * W;
  const bool part = last < W;
  const auto mk = S::first(last);
  for (int64_t i = 0; i < R; ++i) {
    if (i < Rn) prefetch(qnext + i * d, d);
    float* row = Sc + i * ld;
    const float* brow = b ? b + i * n : nullptr;
    Vf mx = ninf;
    for (int64_t v = 0; v < nv; ++v) {
      Vf x = load_part<S>(row + W * v, v == nv - 1 && part, mk);
      if (v < nv - 1) {
        if (brow) x = S::add(x, S::load(brow + W * v));
      } else {
        if (brow) x = S::add(x, S::load_first(brow + W * v, tmask));
        x = S::select(tmask, x, ninf);
      }
      store_part<S>(row + W * v, x, v == nv - 1 && part, mk);
      mx = S::max(mx, x);
    }
    const float ms = S::hmax(mx);
    const Vf msv = S::set1(ms);
    Vf sum = S::zero();
    for (int64_t v = 0; v < nv; ++v) {
      Vf e = S::exp(S::sub(load_part<S>(row + W * v, v == nv - 1 && part, mk), msv));
      if (v == nv - 1) e = S::select(tmask, e, S::zero());
      store_part<S>(row + W * v, e, v == nv - 1 && part, mk);
      sum = S::add(sum, e);
    }
    mrow[i] = ms;
    srow[i] = S::hsum(sum);
  }
}

// Stage 2 over queries [r0, r1) of one slice, token-major: O rows and lse2.
inline void stage2_tm(const FwdParams& P, const float* AT, const float* Qp, const float* VAp, const float* B2p,
                      int64_t r0, int64_t r1, float* Op, float* L2p, const Scratch& ws) {
  const int64_t n = P.n, np = P.plan.np, d = P.d, nv = (np + W - 1) / W;
  float* Sc = ws.s2;
  const TmStats st(ws.stats, np);
  float *mrow = st.mrow, *srow = st.srow;
  const int omode = out_mode(Op, d);
  for (int64_t i0 = r0; i0 < r1; i0 += kRowTile) {
    const int64_t R = std::min(kRowTile, r1 - i0);
    gemm_bcast(R, np, d, Qp + i0 * d, d, 1, AT, np, Sc, np, kStore, nullptr);
    const int64_t Rn = tile_extent(i0 + kRowTile, kRowTile, r1);
    const float* brows = B2p ? B2p + i0 * n : nullptr;
    const float* qnext = Qp + (i0 + kRowTile) * d;
    switch (nv) {
      case 1: softmax_rows<1>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      case 2: softmax_rows<2>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      case 3: softmax_rows<3>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      case 4: softmax_rows<4>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      case 5: softmax_rows<5>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      case 6: softmax_rows<6>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      case 7: softmax_rows<7>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      case 8: softmax_rows<8>(Sc, R, np, brows, n, mrow, srow, qnext, Rn, d); break;
      default: softmax_rows_long(Sc, R, np, brows, n, nv, mrow, srow, qnext, Rn, d); break;
    }
    finish_rows(mrow, srow, R, L2p + i0);
    gemm_bcast(R, d, n, Sc, np, 1, VAp, d, Op + i0 * d, d, omode, srow);
  }
  if (omode == kStream) S::stream_fence();
}

// ============================================================================== agent-major forward
// A group of g slices (consecutive batches of one head) that share both biases: the stages run tile outer,
// slice inner, so that each bias tile comes from memory once for the whole group. Slice s of the group:
// tensors at base + s * stride.
struct AmGroup {
  int64_t g = 1;
  const float *sA = nullptr, *K = nullptr, *V = nullptr, *Q = nullptr;  // sA: g x n x d, contiguous
  float *VA = nullptr, *O = nullptr, *L2 = nullptr, *ml = nullptr;      // ml: g x (m, l), np each
  int64_t kv_stride = 0, q_stride = 0, va_stride = 0, l2_stride = 0;    // K, V / Q, O / V_A / lse2
};

// Stage 1 over keys [k0, k1) for the slices of grp: per slice m, l (in grp.ml) and acc (n x d, in grp.VA),
// unnormalised. B1p: the group's stage-1 bias (n x M) or null.
inline void stage1_am(const FwdParams& P, const AmGroup& grp, const float* B1p, int64_t k0, int64_t k1,
                      const Scratch& ws) {
  const int64_t n = P.n, np = P.plan.np, d = P.d, M = P.M;
  float* Sc = ws.s1;
  float* KT = ws.packed;
  for (int64_t s = 0; s < grp.g; ++s) {
    float* m = grp.ml + s * 2 * np;
    for (int64_t j = 0; j < n; ++j) m[j] = neg_inf<float>(), m[np + j] = 0.0f;
    std::fill(grp.VA + s * grp.va_stride, grp.VA + s * grp.va_stride + n * d, 0.0f);
  }
  for (int64_t c0 = k0; c0 < k1; c0 += kKeyTile) {
    const int64_t C = std::min(kKeyTile, k1 - c0), Cp = pad_to(C, W);
    prefetch_rows_l1(B1p, n, M, c0 + kKeyTile, tile_extent(c0 + kKeyTile, kKeyTile, k1));  // the next bias tile
    const bool rescale = c0 > k0;
    for (int64_t s = 0; s < grp.g; ++s) {
      const float *Kp = grp.K + s * grp.kv_stride, *Vp = grp.V + s * grp.kv_stride;
      float *m = grp.ml + s * 2 * np, *l = m + np, *acc = grp.VA + s * grp.va_stride;
      pack_transposed(Kp + c0 * d, C, d, KT, Cp);
      gemm_wide(n, Cp, d, grp.sA + s * n * d, d, 1, KT, Cp, Sc, Cp, kStore, nullptr);
      // what runs next (the next slice's tile, or the first slice's next tile): its K and V rows, spread
      // over this tile's softmax rows
      const int64_t tnext = ((c0 - k0) / kKeyTile) * grp.g + s + 1;
      const int64_t ps = tnext % grp.g, pc0 = k0 + (tnext / grp.g) * kKeyTile;
      const int64_t pC = tile_extent(pc0, kKeyTile, k1);
      const float* pK = grp.K + ps * grp.kv_stride + pc0 * d;
      const float* pV = grp.V + ps * grp.kv_stride + pc0 * d;
      const int64_t per_row = (pC * d + n - 1) / n;
      for (int64_t j = 0; j < n; ++j) {
        if (pC) {
          const int64_t off = std::min(j * per_row, pC * d), len = std::min(per_row, pC * d - off);
          prefetch(pK + off, len);
          prefetch(pV + off, len);
        }
        float* row = Sc + j * Cp;
        const float mb = add_bias_max(row, B1p ? B1p + j * M + c0 : nullptr, C);
        const float mnew = std::max(m[j], mb);
        const float sum = exp_sub_sum(row, C, mnew);
        online_commit(m[j], l[j], mnew, sum, [&](float alpha) {
          if (rescale) scale_row(acc + j * d, d, alpha);
        });
      }
      gemm_wide(n, d, C, Sc, Cp, 1, Vp + c0 * d, d, acc, d, kAccumulate, nullptr);
    }
  }
}

// Stage 2 over queries [r0, r1) for the slices of grp: O rows and lse2. B2Tp: the stage-2 bias transposed
// (n x N) or null.
inline void stage2_am(const FwdParams& P, const AmGroup& grp, const float* B2Tp, int64_t r0, int64_t r1,
                      const Scratch& ws) {
  const int64_t n = P.n, d = P.d, N = P.N;
  float* ST = ws.s2;
  float* QT = ws.packed;
  float* mv = ws.stats + grp.g * 2 * P.plan.np;
  float* lv = mv + kRowTile + W;
  const int omode = out_mode(grp.O, d);  // every slice's O is aligned like the first (d % W == 0)
  for (int64_t i0 = r0; i0 < r1; i0 += kRowTile) {
    const int64_t R = std::min(kRowTile, r1 - i0), Rp = pad_to(R, W);
    const int64_t Rn = tile_extent(i0 + kRowTile, kRowTile, r1);
    prefetch_rows_l1(B2Tp, n, N, i0 + kRowTile, Rn);  // the next bias tile
    for (int64_t s = 0; s < grp.g; ++s) {
      const float* Qp = grp.Q + s * grp.q_stride;
      pack_transposed(Qp + i0 * d, R, d, QT, Rp);
      gemm_wide(n, Rp, d, grp.sA + s * n * d, d, 1, QT, Rp, ST, Rp, kStore, nullptr);
      if (s + 1 < grp.g)
        prefetch(grp.Q + (s + 1) * grp.q_stride + i0 * d, R * d);
      else if (Rn)
        prefetch(grp.Q + (i0 + kRowTile) * d, Rn * d);
      col_softmax(ST, n, R, Rp, B2Tp ? B2Tp + i0 : nullptr, N, mv, lv);
      finish_rows(mv, lv, R, grp.L2 + s * grp.l2_stride + i0);
      gemm_wide(R, d, n, ST, 1, Rp, grp.VA + s * grp.va_stride, d, grp.O + s * grp.q_stride + i0 * d, d, omode, lv);
    }
  }
  if (omode == kStream) S::stream_fence();
}

// gb slices (b0 .. b0 + gb - 1, head h) with their scaled agents in scratch; ml: their (m, l) states.
inline AmGroup am_group(const FwdParams& P, int64_t b0, int64_t h, int64_t gb, float* ml, const Scratch& ws) {
  const int64_t H = P.H, N = P.N, M = P.M, n = P.n, d = P.d;
  AmGroup grp;
  grp.g = gb;
  float* sA = ws.agents;
  for (int64_t s = 0; s < gb; ++s) scale_agents(P.a + ((b0 + s) * H + h) * n * d, n, d, P.scale, sA + s * n * d);
  const int64_t bh0 = b0 * H + h;
  grp.sA = sA;
  grp.K = P.k + bh0 * M * d, grp.V = P.v + bh0 * M * d, grp.Q = P.q + bh0 * N * d;
  grp.VA = P.agent_v + bh0 * n * d, grp.O = P.out + bh0 * N * d, grp.L2 = P.lse2 + bh0 * N;
  grp.ml = ml;
  grp.kv_stride = H * M * d, grp.q_stride = H * N * d, grp.va_stride = H * n * d, grp.l2_stride = H * N;
  return grp;
}

// ====================================================================================== forward tasks
ScratchSizes fwd_scratch(const FwdParams& P) {
  const int64_t n = P.n, np = P.plan.np, d = P.d, g = P.plan.group;
  ScratchSizes s;
  if (P.plan.layout == Layout::kTokenMajor) {
    s.s1 = kKeyTile * np;
    s.s2 = kRowTile * np;
    s.agents = d * np;
    s.stats = TmStats::size(np);
  } else {
    s.s1 = n * kKeyTile;
    s.s2 = n * kRowTile;
    s.packed = d * std::max(kKeyTile, kRowTile);
    s.agents = g * n * d;
    s.stats = g * 2 * np + 2 * (kRowTile + W);
  }
  return s;
}

// One task of the rearranged bias copy of a layout, 64 tokens of one bias slice: token-major b1 (n x M)
// -> (M x np), padding zero; agent-major b2 (N x n) -> (n x N). Shared by forward and backward.
void copy_bias_task(Layout layout, const BiasRef& b1, const BiasRef& b2, int64_t n, int64_t np, int64_t N, int64_t M,
                    int64_t chunks, float* copy_dst, int64_t t) {
  const int64_t sl = t / chunks, i0 = (t % chunks) * 64;
  if (layout == Layout::kTokenMajor) {
    const int64_t i1 = std::min(M, i0 + 64);
    const float* src = b1.p + sl * n * M;
    float* dst = copy_dst + sl * M * np;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = i0; i < i1; ++i) dst[i * np + j] = src[j * M + i];
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t j = n; j < np; ++j) dst[i * np + j] = 0.0f;
    return;
  }
  const int64_t i1 = std::min(N, i0 + 64);
  const float* s = b2.p + sl * N * n;
  float* o = copy_dst + sl * N * n;
  int64_t i = i0;
  if constexpr (kHave256) {
    for (; i + 8 <= i1; i += 8) {  // 8 x 8 blocks, then the agents left over
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) transpose8x8(s + i * n + j, n, o + j * N + i, N);
      for (; j < n; ++j)
        for (int64_t r = i; r < i + 8; ++r) o[j * N + r] = s[r * n + j];
    }
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t r = i; r < i1; ++r) o[j * N + r] = s[r * n + j];
}

void fwd_bias_copy(const FwdParams& P, int64_t t) {
  copy_bias_task(P.plan.layout, P.b1, P.b2, P.n, P.plan.np, P.N, P.M, P.copy_chunks, P.copy_dst, t);
}

// Normalise one slice's stage-1 result: lse1 = m + log l, V_A = acc / l.
inline void finish_stage1(const float* m, const float* l, int64_t n, int64_t d, float* acc, float* L1p) {
  for (int64_t j = 0; j < n; ++j) L1p[j] = finish_row(m[j], l[j], acc + j * d, d);
}

void fwd_group(const FwdParams& P, int64_t t, const Scratch& ws) {
  const int64_t H = P.H, N = P.N, M = P.M, n = P.n, d = P.d, np = P.plan.np;
  if (P.plan.layout == Layout::kTokenMajor) {
    const int64_t bh = t, b = bh / H, h = bh % H;
    float* AT = ws.agents;
    pack_agents(P.a + bh * n * d, n, d, np, P.scale, AT);
    const TmStats st(ws.stats, np);
    float* acc = P.agent_v + bh * n * d;
    const float* B1Tp = P.bias_copy.slice(b, h);
    stage1_tm(P, AT, P.k + bh * M * d, P.v + bh * M * d, B1Tp, 0, M, st.m, st.l, acc, ws);
    finish_stage1(st.m, st.l, n, d, acc, P.lse1 + bh * n);
    stage2_tm(P, AT, P.q + bh * N * d, acc, P.b2.slice(b, h), 0, N, P.out + bh * N * d, P.lse2 + bh * N, ws);
    return;
  }
  const int64_t g = P.plan.group, h = t % H, b0 = (t / H) * g, gb = std::min(g, P.B - b0);
  const AmGroup grp = am_group(P, b0, h, gb, ws.stats, ws);
  stage1_am(P, grp, P.b1.slice(b0, h), 0, M, ws);
  for (int64_t s = 0; s < gb; ++s) {
    const float* m = grp.ml + s * 2 * np;
    finish_stage1(m, m + np, n, d, grp.VA + s * grp.va_stride, P.lse1 + ((b0 + s) * H + h) * n);
  }
  stage2_am(P, grp, P.bias_copy.slice(b0, h), 0, N, ws);
}

void fwd_stage1_chunk(const FwdParams& P, int64_t t, const Scratch& ws) {
  const int64_t H = P.H, M = P.M, n = P.n, d = P.d, np = P.plan.np, nkc = P.plan.nkc;
  const int64_t bh = t / nkc, k0 = (t % nkc) * P.plan.kc, k1 = std::min(M, k0 + P.plan.kc);
  float* part = P.parts + t * P.part_size();
  if (P.plan.layout == Layout::kTokenMajor) {
    float* AT = ws.agents;
    pack_agents(P.a + bh * n * d, n, d, np, P.scale, AT);
    stage1_tm(P, AT, P.k + bh * M * d, P.v + bh * M * d, P.bias_copy.slice(bh / H, bh % H), k0, k1, part, part + np,
              part + 2 * np, ws);
    return;
  }
  AmGroup grp = am_group(P, bh / H, bh % H, 1, part, ws);
  grp.VA = part + 2 * np;
  stage1_am(P, grp, P.b1.slice(bh / H, bh % H), k0, k1, ws);
}

void fwd_stage2_rows(const FwdParams& P, int64_t t, const Scratch& ws) {
  const int64_t H = P.H, N = P.N, n = P.n, d = P.d, np = P.plan.np, nrc = P.plan.nrc;
  const int64_t bh = t / nrc, r0 = (t % nrc) * P.plan.row_task, r1 = std::min(N, r0 + P.plan.row_task);
  if (P.plan.layout == Layout::kTokenMajor) {
    float* AT = ws.agents;
    pack_agents(P.a + bh * n * d, n, d, np, P.scale, AT);
    stage2_tm(P, AT, P.q + bh * N * d, P.agent_v + bh * n * d, P.b2.slice(bh / H, bh % H), r0, r1, P.out + bh * N * d,
              P.lse2 + bh * N, ws);
    return;
  }
  const AmGroup grp = am_group(P, bh / H, bh % H, 1, ws.stats, ws);
  stage2_am(P, grp, P.bias_copy.slice(bh / H, bh % H), r0, r1, ws);
}

// ============================================================================================ backward
// One (batch, head), token-major tiles. Stage 2 per query tile: S = Q (sA)^T, dP = dO V_A^T (R x np),
// P and dS along rows; dQ = dS (sA), dA' += dS^T Q, dV_A += P^T dO. Stage 1 per key tile:
// ST = K (sA)^T, dPT = V dV_A^T (C x np), P and dS down columns; dV = P dV_A, dK = dS (sA),
// dA' += dS^T K. dA = s dA'. The stage-1 bias gradient accumulates transposed and padded (M x np).
ScratchSizes bwd_scratch(const BwdParams& P) {
  const int64_t n = P.n, np = P.plan.np, d = P.d, tile = std::max(kRowTile, kKeyTile);
  ScratchSizes s;
  if (P.plan.layout == Layout::kAgentMajor) {
    s.s1 = n * tile;
    s.s2 = n * tile;
    s.packed = 2 * d * tile;
    s.agents = 3 * n * d;
    s.stats = (tile + W) + (n + W);
    return s;
  }
  s.s1 = tile * np;
  s.s2 = tile * np;
  s.agents = 3 * d * np + 3 * n * d;
  s.stats = 2 * (np + W);
  return s;
}

void bwd_bias_copy(const BwdParams& P, int64_t t) {
  copy_bias_task(P.plan.layout, P.b1, P.b2, P.n, P.plan.np, P.N, P.M, P.copy_chunks, P.copy_dst, t);
}

inline float dot(const float* x, const float* y, int64_t len) {
  float acc = 0;
  for (int64_t i = 0; i < len; ++i) acc += x[i] * y[i];
  return acc;
}

void bwd_slice_am(const BwdParams& P, int64_t bh, float* G1p, float* G2Tp, const Scratch& ws);

void bwd_slice(const BwdParams& P, int64_t bh, float* G1p, float* G2p, const Scratch& ws) {
  if (P.plan.layout == Layout::kAgentMajor) return bwd_slice_am(P, bh, G1p, G2p, ws);
  const int64_t H = P.H, N = P.N, M = P.M, n = P.n, d = P.d, np = P.plan.np, nv = (np + W - 1) / W;
  const float scale = P.scale;
  const int64_t b = bh / H, h = bh % H;
  const float *Qp = P.q + bh * N * d, *Kp = P.k + bh * M * d, *Vp = P.v + bh * M * d, *Ap = P.a + bh * n * d;
  const float *dOp = P.dout + bh * N * d, *Op = P.out + bh * N * d, *VAp = P.agent_v + bh * n * d;
  const float *L1 = P.lse1 + bh * n, *L2 = P.lse2 + bh * N;
  float *dQp = P.dq + bh * N * d, *dKp = P.dk + bh * M * d, *dVp = P.dv + bh * M * d, *dAp = P.da + bh * n * d;
  float* Sc = ws.s1;
  float* dP = ws.s2;
  float *AT = ws.agents, *VAT = AT + d * np, *dVAT = VAT + d * np, *As = dVAT + d * np, *dva = As + n * d,
        *dacc = dva + n * d;
  float *L1p = ws.stats, *D1 = L1p + np + W;
  pack_agents(Ap, n, d, np, scale, AT);
  pack_agents(VAp, n, d, np, 1.0f, VAT);
  for (int64_t x = 0; x < n * d; ++x) As[x] = scale * Ap[x];
  std::fill(dva, dva + n * d, 0.0f);
  std::fill(dacc, dacc + n * d, 0.0f);
  const auto tmask = S::first(n - (nv - 1) * W);
  const int64_t last = np - (nv - 1) * W;  // the last vector of an S / dP row (8 at 16 lanes when np % 16 == 8)
  const bool part = last < W;
  const auto mk = S::first(last);

  // ---- stage 2
  const float* B2p = P.b2.slice(b, h);
  for (int64_t i0 = 0; i0 < N; i0 += kRowTile) {
    const int64_t R = std::min(kRowTile, N - i0);
    gemm_bcast(R, np, d, Qp + i0 * d, d, 1, AT, np, Sc, np, kStore, nullptr);
    gemm_bcast(R, np, d, dOp + i0 * d, d, 1, VAT, np, dP, np, kStore, nullptr);
    for (int64_t i = 0; i < R; ++i) {
      const int64_t r = i0 + i;
      Vf dd = S::zero();
      int64_t c = 0;
      for (; c + W <= d; c += W) dd = S::fmadd(S::load(dOp + r * d + c), S::load(Op + r * d + c), dd);
      float dsum = S::hsum(dd);
      for (; c < d; ++c) dsum += dOp[r * d + c] * Op[r * d + c];
      const Vf di = S::set1(dsum);
      const Vf lse = S::set1(L2[r]);
      float* srow = Sc + i * np;
      float* drow = dP + i * np;
      const float* brow = B2p ? B2p + r * n : nullptr;
      float* grow = G2p ? G2p + r * n : nullptr;
      for (int64_t v = 0; v < nv; ++v) {
        const bool lastv = v == nv - 1, pv = lastv && part;
        Vf x = load_part<S>(srow + W * v, pv, mk);
        if (brow) x = S::add(x, lastv ? S::load_first(brow + W * v, tmask) : S::load(brow + W * v));
        Vf p = S::exp(S::sub(x, lse));
        if (lastv) p = S::select(tmask, p, S::zero());
        const Vf ds = S::mul(p, S::sub(load_part<S>(drow + W * v, pv, mk), di));
        store_part<S>(srow + W * v, p, pv, mk);
        store_part<S>(drow + W * v, ds, pv, mk);
        if (grow) {
          if (lastv)
            S::store_first(grow + W * v, tmask, S::add(S::load_first(grow + W * v, tmask), ds));
          else
            S::store(grow + W * v, S::add(S::load(grow + W * v), ds));
        }
      }
    }
    gemm_bcast(R, d, n, dP, np, 1, As, d, dQp + i0 * d, d, kStore, nullptr);
    gemm_bcast(n, d, R, dP, 1, np, Qp + i0 * d, d, dacc, d, kAccumulate, nullptr);
    gemm_bcast(n, d, R, Sc, 1, np, dOp + i0 * d, d, dva, d, kAccumulate, nullptr);
  }

  // ---- stage 1
  for (int64_t j = 0; j < np + W; ++j) {
    L1p[j] = j < n ? L1[j] : 1e30f;  // padding lanes: probability 0 (clamped)
    D1[j] = j < n ? dot(dva + j * d, VAp + j * d, d) : 0.0f;
  }
  pack_agents(dva, n, d, np, 1.0f, dVAT);
  const float* B1Tp = P.bias_copy.slice(b, h);
  for (int64_t c0 = 0; c0 < M; c0 += kKeyTile) {
    const int64_t C = std::min(kKeyTile, M - c0);
    gemm_bcast(C, np, d, Kp + c0 * d, d, 1, AT, np, Sc, np, kStore, nullptr);
    gemm_bcast(C, np, d, Vp + c0 * d, d, 1, dVAT, np, dP, np, kStore, nullptr);
    for (int64_t i = 0; i < C; ++i) {
      float* srow = Sc + i * np;
      float* drow = dP + i * np;
      const float* brow = B1Tp ? B1Tp + (c0 + i) * np : nullptr;
      float* grow = G1p ? G1p + (c0 + i) * np : nullptr;
      for (int64_t j0 = 0; j0 < np; j0 += W) {
        const bool pv = j0 + W > np;
        Vf x = load_part<S>(srow + j0, pv, mk);
        if (brow) x = S::add(x, load_part<S>(brow + j0, pv, mk));
        const Vf p = S::exp(S::sub(x, S::load(L1p + j0)));
        const Vf ds = S::mul(p, S::sub(load_part<S>(drow + j0, pv, mk), S::load(D1 + j0)));
        store_part<S>(srow + j0, p, pv, mk);
        store_part<S>(drow + j0, ds, pv, mk);
        if (grow) store_part<S>(grow + j0, S::add(load_part<S>(grow + j0, pv, mk), ds), pv, mk);
      }
    }
    gemm_bcast(C, d, n, Sc, np, 1, dva, d, dVp + c0 * d, d, kStore, nullptr);
    gemm_bcast(C, d, n, dP, np, 1, As, d, dKp + c0 * d, d, kStore, nullptr);
    gemm_bcast(n, d, C, dP, 1, np, Kp + c0 * d, d, dacc, d, kAccumulate, nullptr);
  }
  for (int64_t x = 0; x < n * d; ++x) dAp[x] = scale * dacc[x];
}

// One (batch, head), agent-major tiles (tokens in the lanes, no padding of n; each token tile packed
// transposed). Stage 2 per query tile: ST = sA Q^T, dPT = V_A dO^T (n x R), P and dS down the columns
// (W queries per vector op); dQ = dS^T (sA), dA' += dS Q, dV_A += P dO. Stage 1 per key tile:
// S = sA K^T, dP = dV_A V^T (n x C), P and dS along the rows; dV = P^T dV_A, dK = dS^T (sA), dA' += dS K.
// G1p: the stage-1 bias gradient target as the bias (n x M); G2Tp: the stage-2 one transposed (n x N).
void bwd_slice_am(const BwdParams& P, int64_t bh, float* G1p, float* G2Tp, const Scratch& ws) {
  const int64_t H = P.H, N = P.N, M = P.M, n = P.n, d = P.d;
  const float scale = P.scale;
  const int64_t b = bh / H, h = bh % H;
  const float *Qp = P.q + bh * N * d, *Kp = P.k + bh * M * d, *Vp = P.v + bh * M * d, *Ap = P.a + bh * n * d;
  const float *dOp = P.dout + bh * N * d, *Op = P.out + bh * N * d, *VAp = P.agent_v + bh * n * d;
  const float *L1 = P.lse1 + bh * n, *L2 = P.lse2 + bh * N;
  float *dQp = P.dq + bh * N * d, *dKp = P.dk + bh * M * d, *dVp = P.dv + bh * M * d, *dAp = P.da + bh * n * d;
  float *Sc = ws.s1, *dP = ws.s2, *XT = ws.packed, *YT = ws.packed + d * std::max(kRowTile, kKeyTile);
  float *As = ws.agents, *dva = As + n * d, *dacc = dva + n * d;
  float *Di = ws.stats, *D1 = Di + kRowTile + W;
  scale_agents(Ap, n, d, scale, As);
  std::fill(dva, dva + n * d, 0.0f);
  std::fill(dacc, dacc + n * d, 0.0f);

  // ---- stage 2
  const float* B2Tp = P.bias_copy.slice(b, h);
  for (int64_t i0 = 0; i0 < N; i0 += kRowTile) {
    const int64_t R = std::min(kRowTile, N - i0), Rp = pad_to(R, W);
    pack_transposed(Qp + i0 * d, R, d, XT, Rp);
    pack_transposed(dOp + i0 * d, R, d, YT, Rp);
    gemm_wide(n, Rp, d, As, d, 1, XT, Rp, Sc, Rp, kStore, nullptr);
    gemm_wide(n, Rp, d, VAp, d, 1, YT, Rp, dP, Rp, kStore, nullptr);
    for (int64_t i = 0; i < Rp; ++i) Di[i] = i < R ? dot(dOp + (i0 + i) * d, Op + (i0 + i) * d, d) : 0.0f;
    for (int64_t i = 0; i < R; i += W) {  // W queries at a time down the n rows (tokens past R masked)
      const bool pv = i + W > R;
      const auto mk = S::first(R - i);
      const Vf lse = load_part<S>(L2 + i0 + i, pv, mk), di = S::load(Di + i);
      for (int64_t j = 0; j < n; ++j) {
        float *srow = Sc + j * Rp + i, *drow = dP + j * Rp + i;
        Vf x = S::load(srow);
        if (B2Tp) x = S::add(x, load_part<S>(B2Tp + j * N + i0 + i, pv, mk));
        Vf p = S::exp(S::sub(x, lse));
        if (pv) p = S::select(mk, p, S::zero());
        const Vf ds = S::mul(p, S::sub(S::load(drow), di));
        S::store(srow, p);
        S::store(drow, ds);
        if (G2Tp) {
          float* g = G2Tp + j * N + i0 + i;
          store_part<S>(g, S::add(load_part<S>(g, pv, mk), ds), pv, mk);
        }
      }
    }
    gemm_bcast(R, d, n, dP, 1, Rp, As, d, dQp + i0 * d, d, kStore, nullptr);
    gemm_wide(n, d, R, dP, Rp, 1, Qp + i0 * d, d, dacc, d, kAccumulate, nullptr);
    gemm_wide(n, d, R, Sc, Rp, 1, dOp + i0 * d, d, dva, d, kAccumulate, nullptr);
  }

  // ---- stage 1
  for (int64_t j = 0; j < n; ++j) D1[j] = dot(dva + j * d, VAp + j * d, d);
  const float* B1p = P.b1.slice(b, h);
  for (int64_t c0 = 0; c0 < M; c0 += kKeyTile) {
    const int64_t C = std::min(kKeyTile, M - c0), Cp = pad_to(C, W);
    pack_transposed(Kp + c0 * d, C, d, XT, Cp);
    pack_transposed(Vp + c0 * d, C, d, YT, Cp);
    gemm_wide(n, Cp, d, As, d, 1, XT, Cp, Sc, Cp, kStore, nullptr);
    gemm_wide(n, Cp, d, dva, d, 1, YT, Cp, dP, Cp, kStore, nullptr);
    for (int64_t j = 0; j < n; ++j) {
      float *srow = Sc + j * Cp, *drow = dP + j * Cp;
      const float* brow = B1p ? B1p + j * M + c0 : nullptr;
      float* grow = G1p ? G1p + j * M + c0 : nullptr;
      const Vf lse = S::set1(L1[j]), dj = S::set1(D1[j]);
      for (int64_t i = 0; i < C; i += W) {
        const bool pv = i + W > C;
        const auto mk = S::first(C - i);
        Vf x = S::load(srow + i);
        if (brow) x = S::add(x, load_part<S>(brow + i, pv, mk));
        Vf p = S::exp(S::sub(x, lse));
        if (pv) p = S::select(mk, p, S::zero());
        const Vf ds = S::mul(p, S::sub(S::load(drow + i), dj));
        S::store(srow + i, p);
        S::store(drow + i, ds);
        if (grow) store_part<S>(grow + i, S::add(load_part<S>(grow + i, pv, mk), ds), pv, mk);
      }
    }
    gemm_bcast(C, d, n, Sc, 1, Cp, dva, d, dVp + c0 * d, d, kStore, nullptr);
    gemm_bcast(C, d, n, dP, 1, Cp, As, d, dKp + c0 * d, d, kStore, nullptr);
    gemm_wide(n, d, C, dP, Cp, 1, Kp + c0 * d, d, dacc, d, kAccumulate, nullptr);
  }
  for (int64_t x = 0; x < n * d; ++x) dAp[x] = scale * dacc[x];
}

const Kernels kTable = {kIsa,      static_cast<int>(W), fwd_scratch,     bwd_scratch,   fwd_bias_copy,
                        fwd_group, fwd_stage1_chunk,    fwd_stage2_rows, bwd_bias_copy, bwd_slice};

}  // namespace
}  // namespace AGENTATTN_ISA_NS
}  // namespace agentattn::cpu
