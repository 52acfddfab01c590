// Fused Agent Attention on CPU: forward and backward, float32 and float64.
//
// Per (batch, head), with scale s, agents A (n x d), keys/values K, V (N x d), queries Q (N x d):
//   stage 1: S1 = s A K^T + B1 (n x N) -> softmax over N -> P1;  V_A = P1 V (n x d)
//   stage 2: S2 = s Q A^T + B2 (N x n) -> softmax over n -> P2;  O = P2 V_A (N x d)
//
// Two implementations of the same tiling, chosen per call:
//  - float32 with AVX2+FMA and d % 8 == 0 (namespace fast): every product runs in the unpacked register-
//    tile micro-kernels of ukernel.h. The forward has two score layouts:
//      token-major (n % 8 == 0): agents in the vector lanes, padded to n_pad = 8 ceil(n / 8); stage 1 in key
//        tiles ST = K_tile (sA)^T (C x n_pad) with an online softmax down the columns, stage 2 in query
//        tiles S2 = Q_tile (sA)^T (R x n_pad) with the softmax along the rows; tensors read where they lie,
//        only (sA)^T packed; the stage-1 bias transposed once per call;
//      agent-major (n % 8 != 0, no padding waste): tokens in the lanes, each K/Q tile packed transposed;
//        S = sA K_tile^T (n x C) with the online softmax along the rows, ST = sA Q_tile^T (n x R) with the
//        softmax down the columns; batches that share the biases run in groups, tile outer, so that a
//        bias tile is read once per group; the stage-2 bias transposed once per call.
//    The backward uses the token-major layout. One OpenMP region per call when there are enough slices.
//  - float64, float32 without AVX2 or with d % 8 != 0 (and AGENTATTN_CPU_BLAS_PATH=1): BLAS (MKL's
//    sgemm_/dgemm_ exported by libtorch_cpu, one thread per task) on tiles: stage 1 in key blocks of
//    kKeys with the same online softmax, stage 2 in transposed tiles ST = s A Q_blk^T (n x kRows), the
//    softmax down the columns (8 queries per vector whatever n is), the stage-2 bias transposed per call.
// Both split the keys of stage 1 into chunks on different threads, with a merge of the partial
// (max, sum, accumulator) triples, when there are fewer than 4 slices per thread.
//
// The forward keeps for backward only V_A and the log-sum-exp of every score row (n + N values per
// head); the backward recomputes the probabilities tile by tile from them, in the same layouts.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/blas.h"
#include "cpu/ukernel.h"
#include "cpu/vec.h"

namespace agentattn {
namespace {

constexpr int64_t kRows = 128;  // stage-2 queries per tile
constexpr int64_t kKeys = 256;  // stage-1 keys per tile
constexpr int64_t kRowTask = 512;  // stage-2 queries per parallel task
#ifdef AGENTATTN_AVX2
constexpr bool kHaveFast = true;
#else
constexpr bool kHaveFast = false;
#endif

using vec::neg_inf;

// Run f(task, thread) for task in [0, ntasks) on the intra-op threads, dynamically scheduled (the
// machine is shared: a static split waits for the slowest thread). `ordered`: task t always runs on
// thread t % threads, in increasing t, so per-thread sums (broadcast bias gradients) are bitwise
// reproducible from run to run at a fixed thread count, as PyTorch's own CPU reductions are.
template <typename F>
void parallel_tasks(int64_t ntasks, const F& f, bool ordered = false) {
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), ntasks);
  if (nt <= 1 || omp_in_parallel()) {
    for (int64_t t = 0; t < ntasks; ++t) f(t, 0);
    return;
  }
  if (ordered) {
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(nt))
    for (int64_t t = 0; t < ntasks; ++t) f(t, omp_get_thread_num());
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(static_cast<int>(nt))
  for (int64_t t = 0; t < ntasks; ++t) f(t, omp_get_thread_num());
}

// The float32 AVX2 micro-kernel path takes d % 8 == 0; AGENTATTN_CPU_BLAS_PATH=1 forces the BLAS-tile path
// (for comparisons).
inline bool use_fast(int64_t d) {
  static const bool blas_forced = std::getenv("AGENTATTN_CPU_BLAS_PATH") != nullptr;
  return d % 8 == 0 && !blas_forced;
}

// Per-thread scratch that only grows (no allocation per call once warm).
template <typename T>
T* scratch(int slot, size_t count) {
  static thread_local std::vector<T> buf[6];
  if (buf[slot].size() < count) buf[slot].resize(count);
  return buf[slot].data();
}

// Where the (b, h) slice of a (Bb, Hb, rows, cols) tensor starts; Bb in {1, B}, Hb in {1, H}.
inline int64_t bias_offset(const at::Tensor& bias, int64_t b, int64_t h) {
  const int64_t bb = bias.size(0) == 1 ? 0 : b;
  const int64_t hh = bias.size(1) == 1 ? 0 : h;
  return (bb * bias.size(1) + hh) * bias.size(2) * bias.size(3);
}

// Keys per stage-1 task: all N unless there are fewer than ~4 tasks per thread.
inline int64_t stage1_chunk(int64_t BH, int64_t N) {
  const int64_t nt = at::get_num_threads();
  int64_t chunks = std::max<int64_t>(1, (4 * nt + BH - 1) / BH);
  chunks = std::min(chunks, (N + kKeys - 1) / kKeys);
  const int64_t len = (N + chunks - 1) / chunks;
  return ((len + kKeys - 1) / kKeys) * kKeys;
}

// Stage 1 over keys [k0, k1) of one slice: unnormalised online softmax. On return m[j] is the row max,
// l[j] the sum of exp(score - m[j]) and acc (n x d) = sum exp(score - m[j]) V.
template <typename T>
void stage1_partial(const T* Ap, const T* Kp, const T* Vp, const T* B1p, int64_t N, int64_t n, int64_t d,
                    T scale, int64_t k0, int64_t k1, T* m, T* l, T* acc) {
  T* S = scratch<T>(0, static_cast<size_t>(n * kKeys));
  for (int64_t j = 0; j < n; ++j) m[j] = neg_inf<T>(), l[j] = 0;
  std::fill(acc, acc + n * d, T(0));
  for (int64_t c0 = k0; c0 < k1; c0 += kKeys) {
    const int64_t C = std::min(kKeys, k1 - c0);
    blas::gemm_rm<T>(false, true, n, C, d, scale, Ap, d, Kp + c0 * d, d, T(0), S, C);
    for (int64_t j = 0; j < n; ++j) {
      T* row = S + j * C;
      const T mb = vec::add_bias_max(row, B1p ? B1p + j * N + c0 : nullptr, C);
      const T mnew = std::max(m[j], mb);
      const T sum = vec::exp_sub_sum(row, C, mnew);
      if (mnew != m[j]) {
        const T alpha = m[j] == neg_inf<T>() ? T(0) : std::exp(m[j] - mnew);
        l[j] *= alpha;
        vec::scale_inplace(acc + j * d, d, alpha);
        m[j] = mnew;
      }
      l[j] += sum;
    }
    blas::gemm_rm<T>(false, false, n, d, C, T(1), S, C, Vp + c0 * d, d, T(1), acc, d);
  }
}

// Stage 2 over queries [r0, r1) of one slice: O rows and their log-sum-exp.
template <typename T>
void stage2_rows(const T* Qp, const T* Ap, const T* VAp, const T* B2Tp, int64_t N, int64_t n, int64_t d,
                 T scale, int64_t r0, int64_t r1, T* Op, T* L2p) {
  T* ST = scratch<T>(1, static_cast<size_t>(n * kRows));
  T* mv = scratch<T>(2, static_cast<size_t>(2 * kRows));
  T* lv = mv + kRows;
  for (int64_t i0 = r0; i0 < r1; i0 += kRows) {
    const int64_t R = std::min(kRows, r1 - i0);
    blas::gemm_rm<T>(false, true, n, R, d, scale, Ap, d, Qp + i0 * d, d, T(0), ST, R);
    vec::col_softmax(ST, n, R, R, B2Tp ? B2Tp + i0 : nullptr, N, mv, lv);
    for (int64_t i = 0; i < R; ++i) {
      L2p[i0 + i] = mv[i] + std::log(lv[i]);
      lv[i] = T(1) / lv[i];
    }
    if (n <= d) {
      for (int64_t j = 0; j < n; ++j) {
        T* row = ST + j * R;
        for (int64_t i = 0; i < R; ++i) row[i] *= lv[i];
      }
    }
    T* Ob = Op + i0 * d;
    blas::gemm_rm<T>(true, false, R, d, n, T(1), ST, R, VAp, d, T(0), Ob, d);
    if (n > d)
      for (int64_t i = 0; i < R; ++i) vec::scale_inplace(Ob + i * d, d, lv[i]);
  }
}

#ifdef AGENTATTN_AVX2
// ---------------------------------------------------------------------------------------------------------
// float32 fast path (AVX2, d a multiple of 8): the products run in the micro-kernels of ukernel.h on the
// tensors as they lie in memory; the only packed operand is (s A)^T, d x n_pad (n rounded up to 8, zero
// padding), shared by both stages:
//   stage 1, per key tile:   ST = K_tile (s A)^T            (C x n_pad)  -> online softmax down columns
//                            acc += ST^T V_tile             (n x d)
//   stage 2, per query tile: S2 = Q_tile (s A)^T            (R x n_pad)  -> softmax along rows (n lanes)
//                            O = diag(1/sum) S2 V_A         (R x d)
// The stage-1 bias is transposed once per call to (Bb, Hb, N, n_pad); the stage-2 bias is read in place.
namespace fast {

constexpr int64_t kKeysF = 128;  // stage-1 keys per tile (C x n_pad tile in L1/L2)
constexpr int64_t kRowsF = 96;   // stage-2 queries per tile

inline int64_t pad8(int64_t x) { return (x + 7) / 8 * 8; }

// Prefetch [p, p + count floats) into L2 (the next tile's rows of K, V or Q while this tile computes).
inline void prefetch(const float* p, int64_t count) {
  const char* c = reinterpret_cast<const char*>(p);
#pragma GCC unroll 4
  for (int64_t off = 0; off < count * 4; off += 64) _mm_prefetch(c + off, _MM_HINT_T1);
}
// The same into L1: the bias tiles (read by the softmax passes right after the product, where an L2 hit
// still stalled them in a profile).
inline void prefetch_l1(const float* p, int64_t count) {
  const char* c = reinterpret_cast<const char*>(p);
#pragma GCC unroll 4
  for (int64_t off = 0; off < count * 4; off += 64) _mm_prefetch(c + off, _MM_HINT_T0);
}

// n rows of a row-major matrix (row stride ld), columns [off, off + count), into L1; nothing for a null
// matrix or count 0 (the next bias tile of the agent-major stages: n rows N apart, a stream pattern the
// hardware prefetcher does not follow).
inline void prefetch_rows_l1(const float* rows, int64_t n, int64_t ld, int64_t off, int64_t count) {
  if (!rows || count <= 0) return;
  for (int64_t j = 0; j < n; ++j) prefetch_l1(rows + j * ld + off, count);
}

// Extent of the tile of `tile` items starting at x0 in [.., end): 0 past the end.
inline int64_t tile_extent(int64_t x0, int64_t tile, int64_t end) { return x0 < end ? std::min(tile, end - x0) : 0; }

// AT (d x np) = s A^T, columns n..np zero.
inline void pack_agents(const float* Ap, int64_t n, int64_t d, int64_t np, float s, float* AT) {
  for (int64_t c = 0; c < d; ++c) {
    float* row = AT + c * np;
    for (int64_t j = 0; j < n; ++j) row[j] = s * Ap[j * d + c];
    for (int64_t j = n; j < np; ++j) row[j] = 0.0f;
  }
}

// dst (N x np) = src^T for src (n x N); columns n..np zero.
inline void transpose_bias(const float* src, int64_t n, int64_t N, int64_t np, float* dst, int64_t i0,
                           int64_t i1) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = i0; i < i1; ++i) dst[i * np + j] = src[j * N + i];
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = n; j < np; ++j) dst[i * np + j] = 0.0f;
}

// Online softmax down the columns of one stage-1 tile ST (C rows x 8*NV columns, row stride ld), row by
// row so that ST and the bias stream through memory: adds the bias (row stride ld) in place, updates the
// running max m, writes exp(ST - m) and the rescale factors alpha = exp(m_old - m_new), l = l*alpha + sum.
struct Prefetch {
  const float *a = nullptr, *b = nullptr;
  int64_t len = 0, rows = 0;  // rows of len floats at a and at b
  void row(int64_t i) const {
    if (i >= rows) return;
    prefetch(a + i * len, len);
    prefetch(b + i * len, len);
  }
};

template <int NV>
inline void softmax_cols(float* ST, int64_t C, int64_t ld, const float* bias, float* m, float* l, float* alpha,
                         const Prefetch& pf = Prefetch{}) {
  __m256 mx[NV], sm[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) mx[v] = _mm256_set1_ps(neg_inf<float>());
  for (int64_t i = 0; i < C; ++i) {
    float* p = ST + i * ld;
    pf.row(i);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      __m256 x = _mm256_loadu_ps(p + 8 * v);
      if (bias) {
        x = _mm256_add_ps(x, _mm256_loadu_ps(bias + i * ld + 8 * v));
        _mm256_storeu_ps(p + 8 * v, x);
      }
      mx[v] = _mm256_max_ps(mx[v], x);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const __m256 mold = _mm256_loadu_ps(m + 8 * v);
    mx[v] = _mm256_max_ps(mold, mx[v]);
    // exp(-inf - finite) clamps to about 1e-38: l and acc start at zero, so that is harmless
    _mm256_storeu_ps(alpha + 8 * v, vec::exp8(_mm256_sub_ps(mold, mx[v])));
    _mm256_storeu_ps(m + 8 * v, mx[v]);
    sm[v] = _mm256_setzero_ps();
  }
  for (int64_t i = 0; i < C; ++i) {
    float* p = ST + i * ld;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m256 e = vec::exp8(_mm256_sub_ps(_mm256_loadu_ps(p + 8 * v), mx[v]));
      _mm256_storeu_ps(p + 8 * v, e);
      sm[v] = _mm256_add_ps(sm[v], e);
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v)
    _mm256_storeu_ps(l + 8 * v, _mm256_fmadd_ps(_mm256_loadu_ps(l + 8 * v), _mm256_loadu_ps(alpha + 8 * v), sm[v]));
}

// A rearranged copy of a bias (Bb, Hb, ...) with `per_slice` floats per (b, h) slice, in a buffer of the
// calling thread that is kept between calls (no page faults on a fresh allocation per call), written in
// tasks() pieces of 64 tokens by the owner's run(t), so that the copy can share a parallel region with the
// main loop. Null bias: no tasks, null slices.
struct BiasCopy {
  const float* src = nullptr;
  float* dst = nullptr;
  int64_t Bb = 0, Hb = 0, per_slice = 0, chunks = 0;

  BiasCopy(const at::Tensor* bias, int64_t N, int64_t per_slice_, std::vector<float>& buf) : per_slice(per_slice_) {
    if (!bias) return;
    Bb = bias->size(0), Hb = bias->size(1), chunks = (N + 63) / 64;
    const size_t need = static_cast<size_t>(Bb * Hb * per_slice);
    if (buf.size() < need) buf.resize(need);
    src = bias->data_ptr<float>();
    dst = buf.data();
  }
  int64_t tasks() const { return src ? Bb * Hb * chunks : 0; }
  const float* slice(int64_t b, int64_t h) const {
    if (!src) return nullptr;
    return dst + ((Bb == 1 ? 0 : b) * Hb + (Hb == 1 ? 0 : h)) * per_slice;
  }
};

// The stage-1 bias (Bb, Hb, n, N) as (Bb, Hb, N, np), padding zero (token-major layout).
struct BiasT : BiasCopy {
  int64_t n, N, np;
  BiasT(const at::Tensor* b1, int64_t n_, int64_t N_, int64_t np_)
      : BiasCopy(b1, N_, N_ * np_, buffer()), n(n_), N(N_), np(np_) {}
  static std::vector<float>& buffer() {
    static thread_local std::vector<float> buf;
    return buf;
  }
  void run(int64_t t) const {
    const int64_t sl = t / chunks, i0 = (t % chunks) * 64;
    transpose_bias(src + sl * n * N, n, N, np, dst + sl * N * np, i0, std::min(N, i0 + 64));
  }
};

// One OpenMP region: pre(t) for t < npre (static split), a barrier, then main(t, thread) for t < nmain
// (dynamic). One fork/join instead of two: on a loaded machine every join waits for a descheduled thread.
// `ordered` as in parallel_tasks (main(t) on thread t % threads, in increasing t).
template <typename F1, typename F2>
void parallel_two_phase(int64_t npre, const F1& pre, int64_t nmain, const F2& main, bool ordered = false) {
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), std::max(npre, nmain));
  if (nt <= 1 || omp_in_parallel()) {
    for (int64_t t = 0; t < npre; ++t) pre(t);
    for (int64_t t = 0; t < nmain; ++t) main(t, 0);
    return;
  }
#pragma omp parallel num_threads(static_cast<int>(nt))
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < npre; ++t) pre(t);
    if (ordered) {
#pragma omp for schedule(static, 1)
      for (int64_t t = 0; t < nmain; ++t) main(t, omp_get_thread_num());
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t t = 0; t < nmain; ++t) main(t, omp_get_thread_num());
    }
  }
}

// Stage 1 over keys [k0, k1): m, l (np each) and acc (n x d), unnormalised (as stage1_partial).
inline void stage1(const float* AT, const float* Kp, const float* Vp, const float* B1Tp, int64_t n, int64_t np,
                   int64_t d, int64_t k0, int64_t k1, float* m, float* l, float* acc) {
  float* ST = scratch<float>(0, static_cast<size_t>(kKeysF * np));
  float* mb = scratch<float>(3, static_cast<size_t>(2 * np));
  float* alpha = mb + np;
  for (int64_t j = 0; j < np; ++j) m[j] = neg_inf<float>(), l[j] = 0.0f;
  std::fill(acc, acc + n * d, 0.0f);
  for (int64_t c0 = k0; c0 < k1; c0 += kKeysF) {
    const int64_t C = std::min(kKeysF, k1 - c0);
    ukernel::gemm_bcast(C, np, d, Kp + c0 * d, d, 1, AT, np, ST, np, false, nullptr);
    // the next tile's K and V rows, one row each per row of this tile's softmax pass
    const int64_t Cn = tile_extent(c0 + kKeysF, kKeysF, k1);
    const Prefetch pf{Kp + (c0 + kKeysF) * d, Vp + (c0 + kKeysF) * d, d, Cn};
    const float* bias = B1Tp ? B1Tp + c0 * np : nullptr;
    switch (np / 8) {  // register-resident running max and sum for up to 8 vectors (n <= 64)
      case 1: softmax_cols<1>(ST, C, np, bias, m, l, alpha, pf); break;
      case 2: softmax_cols<2>(ST, C, np, bias, m, l, alpha, pf); break;
      case 3: softmax_cols<3>(ST, C, np, bias, m, l, alpha, pf); break;
      case 4: softmax_cols<4>(ST, C, np, bias, m, l, alpha, pf); break;
      case 5: softmax_cols<5>(ST, C, np, bias, m, l, alpha, pf); break;
      case 6: softmax_cols<6>(ST, C, np, bias, m, l, alpha, pf); break;
      case 7: softmax_cols<7>(ST, C, np, bias, m, l, alpha, pf); break;
      default:
        for (int64_t j0 = 0; j0 < np; j0 += 64) {
          const int64_t w = std::min<int64_t>(64, np - j0);
          const float* bj = bias ? bias + j0 : nullptr;
          switch (w / 8) {
            case 1: softmax_cols<1>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
            case 2: softmax_cols<2>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
            case 3: softmax_cols<3>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
            case 4: softmax_cols<4>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
            case 5: softmax_cols<5>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
            case 6: softmax_cols<6>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
            case 7: softmax_cols<7>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
            default: softmax_cols<8>(ST + j0, C, np, bj, m + j0, l + j0, alpha + j0); break;
          }
        }
    }
    if (c0 > k0)
      for (int64_t j = 0; j < n; ++j)
        if (alpha[j] != 1.0f) vec::scale_inplace(acc + j * d, d, alpha[j]);
    ukernel::gemm_bcast(n, d, C, ST, 1, np, Vp + c0 * d, d, acc, d, true, nullptr);
  }
}

// Output tiles of O go out with non-temporal stores when O is 32-byte aligned (it is not read back here).
inline int out_mode(const float* Op) {
  return reinterpret_cast<uintptr_t>(Op) % 32 == 0 ? ukernel::kStream : ukernel::kStore;
}

// For R stage-2 rows with max m and sum l of their exponentials: lse = m + log l, and l becomes 1 / l (the
// row scale of the O product).
inline void finish_rows(const float* m, float* l, int64_t R, float* lse) {
  int64_t i = 0;
  for (; i + 8 <= R; i += 8) {
    const __m256 sv = _mm256_loadu_ps(l + i);
    _mm256_storeu_ps(lse + i, _mm256_add_ps(_mm256_loadu_ps(m + i), ukernel::log8(sv)));
    _mm256_storeu_ps(l + i, _mm256_div_ps(_mm256_set1_ps(1.0f), sv));
  }
  for (; i < R; ++i) {
    lse[i] = m[i] + std::log(l[i]);
    l[i] = 1.0f / l[i];
  }
}

// Stage-2 softmax along the rows of S (R x 8*NV, row stride ld; n valid columns, tmask the last vector's
// valid lanes): adds the bias rows (stride n), keeps the row in registers between max and exp, writes the
// unnormalised exp (0 in the padding lanes), the row max and the row sum; prefetches the next tile's Q rows.
template <int NV>
inline void softmax_rows(float* S, int64_t R, int64_t ld, const float* b, int64_t n, __m256i tmask, float* mrow,
                         float* srow, const float* qnext, int64_t Rn, int64_t d) {
  const __m256 ninf = _mm256_set1_ps(neg_inf<float>());
  const __m256 lastmask = _mm256_castsi256_ps(tmask);
  for (int64_t i = 0; i < R; ++i) {
    if (i < Rn) prefetch(qnext + i * d, d);
    float* row = S + i * ld;
    const float* brow = b ? b + i * n : nullptr;
    __m256 x[NV];
    __m256 mx = ninf;
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      x[v] = _mm256_loadu_ps(row + 8 * v);
      if (v < NV - 1) {
        if (brow) x[v] = _mm256_add_ps(x[v], _mm256_loadu_ps(brow + 8 * v));
      } else {
        if (brow) x[v] = _mm256_add_ps(x[v], _mm256_maskload_ps(brow + 8 * v, tmask));
        x[v] = _mm256_blendv_ps(ninf, x[v], lastmask);
      }
      mx = _mm256_max_ps(mx, x[v]);
    }
    const float ms = vec::hmax8(mx);
    const __m256 msv = _mm256_set1_ps(ms);
    __m256 sum = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      __m256 e = vec::exp8(_mm256_sub_ps(x[v], msv));
      if (v == NV - 1) e = _mm256_and_ps(e, lastmask);
      _mm256_storeu_ps(row + 8 * v, e);
      sum = _mm256_add_ps(sum, e);
    }
    mrow[i] = ms;
    srow[i] = vec::hsum8(sum);
  }
}

// Stage 2 over queries [r0, r1): O rows and lse2.
inline void stage2(const float* AT, const float* Qp, const float* VAp, const float* B2p, int64_t n, int64_t np,
                   int64_t d, int64_t r0, int64_t r1, float* Op, float* L2p) {
  float* S = scratch<float>(1, static_cast<size_t>(kRowsF * np));
  float* mrow = scratch<float>(2, static_cast<size_t>(2 * kRowsF + 16));
  float* srow = mrow + kRowsF + 8;
  const int64_t nv = np / 8, tail = n - (nv - 1) * 8;
  const __m256i tmask = ukernel::tail_mask(tail);
  const __m256 ninf = _mm256_set1_ps(neg_inf<float>());
  const int omode = out_mode(Op);
  for (int64_t i0 = r0; i0 < r1; i0 += kRowsF) {
    const int64_t R = std::min(kRowsF, r1 - i0);
    ukernel::gemm_bcast(R, np, d, Qp + i0 * d, d, 1, AT, np, S, np, false, nullptr);
    const int64_t Rn = tile_extent(i0 + kRowsF, kRowsF, r1);
    const float* brows = B2p ? B2p + i0 * n : nullptr;
    const float* qnext = Qp + (i0 + kRowsF) * d;
    switch (nv) {
      case 1: softmax_rows<1>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      case 2: softmax_rows<2>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      case 3: softmax_rows<3>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      case 4: softmax_rows<4>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      case 5: softmax_rows<5>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      case 6: softmax_rows<6>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      case 7: softmax_rows<7>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      case 8: softmax_rows<8>(S, R, np, brows, n, tmask, mrow, srow, qnext, Rn, d); break;
      default:
      for (int64_t i = 0; i < R; ++i) {
        if (i < Rn) prefetch(Qp + (i0 + kRowsF + i) * d, d);
        float* row = S + i * np;
        const float* b = B2p ? B2p + (i0 + i) * n : nullptr;
        __m256 mx = ninf;
        for (int64_t v = 0; v < nv; ++v) {
          __m256 x = _mm256_loadu_ps(row + 8 * v);
          if (v < nv - 1) {
            if (b) x = _mm256_add_ps(x, _mm256_loadu_ps(b + 8 * v));
          } else {
            if (b) x = _mm256_add_ps(x, _mm256_maskload_ps(b + 8 * v, tmask));
            x = _mm256_blendv_ps(ninf, x, _mm256_castsi256_ps(tmask));
          }
          _mm256_storeu_ps(row + 8 * v, x);
          mx = _mm256_max_ps(mx, x);
        }
        const float ms = vec::hmax8(mx);
        const __m256 msv = _mm256_set1_ps(ms);
        __m256 sum = _mm256_setzero_ps();
        for (int64_t v = 0; v < nv; ++v) {
          __m256 e = vec::exp8(_mm256_sub_ps(_mm256_loadu_ps(row + 8 * v), msv));
          if (v == nv - 1) e = _mm256_and_ps(e, _mm256_castsi256_ps(tmask));
          _mm256_storeu_ps(row + 8 * v, e);
          sum = _mm256_add_ps(sum, e);
        }
        mrow[i] = ms;
        srow[i] = vec::hsum8(sum);
      }
        break;
    }
    finish_rows(mrow, srow, R, L2p + i0);
    ukernel::gemm_bcast(R, d, n, S, np, 1, VAp, d, Op + i0 * d, d, omode, srow);
  }
  if (omode == ukernel::kStream) _mm_sfence();
}

// ---------------------------------------------------------------------------------------------------------
// Agent-major forward layout: scores as n x tokens (agents in rows, tokens in the vector lanes), the
// layout of the BLAS-tile path, with the token tiles packed transposed (d x C) per tile:
//   stage 1, per key tile:   S = (s A) K_tile^T        (n x C)  -> online softmax along the rows (keys)
//                            acc += S V_tile           (n x d)
//   stage 2, per query tile: ST = (s A) Q_tile^T      (n x R)  -> softmax down the columns (8 queries per
//                            O = diag(1/sum) ST^T V_A  (R x d)     vector op, no padding of n)
// No score is computed for padding agents (the token-major layout computes n_pad = 8 * ceil(n / 8)
// columns: 16 for n = 9), the stage-1 bias is read in place and the stage-2 bias transposed once per call.

// sA (n x d) = s A.
inline void scale_agents(const float* Ap, int64_t n, int64_t d, float s, float* sA) {
  for (int64_t i = 0; i < n * d; ++i) sA[i] = s * Ap[i];
}

// A group of g slices (consecutive batches of one head) that share both biases: the agent-major stages run
// tile outer, slice inner, so that each bias tile comes from memory once for the whole group (the biases
// of a head, 2 n N floats, do not fit in L2 at the Swin shape; per slice they were re-read from L3 and cost
// 20-45 % of the forward). Slice s of the group: tensors at base + s * stride.
struct AmGroup {
  int64_t g = 1;
  const float *sA = nullptr, *K = nullptr, *V = nullptr, *Q = nullptr;  // sA: g x n x d, contiguous
  float *VA = nullptr, *O = nullptr, *L2 = nullptr, *ml = nullptr;      // ml: g x (m, l), 2 np each
  int64_t tok_stride = 0, va_stride = 0, l2_stride = 0;                 // K, V, Q, O / V_A / lse2
};

// Stage 1 over keys [k0, k1) for the slices of grp: per slice m, l (n each, in grp.ml) and acc (n x d, in
// grp.VA), unnormalised (as stage1_partial).
inline void stage1_am(const AmGroup& grp, const float* B1p, int64_t N, int64_t n, int64_t np, int64_t d, int64_t k0,
                      int64_t k1) {
  float* S = scratch<float>(0, static_cast<size_t>(n * kKeysF));
  float* KT = scratch<float>(4, static_cast<size_t>(d * kKeysF));
  for (int64_t s = 0; s < grp.g; ++s) {
    float* m = grp.ml + s * 2 * np;
    for (int64_t j = 0; j < n; ++j) m[j] = neg_inf<float>(), m[np + j] = 0.0f;
    std::fill(grp.VA + s * grp.va_stride, grp.VA + s * grp.va_stride + n * d, 0.0f);
  }
  for (int64_t c0 = k0; c0 < k1; c0 += kKeysF) {
    const int64_t C = std::min(kKeysF, k1 - c0), C8 = pad8(C);
    prefetch_rows_l1(B1p, n, N, c0 + kKeysF, tile_extent(c0 + kKeysF, kKeysF, k1));  // the next bias tile
    for (int64_t s = 0; s < grp.g; ++s) {
      const float *Kp = grp.K + s * grp.tok_stride, *Vp = grp.V + s * grp.tok_stride;
      float *m = grp.ml + s * 2 * np, *l = m + np, *acc = grp.VA + s * grp.va_stride;
      ukernel::pack_transposed(Kp + c0 * d, C, d, KT, C8);
      ukernel::gemm_wide(n, C8, d, grp.sA + s * n * d, d, 1, KT, C8, S, C8, false, nullptr);
      // what runs next (the next slice's tile, or the first slice's next tile): its K and V rows, spread
      // over this tile's softmax rows
      const int64_t tnext = ((c0 - k0) / kKeysF) * grp.g + s + 1;
      const int64_t ps = tnext % grp.g, pc0 = k0 + (tnext / grp.g) * kKeysF;
      const int64_t pC = tile_extent(pc0, kKeysF, k1);
      const float* pK = grp.K + ps * grp.tok_stride + pc0 * d;
      const float* pV = grp.V + ps * grp.tok_stride + pc0 * d;
      const int64_t per_row = (pC * d + n - 1) / n;
      for (int64_t j = 0; j < n; ++j) {
        if (pC) {
          const int64_t off = std::min(j * per_row, pC * d), len = std::min(per_row, pC * d - off);
          prefetch(pK + off, len);
          prefetch(pV + off, len);
        }
        float* row = S + j * C8;
        const float mb = vec::add_bias_max(row, B1p ? B1p + j * N + c0 : nullptr, C);
        const float mnew = std::max(m[j], mb);
        const float sum = vec::exp_sub_sum(row, C, mnew);
        if (mnew != m[j]) {
          const float alpha = m[j] == neg_inf<float>() ? 0.0f : std::exp(m[j] - mnew);
          l[j] *= alpha;
          if (c0 > k0) vec::scale_inplace(acc + j * d, d, alpha);
          m[j] = mnew;
        }
        l[j] += sum;
      }
      ukernel::gemm_wide(n, d, C, S, C8, 1, Vp + c0 * d, d, acc, d, true, nullptr);
    }
  }
}

// Stage 2 over queries [r0, r1) for the slices of grp: O rows and lse2. B2Tp: the stage-2 bias transposed
// (n x N) or null.
inline void stage2_am(const AmGroup& grp, const float* B2Tp, int64_t N, int64_t n, int64_t d, int64_t r0,
                      int64_t r1) {
  float* ST = scratch<float>(1, static_cast<size_t>(n * kRowsF));
  float* QT = scratch<float>(4, static_cast<size_t>(d * kRowsF));
  float* mv = scratch<float>(5, static_cast<size_t>(2 * kRowsF));
  float* lv = mv + kRowsF;
  const int omode = out_mode(grp.O);  // every slice's O is aligned like the first: tok_stride is a multiple of 8
  for (int64_t i0 = r0; i0 < r1; i0 += kRowsF) {
    const int64_t R = std::min(kRowsF, r1 - i0), R8 = pad8(R);
    const int64_t Rn = tile_extent(i0 + kRowsF, kRowsF, r1);
    prefetch_rows_l1(B2Tp, n, N, i0 + kRowsF, Rn);  // the next bias tile
    for (int64_t s = 0; s < grp.g; ++s) {
      const float* Qp = grp.Q + s * grp.tok_stride;
      ukernel::pack_transposed(Qp + i0 * d, R, d, QT, R8);
      ukernel::gemm_wide(n, R8, d, grp.sA + s * n * d, d, 1, QT, R8, ST, R8, false, nullptr);
      const bool last = s + 1 == grp.g;
      if (!last)
        prefetch(grp.Q + (s + 1) * grp.tok_stride + i0 * d, R * d);
      else if (Rn)
        prefetch(grp.Q + (i0 + kRowsF) * d, Rn * d);
      vec::col_softmax<float>(ST, n, R, R8, B2Tp ? B2Tp + i0 : nullptr, N, mv, lv);
      float* L2p = grp.L2 + s * grp.l2_stride;
      finish_rows(mv, lv, R, L2p + i0);
      ukernel::gemm_wide(R, d, n, ST, 1, R8, grp.VA + s * grp.va_stride, d, grp.O + s * grp.tok_stride + i0 * d, d,
                         omode, lv);
    }
  }
  if (omode == ukernel::kStream) _mm_sfence();
}

// The stage-2 bias (Bb, Hb, N, n) as (Bb, Hb, n, N) (agent-major layout).
struct BiasQT : BiasCopy {
  int64_t n, N;
  BiasQT(const at::Tensor* b2, int64_t n_, int64_t N_) : BiasCopy(b2, N_, N_ * n_, buffer()), n(n_), N(N_) {}
  static std::vector<float>& buffer() {
    static thread_local std::vector<float> buf;
    return buf;
  }
  void run(int64_t t) const {
    const int64_t sl = t / chunks, i0 = (t % chunks) * 64, i1 = std::min(N, i0 + 64);
    const float* s = src + sl * N * n;
    float* o = dst + sl * N * n;
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {  // 8 x 8 blocks, then the agents left over
      int64_t j = 0;
      for (; j + 8 <= n; j += 8) ukernel::transpose8x8(s + i * n + j, n, o + j * N + i, N);
      for (; j < n; ++j)
        for (int64_t r = i; r < i + 8; ++r) o[j * N + r] = s[r * n + j];
    }
    for (int64_t j = 0; j < n; ++j)
      for (int64_t r = i; r < i1; ++r) o[j * N + r] = s[r * n + j];
  }
};

// Which forward layout: AGENTATTN_CPU_FWD_LAYOUT=token|agent forces one (for comparisons), else by n.
inline bool agent_major(int64_t n) {
  const char* e = std::getenv("AGENTATTN_CPU_FWD_LAYOUT");
  if (e && std::strcmp(e, "token") == 0) return false;
  if (e && std::strcmp(e, "agent") == 0) return true;
  return n % 8 != 0;
}

// Merge the partial stage-1 triples (m, l: np each, acc: n x d) of nkc key chunks per slice into V_A and lse1.
inline void merge_chunks(const std::vector<float>& parts, int64_t BH, int64_t nkc, int64_t n, int64_t np, int64_t d,
                         float* VA, float* L1) {
  const int64_t part_sz = n * d + 2 * np;
  parallel_tasks(BH, [&](int64_t bh, int) {
    for (int64_t j = 0; j < n; ++j) {
      float M = neg_inf<float>();
      for (int64_t c = 0; c < nkc; ++c) M = std::max(M, parts[(bh * nkc + c) * part_sz + j]);
      float lsum = 0;
      float* va = VA + (bh * n + j) * d;
      std::fill(va, va + d, 0.0f);
      for (int64_t c = 0; c < nkc; ++c) {
        const float* p = parts.data() + (bh * nkc + c) * part_sz;
        const float w = p[j] == neg_inf<float>() ? 0.0f : std::exp(p[j] - M);
        lsum += w * p[np + j];
        const float* acc = p + 2 * np + j * d;
        for (int64_t x = 0; x < d; ++x) va[x] += w * acc[x];
      }
      L1[bh * n + j] = M + std::log(lsum);
      vec::scale_inplace(va, d, 1.0f / lsum);
    }
  });
}

// Normalise one slice's stage-1 result: lse1 = m + log l, V_A = acc / l.
inline void finish_stage1(const float* m, const float* l, int64_t n, int64_t d, float* acc, float* L1p) {
  for (int64_t j = 0; j < n; ++j) {
    L1p[j] = m[j] + std::log(l[j]);
    vec::scale_inplace(acc + j * d, d, 1.0f / l[j]);
  }
}

// Batches per task in the agent-major forward when the biases are shared over the batch: as many as
// possible (each bias tile is read once per task), while keeping at least 2 tasks per thread.
inline int64_t batch_group(int64_t B, int64_t H) {
  const int64_t nt = at::get_num_threads();
  int64_t g = B;
  while (g > 1 && H * ((B + g - 1) / g) < 2 * nt) g = (g + 1) / 2;
  return g;
}

inline void forward_agent_major(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                                const at::Tensor* b1, const at::Tensor* b2, float scale, at::Tensor& out,
                                at::Tensor& agent_v, at::Tensor& lse1, at::Tensor& lse2) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = a.size(2), d = q.size(3), BH = B * H;
  const int64_t np = pad8(n);
  const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>(),
              *A = a.data_ptr<float>();
  float *O = out.data_ptr<float>(), *VA = agent_v.data_ptr<float>(), *L1 = lse1.data_ptr<float>(),
        *L2 = lse2.data_ptr<float>();
  const float* B1 = b1 ? b1->data_ptr<float>() : nullptr;
  const BiasQT b2t(b2, n, N);
  auto b1_slice = [&](int64_t b, int64_t h) { return B1 ? B1 + bias_offset(*b1, b, h) : nullptr; };
  // gb slices (b0 .. b0 + gb - 1, head h) with their scaled agents in scratch
  auto group = [&](int64_t b0, int64_t h, int64_t gb) {
    AmGroup grp;
    grp.g = gb;
    float* sA = scratch<float>(2, static_cast<size_t>(gb * n * d));
    for (int64_t s = 0; s < gb; ++s) scale_agents(A + ((b0 + s) * H + h) * n * d, n, d, scale, sA + s * n * d);
    const int64_t bh0 = b0 * H + h;
    grp.sA = sA;
    grp.K = K + bh0 * N * d, grp.V = V + bh0 * N * d, grp.Q = Q + bh0 * N * d;
    grp.VA = VA + bh0 * n * d, grp.O = O + bh0 * N * d, grp.L2 = L2 + bh0 * N;
    grp.ml = scratch<float>(3, static_cast<size_t>(gb * 2 * np));
    grp.tok_stride = H * N * d, grp.va_stride = H * n * d, grp.l2_stride = H * N;
    return grp;
  };
  const int64_t kc = stage1_chunk(BH, N);
  const int64_t nkc = (N + kc - 1) / kc;
  if (nkc == 1) {
    // enough slices: one task per group of batches (one head) runs both stages, all in one parallel region
    const bool shared = (!b1 || b1->size(0) == 1) && (!b2 || b2->size(0) == 1);
    const int64_t g = shared ? batch_group(B, H) : 1, ngr = (B + g - 1) / g;
    parallel_two_phase(b2t.tasks(), [&](int64_t t) { b2t.run(t); }, H * ngr, [&](int64_t t, int) {
      const int64_t h = t % H, b0 = (t / H) * g, gb = std::min(g, B - b0);
      const AmGroup grp = group(b0, h, gb);
      stage1_am(grp, b1_slice(b0, h), N, n, np, d, 0, N);
      for (int64_t s = 0; s < gb; ++s) {
        const float* m = grp.ml + s * 2 * np;
        finish_stage1(m, m + np, n, d, grp.VA + s * grp.va_stride, L1 + ((b0 + s) * H + h) * n);
      }
      stage2_am(grp, b2t.slice(b0, h), N, n, d, 0, N);
    });
    return;
  }
  // few slices: key chunks for stage 1, merged, then query chunks for stage 2
  const int64_t part_sz = n * d + 2 * np;
  std::vector<float> parts(static_cast<size_t>(BH * nkc * part_sz));
  parallel_two_phase(b2t.tasks(), [&](int64_t t) { b2t.run(t); }, BH * nkc, [&](int64_t t, int) {
    const int64_t bh = t / nkc, c = t % nkc, k0 = c * kc;
    AmGroup grp = group(bh / H, bh % H, 1);
    grp.ml = parts.data() + t * part_sz;
    grp.VA = grp.ml + 2 * np;
    stage1_am(grp, b1_slice(bh / H, bh % H), N, n, np, d, k0, std::min(N, k0 + kc));
  });
  merge_chunks(parts, BH, nkc, n, np, d, VA, L1);
  const int64_t nrc = (N + kRowTask - 1) / kRowTask;
  parallel_tasks(BH * nrc, [&](int64_t t, int) {
    const int64_t bh = t / nrc, r0 = (t % nrc) * kRowTask;
    stage2_am(group(bh / H, bh % H, 1), b2t.slice(bh / H, bh % H), N, n, d, r0, std::min(N, r0 + kRowTask));
  });
}

inline void forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                    const at::Tensor* b1, const at::Tensor* b2, float scale, at::Tensor& out, at::Tensor& agent_v,
                    at::Tensor& lse1, at::Tensor& lse2) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = a.size(2), d = q.size(3), BH = B * H;
  if (agent_major(n)) return forward_agent_major(q, k, v, a, b1, b2, scale, out, agent_v, lse1, lse2);
  const int64_t np = pad8(n);
  const float *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(), *V = v.data_ptr<float>(),
              *A = a.data_ptr<float>();
  float *O = out.data_ptr<float>(), *VA = agent_v.data_ptr<float>(), *L1 = lse1.data_ptr<float>(),
        *L2 = lse2.data_ptr<float>();
  const float* B2 = b2 ? b2->data_ptr<float>() : nullptr;
  const BiasT b1t(b1, n, N, np);
  const int64_t kc = stage1_chunk(BH, N);
  const int64_t nkc = (N + kc - 1) / kc;
  auto stage1_task = [&](int64_t t, float* p, float* acc) {
    const int64_t bh = t / nkc, c = t % nkc;
    const int64_t k0 = c * kc, k1 = std::min(N, k0 + kc);
    float* AT = scratch<float>(2, static_cast<size_t>(d * np));
    pack_agents(A + bh * n * d, n, d, np, scale, AT);
    stage1(AT, K + bh * N * d, V + bh * N * d, b1t.slice(bh / H, bh % H), n, np, d, k0, k1, p, p + np, acc);
  };
  auto stage2_task = [&](int64_t bh, int64_t r0, int64_t r1) {
    float* AT = scratch<float>(3, static_cast<size_t>(d * np));
    pack_agents(A + bh * n * d, n, d, np, scale, AT);
    const float* B2p = B2 ? B2 + bias_offset(*b2, bh / H, bh % H) : nullptr;
    stage2(AT, Q + bh * N * d, VA + bh * n * d, B2p, n, np, d, r0, r1, O + bh * N * d, L2 + bh * N);
  };
  if (nkc == 1) {
    // enough slices: one task per (batch, head) runs both stages, all in one parallel region
    parallel_two_phase(b1t.tasks(), [&](int64_t t) { b1t.run(t); }, BH, [&](int64_t bh, int) {
      float* p = scratch<float>(1, static_cast<size_t>(2 * np));
      float* acc = VA + bh * n * d;
      stage1_task(bh, p, acc);
      finish_stage1(p, p + np, n, d, acc, L1 + bh * n);
      stage2_task(bh, 0, N);
    });
    return;
  }
  // few slices: key chunks for stage 1, merged, then query chunks for stage 2
  const int64_t part_sz = n * d + 2 * np;
  std::vector<float> parts(static_cast<size_t>(BH * nkc * part_sz));
  parallel_two_phase(b1t.tasks(), [&](int64_t t) { b1t.run(t); }, BH * nkc, [&](int64_t t, int) {
    float* p = parts.data() + t * part_sz;
    stage1_task(t, p, p + 2 * np);
  });
  merge_chunks(parts, BH, nkc, n, np, d, VA, L1);
  const int64_t nrc = (N + kRowTask - 1) / kRowTask;
  parallel_tasks(BH * nrc, [&](int64_t t, int) {
    const int64_t bh = t / nrc, r0 = (t % nrc) * kRowTask;
    stage2_task(bh, r0, std::min(N, r0 + kRowTask));
  });
}

}  // namespace fast
#endif

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                  const at::Tensor* b1, const at::Tensor* b2, T scale, at::Tensor& out,
                  at::Tensor& agent_v, at::Tensor& lse1, at::Tensor& lse2) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = a.size(2), d = q.size(3), BH = B * H;
#ifdef AGENTATTN_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (use_fast(d))
      return fast::forward(q, k, v, a, b1, b2, scale, out, agent_v, lse1, lse2);
  }
#endif
  const T *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(), *A = a.data_ptr<T>();
  const T* B1 = b1 ? b1->data_ptr<T>() : nullptr;
  at::Tensor b2t;  // stage-2 bias as (Bb, Hb, n, N)
  if (b2) b2t = b2->transpose(2, 3).contiguous();
  const T* B2T = b2 ? b2t.template data_ptr<T>() : nullptr;
  T *O = out.data_ptr<T>(), *VA = agent_v.data_ptr<T>(), *L1 = lse1.data_ptr<T>(), *L2 = lse2.data_ptr<T>();

  // ---- stage 1: V_A and lse1, in key chunks
  const int64_t kc = stage1_chunk(BH, N);
  const int64_t nkc = (N + kc - 1) / kc;
  const int64_t part_sz = n * d + 2 * n;
  std::vector<T> parts(nkc > 1 ? static_cast<size_t>(BH * nkc * part_sz) : 0);
  parallel_tasks(BH * nkc, [&](int64_t t, int) {
    const int64_t bh = t / nkc, c = t % nkc, b = bh / H, h = bh % H;
    const T* B1p = B1 ? B1 + bias_offset(*b1, b, h) : nullptr;
    const int64_t k0 = c * kc, k1 = std::min(N, k0 + kc);
    if (nkc == 1) {
      T* m = scratch<T>(3, static_cast<size_t>(2 * n));
      T* l = m + n;
      T* acc = VA + bh * n * d;
      stage1_partial(A + bh * n * d, K + bh * N * d, V + bh * N * d, B1p, N, n, d, scale, k0, k1, m, l, acc);
      for (int64_t j = 0; j < n; ++j) {
        L1[bh * n + j] = m[j] + std::log(l[j]);
        vec::scale_inplace(acc + j * d, d, T(1) / l[j]);
      }
    } else {
      T* p = parts.data() + t * part_sz;
      stage1_partial(A + bh * n * d, K + bh * N * d, V + bh * N * d, B1p, N, n, d, scale, k0, k1, p, p + n,
                     p + 2 * n);
    }
  });
  if (nkc > 1) {
    parallel_tasks(BH, [&](int64_t bh, int) {
      for (int64_t j = 0; j < n; ++j) {
        T M = neg_inf<T>();
        for (int64_t c = 0; c < nkc; ++c) M = std::max(M, parts[(bh * nkc + c) * part_sz + j]);
        T lsum = 0;
        T* va = VA + (bh * n + j) * d;
        std::fill(va, va + d, T(0));
        for (int64_t c = 0; c < nkc; ++c) {
          const T* p = parts.data() + (bh * nkc + c) * part_sz;
          const T w = p[j] == neg_inf<T>() ? T(0) : std::exp(p[j] - M);
          lsum += w * p[n + j];
          const T* acc = p + 2 * n + j * d;
          for (int64_t x = 0; x < d; ++x) va[x] += w * acc[x];
        }
        L1[bh * n + j] = M + std::log(lsum);
        vec::scale_inplace(va, d, T(1) / lsum);
      }
    });
  }

  // ---- stage 2: O and lse2, in row chunks
  const int64_t nrc = (N + kRowTask - 1) / kRowTask;
  parallel_tasks(BH * nrc, [&](int64_t t, int) {
    const int64_t bh = t / nrc, c = t % nrc, b = bh / H, h = bh % H;
    const T* B2Tp = B2T ? B2T + bias_offset(b2t, b, h) : nullptr;
    const int64_t r0 = c * kRowTask, r1 = std::min(N, r0 + kRowTask);
    stage2_rows(Q + bh * N * d, A + bh * n * d, VA + bh * n * d, B2Tp, N, n, d, scale, r0, r1, O + bh * N * d,
                L2 + bh * N);
  });
}

// Bias-gradient accumulation target for task (b, h): the output itself when the bias is not broadcast
// (each (b, h) owns its slice), else a per-thread buffer summed at the end. `grad` has the layout the
// kernel accumulates in (for the stage-2 bias: transposed, (Bb, Hb, n, N)).
template <typename T>
struct BiasGrad {
  at::Tensor grad;
  std::vector<std::vector<T>> local;
  bool broadcast = false;

  void init(const at::Tensor* bias, int64_t B, int64_t H, bool transposed, int64_t pad_cols = 0) {
    if (!bias) return;
    const int64_t rows = transposed ? bias->size(3) : bias->size(2);
    const int64_t cols = transposed ? bias->size(2) : bias->size(3);
    grad = at::zeros({bias->size(0), bias->size(1), rows, std::max(cols, pad_cols)}, bias->options());
    broadcast = bias->size(0) != B || bias->size(1) != H;
    if (broadcast) local.assign(static_cast<size_t>(at::get_num_threads()), {});
  }
  T* target(int64_t b, int64_t h, int thread) {
    const int64_t off = bias_offset(grad, b, h);
    if (!broadcast) return grad.data_ptr<T>() + off;
    auto& buf = local[static_cast<size_t>(thread)];
    if (buf.empty()) buf.assign(static_cast<size_t>(grad.numel()), T(0));
    return buf.data() + off;
  }
  void finish() {
    if (!broadcast) return;
    T* g = grad.data_ptr<T>();
    for (auto& buf : local)
      if (!buf.empty())
        for (int64_t i = 0; i < grad.numel(); ++i) g[i] += buf[static_cast<size_t>(i)];
  }
};

#ifdef AGENTATTN_AVX2
namespace fast {

// float32 fast backward (AVX2, d a multiple of 8), one (batch, head) per task, same tile layouts as the
// forward. Stage 2 per query tile: S = Q (sA)^T, dP = dO V_A^T (R x np), P and dS along rows;
// dQ = dS (sA), dA' += dS^T Q, dV_A += P^T dO. Stage 1 per key tile: ST = K (sA)^T, dPT = V dV_A^T
// (C x np), P and dS down columns; dV = P dV_A, dK = dS (sA), dA' += dS^T K. dA = s dA'.
// The stage-1 bias gradient accumulates transposed and padded (N x np) and is transposed back at the end.
inline void backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& a, const at::Tensor* b1, const at::Tensor* b2, const at::Tensor& out,
                     const at::Tensor& agent_v, const at::Tensor& lse1, const at::Tensor& lse2, float scale,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& da, BiasGrad<float>& g1T,
                     BiasGrad<float>& g2) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = a.size(2), d = q.size(3), BH = B * H;
  const int64_t np = pad8(n), nv = np / 8, tail = n - (nv - 1) * 8;
  const float *dO = dout.data_ptr<float>(), *Q = q.data_ptr<float>(), *K = k.data_ptr<float>(),
              *V = v.data_ptr<float>(), *A = a.data_ptr<float>(), *O = out.data_ptr<float>(),
              *VA = agent_v.data_ptr<float>(), *L1 = lse1.data_ptr<float>(), *L2 = lse2.data_ptr<float>();
  const float* B2 = b2 ? b2->data_ptr<float>() : nullptr;
  const BiasT b1t(b1, n, N, np);
  float *dQ = dq.data_ptr<float>(), *dK = dk.data_ptr<float>(), *dV = dv.data_ptr<float>(),
        *dA = da.data_ptr<float>();
  const int64_t tile = std::max(kRowsF, kKeysF);

  parallel_two_phase(b1t.tasks(), [&](int64_t t) { b1t.run(t); }, BH, [&](int64_t bh, int thread) {
    const int64_t b = bh / H, h = bh % H;
    const float *Qp = Q + bh * N * d, *Kp = K + bh * N * d, *Vp = V + bh * N * d, *Ap = A + bh * n * d;
    const float *dOp = dO + bh * N * d, *Op = O + bh * N * d, *VAp = VA + bh * n * d;
    float *dQp = dQ + bh * N * d, *dKp = dK + bh * N * d, *dVp = dV + bh * N * d, *dAp = dA + bh * n * d;
    float* S = scratch<float>(0, static_cast<size_t>(tile * np));
    float* dP = scratch<float>(1, static_cast<size_t>(tile * np));
    float* small = scratch<float>(2, static_cast<size_t>(3 * d * np + 3 * n * d + 3 * np));
    float *AT = small, *VAT = AT + d * np, *dVAT = VAT + d * np, *As = dVAT + d * np, *dva = As + n * d,
          *dacc = dva + n * d, *L1p = dacc + n * d, *D1 = L1p + np;
    pack_agents(Ap, n, d, np, scale, AT);
    pack_agents(VAp, n, d, np, 1.0f, VAT);
    for (int64_t x = 0; x < n * d; ++x) As[x] = scale * Ap[x];
    std::fill(dva, dva + n * d, 0.0f);
    std::fill(dacc, dacc + n * d, 0.0f);
    const __m256i tmask = ukernel::tail_mask(tail);
    const __m256 zero = _mm256_setzero_ps();

    // ---- stage 2
    const float* B2p = B2 ? B2 + bias_offset(*b2, b, h) : nullptr;
    float* G2p = b2 ? g2.target(b, h, thread) : nullptr;
    for (int64_t i0 = 0; i0 < N; i0 += kRowsF) {
      const int64_t R = std::min(kRowsF, N - i0);
      ukernel::gemm_bcast(R, np, d, Qp + i0 * d, d, 1, AT, np, S, np, false, nullptr);
      ukernel::gemm_bcast(R, np, d, dOp + i0 * d, d, 1, VAT, np, dP, np, false, nullptr);
      for (int64_t i = 0; i < R; ++i) {
        const int64_t r = i0 + i;
        __m256 dd = zero;
        for (int64_t c = 0; c < d; c += 8)
          dd = _mm256_fmadd_ps(_mm256_loadu_ps(dOp + r * d + c), _mm256_loadu_ps(Op + r * d + c), dd);
        const __m256 di = _mm256_set1_ps(vec::hsum8(dd));
        const __m256 lse = _mm256_set1_ps(L2[bh * N + r]);
        float* srow = S + i * np;
        float* drow = dP + i * np;
        const float* brow = B2p ? B2p + r * n : nullptr;
        float* grow = G2p ? G2p + r * n : nullptr;
        for (int64_t v8 = 0; v8 < nv; ++v8) {
          const bool last = v8 == nv - 1;
          __m256 x = _mm256_loadu_ps(srow + 8 * v8);
          if (brow)
            x = _mm256_add_ps(x, last ? _mm256_maskload_ps(brow + 8 * v8, tmask) : _mm256_loadu_ps(brow + 8 * v8));
          __m256 p = vec::exp8(_mm256_sub_ps(x, lse));
          if (last) p = _mm256_and_ps(p, _mm256_castsi256_ps(tmask));
          const __m256 ds = _mm256_mul_ps(p, _mm256_sub_ps(_mm256_loadu_ps(drow + 8 * v8), di));
          _mm256_storeu_ps(srow + 8 * v8, p);
          _mm256_storeu_ps(drow + 8 * v8, ds);
          if (grow) {
            if (last)
              _mm256_maskstore_ps(grow + 8 * v8, tmask,
                                  _mm256_add_ps(_mm256_maskload_ps(grow + 8 * v8, tmask), ds));
            else
              _mm256_storeu_ps(grow + 8 * v8, _mm256_add_ps(_mm256_loadu_ps(grow + 8 * v8), ds));
          }
        }
      }
      ukernel::gemm_bcast(R, d, n, dP, np, 1, As, d, dQp + i0 * d, d, false, nullptr);
      ukernel::gemm_bcast(n, d, R, dP, 1, np, Qp + i0 * d, d, dacc, d, true, nullptr);
      ukernel::gemm_bcast(n, d, R, S, 1, np, dOp + i0 * d, d, dva, d, true, nullptr);
    }

    // ---- stage 1
    for (int64_t j = 0; j < np; ++j) {
      L1p[j] = j < n ? L1[bh * n + j] : 1e30f;  // padding lanes: probability 0 (clamped)
      D1[j] = j < n ? vec::dot(dva + j * d, VAp + j * d, d) : 0.0f;
    }
    pack_agents(dva, n, d, np, 1.0f, dVAT);
    const float* B1Tp = b1t.slice(b, h);
    float* G1p = b1 ? g1T.target(b, h, thread) : nullptr;
    for (int64_t c0 = 0; c0 < N; c0 += kKeysF) {
      const int64_t C = std::min(kKeysF, N - c0);
      ukernel::gemm_bcast(C, np, d, Kp + c0 * d, d, 1, AT, np, S, np, false, nullptr);
      ukernel::gemm_bcast(C, np, d, Vp + c0 * d, d, 1, dVAT, np, dP, np, false, nullptr);
      for (int64_t i = 0; i < C; ++i) {
        float* srow = S + i * np;
        float* drow = dP + i * np;
        const float* brow = B1Tp ? B1Tp + (c0 + i) * np : nullptr;
        float* grow = G1p ? G1p + (c0 + i) * np : nullptr;
        for (int64_t j0 = 0; j0 < np; j0 += 8) {
          __m256 x = _mm256_loadu_ps(srow + j0);
          if (brow) x = _mm256_add_ps(x, _mm256_loadu_ps(brow + j0));
          const __m256 p = vec::exp8(_mm256_sub_ps(x, _mm256_loadu_ps(L1p + j0)));
          const __m256 ds = _mm256_mul_ps(p, _mm256_sub_ps(_mm256_loadu_ps(drow + j0), _mm256_loadu_ps(D1 + j0)));
          _mm256_storeu_ps(srow + j0, p);
          _mm256_storeu_ps(drow + j0, ds);
          if (grow) _mm256_storeu_ps(grow + j0, _mm256_add_ps(_mm256_loadu_ps(grow + j0), ds));
        }
      }
      ukernel::gemm_bcast(C, d, n, S, np, 1, dva, d, dVp + c0 * d, d, false, nullptr);
      ukernel::gemm_bcast(C, d, n, dP, np, 1, As, d, dKp + c0 * d, d, false, nullptr);
      ukernel::gemm_bcast(n, d, C, dP, 1, np, Kp + c0 * d, d, dacc, d, true, nullptr);
    }
    for (int64_t x = 0; x < n * d; ++x) dAp[x] = scale * dacc[x];
  }, g1T.broadcast || g2.broadcast);  // ordered: reproducible broadcast bias-gradient sums
}

}  // namespace fast
#endif

template <typename T>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& a, const at::Tensor* b1, const at::Tensor* b2, const at::Tensor& out,
                   const at::Tensor& agent_v, const at::Tensor& lse1, const at::Tensor& lse2, T scale,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& da, BiasGrad<T>& g1,
                   BiasGrad<T>& g2) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = a.size(2), d = q.size(3), BH = B * H;
#ifdef AGENTATTN_AVX2
  if constexpr (std::is_same_v<T, float>) {
    if (use_fast(d)) return fast::backward(dout, q, k, v, a, b1, b2, out, agent_v, lse1, lse2, scale, dq, dk, dv, da, g1, g2);
  }
#endif
  const T *dO = dout.data_ptr<T>(), *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(),
          *A = a.data_ptr<T>(), *O = out.data_ptr<T>(), *VA = agent_v.data_ptr<T>(),
          *L1 = lse1.data_ptr<T>(), *L2 = lse2.data_ptr<T>();
  const T* B1 = b1 ? b1->data_ptr<T>() : nullptr;
  at::Tensor b2t;
  if (b2) b2t = b2->transpose(2, 3).contiguous();
  const T* B2T = b2 ? b2t.template data_ptr<T>() : nullptr;
  T *dQ = dq.data_ptr<T>(), *dK = dk.data_ptr<T>(), *dV = dv.data_ptr<T>(), *dA = da.data_ptr<T>();

  parallel_tasks(BH, [&](int64_t bh, int thread) {
    const int64_t b = bh / H, h = bh % H;
    const T *Qp = Q + bh * N * d, *Kp = K + bh * N * d, *Vp = V + bh * N * d, *Ap = A + bh * n * d;
    const T *dOp = dO + bh * N * d, *Op = O + bh * N * d, *VAp = VA + bh * n * d;
    T *dQp = dQ + bh * N * d, *dKp = dK + bh * N * d, *dVp = dV + bh * N * d, *dAp = dA + bh * n * d;
    const int64_t tile = std::max(kRows, kKeys);
    T* P = scratch<T>(0, static_cast<size_t>(n * tile));
    T* dP = scratch<T>(1, static_cast<size_t>(n * tile));
    T* dva = scratch<T>(2, static_cast<size_t>(n * d));
    T* rowdot = scratch<T>(3, static_cast<size_t>(std::max(kRows, n)));
    std::fill(dva, dva + n * d, T(0));
    std::fill(dAp, dAp + n * d, T(0));
    // ---- stage 2 backward, transposed tiles PT = P2^T (n x R)
    const T* B2Tp = B2T ? B2T + bias_offset(b2t, b, h) : nullptr;
    T* G2Tp = b2 ? g2.target(b, h, thread) : nullptr;
    for (int64_t i0 = 0; i0 < N; i0 += kRows) {
      const int64_t R = std::min(kRows, N - i0);
      blas::gemm_rm<T>(false, true, n, R, d, scale, Ap, d, Qp + i0 * d, d, T(0), P, R);
      vec::col_probs(P, n, R, R, B2Tp ? B2Tp + i0 : nullptr, N, L2 + bh * N + i0);
      // dP2^T = V_A dO^T ; Di = rowsum(dO * O) ; dV_A += P2^T dO
      blas::gemm_rm<T>(false, true, n, R, d, T(1), VAp, d, dOp + i0 * d, d, T(0), dP, R);
      for (int64_t i = 0; i < R; ++i) rowdot[i] = vec::dot(dOp + (i0 + i) * d, Op + (i0 + i) * d, d);
      blas::gemm_rm<T>(false, false, n, d, R, T(1), P, R, dOp + i0 * d, d, T(1), dva, d);
      // dS2^T = P2^T * (dP2^T - Di) (+ into the bias gradient)
      vec::col_dsoftmax(dP, P, n, R, R, rowdot, G2Tp ? G2Tp + i0 : nullptr, N);
      // dQ = s dS2 A ; dA += s dS2^T Q
      blas::gemm_rm<T>(true, false, R, d, n, scale, dP, R, Ap, d, T(0), dQp + i0 * d, d);
      blas::gemm_rm<T>(false, false, n, d, R, scale, dP, R, Qp + i0 * d, d, T(1), dAp, d);
    }
    // ---- stage 1 backward over key tiles, upstream gradient dV_A
    for (int64_t j = 0; j < n; ++j) rowdot[j] = vec::dot(dva + j * d, VAp + j * d, d);
    const T* B1p = B1 ? B1 + bias_offset(*b1, b, h) : nullptr;
    T* G1p = b1 ? g1.target(b, h, thread) : nullptr;
    for (int64_t c0 = 0; c0 < N; c0 += kKeys) {
      const int64_t C = std::min(kKeys, N - c0);
      blas::gemm_rm<T>(false, true, n, C, d, scale, Ap, d, Kp + c0 * d, d, T(0), P, C);
      for (int64_t j = 0; j < n; ++j)
        vec::exp_bias_sub(P + j * C, B1p ? B1p + j * N + c0 : nullptr, C, L1[bh * n + j]);
      // dV = P1^T dV_A ; dP1 = dV_A V^T
      blas::gemm_rm<T>(true, false, C, d, n, T(1), P, C, dva, d, T(0), dVp + c0 * d, d);
      blas::gemm_rm<T>(false, true, n, C, d, T(1), dva, d, Vp + c0 * d, d, T(0), dP, C);
      for (int64_t j = 0; j < n; ++j)
        vec::dsoftmax_row(dP + j * C, P + j * C, C, rowdot[j], G1p ? G1p + j * N + c0 : nullptr);
      // dA += s dS1 K ; dK = s dS1^T A
      blas::gemm_rm<T>(false, false, n, d, C, scale, dP, C, Kp + c0 * d, d, T(1), dAp, d);
      blas::gemm_rm<T>(true, false, C, d, n, scale, dP, C, Ap, d, T(0), dKp + c0 * d, d);
    }
  }, g1.broadcast || g2.broadcast);  // ordered: reproducible broadcast bias-gradient sums
}

void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& q, int64_t rows, int64_t cols,
                const char* name) {
  if (!bias.has_value()) return;
  const auto& t = *bias;
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (Bb, Hb, ", rows, ", ", cols, "), got ", t.sizes());
  TORCH_CHECK(t.size(0) == 1 || t.size(0) == q.size(0), name, ": batch dim must be 1 or ", q.size(0),
              ", got ", t.sizes());
  TORCH_CHECK(t.size(1) == 1 || t.size(1) == q.size(1), name, ": head dim must be 1 or ", q.size(1),
              ", got ", t.sizes());
  TORCH_CHECK(t.size(2) == rows && t.size(3) == cols, name, " must end in (", rows, ", ", cols, "), got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " dtype ", t.scalar_type(), " != q dtype ",
              q.scalar_type());
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a) {
  TORCH_CHECK(q.dim() == 4, "q must be (B, H, N, d), got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "k and v must match q ", q.sizes(),
              ", got k ", k.sizes(), " v ", v.sizes());
  TORCH_CHECK(a.dim() == 4 && a.size(0) == q.size(0) && a.size(1) == q.size(1) && a.size(3) == q.size(3),
              "agents must be (B, H, n, d) = (", q.size(0), ", ", q.size(1), ", n, ", q.size(3), "), got ",
              a.sizes());
  for (const at::Tensor* t : {&q, &k, &v, &a}) {
    TORCH_CHECK(t->is_contiguous(), "agent_attention CPU kernel expects contiguous inputs");
    TORCH_CHECK(t->device().is_cpu(), "agent_attention CPU kernel got a tensor on ", t->device());
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "all inputs must share q's dtype ", q.scalar_type());
  }
  TORCH_CHECK(q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble,
              "agent_attention CPU kernel supports float32 and float64, got ", q.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> agent_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& agents,
    const c10::optional<at::Tensor>& bias_agent, const c10::optional<at::Tensor>& bias_query, double scale) {
  check_inputs(q, k, v, agents);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = agents.size(2), d = q.size(3);
  check_bias(bias_agent, q, n, N, "bias_agent");
  check_bias(bias_query, q, N, n, "bias_query");
  auto out = at::empty_like(q);
  auto agent_v = at::empty({B, H, n, d}, q.options());
  auto lse1 = at::empty({B, H, n}, q.options());
  auto lse2 = at::empty({B, H, N}, q.options());
  const at::Tensor* b1 = bias_agent.has_value() ? &*bias_agent : nullptr;
  const at::Tensor* b2 = bias_query.has_value() ? &*bias_query : nullptr;
  if (N == 0 || B * H == 0) {  // no keys: the agents attend to nothing (V_A = 0, lse = -inf)
    agent_v.zero_();
    lse1.fill_(-std::numeric_limits<double>::infinity());
    return {out, agent_v, lse1, lse2};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "agent_attention_fwd_cpu", [&] {
    forward_impl<scalar_t>(q, k, v, agents, b1, b2, static_cast<scalar_t>(scale), out, agent_v, lse1, lse2);
  });
  return {out, agent_v, lse1, lse2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> agent_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& agents, const c10::optional<at::Tensor>& bias_agent,
    const c10::optional<at::Tensor>& bias_query, const at::Tensor& out, const at::Tensor& agent_v,
    const at::Tensor& lse_agent, const at::Tensor& lse_query, double scale) {
  check_inputs(q, k, v, agents);
  const int64_t N = q.size(2), n = agents.size(2);
  check_bias(bias_agent, q, n, N, "bias_agent");
  check_bias(bias_query, q, N, n, "bias_query");
  auto dout = grad_out.contiguous();
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v), da = at::empty_like(agents);
  const at::Tensor* b1 = bias_agent.has_value() ? &*bias_agent : nullptr;
  const at::Tensor* b2 = bias_query.has_value() ? &*bias_query : nullptr;
  at::Tensor db1 = at::empty({0}, q.options()), db2 = at::empty({0}, q.options());
  if (N == 0 || q.size(0) * q.size(1) == 0) {  // nothing flows back: zero agent and bias gradients
    da.zero_();
    if (b1) db1 = at::zeros_like(*b1);
    if (b2) db2 = at::zeros_like(*b2);
    return {dq, dk, dv, da, db1, db2};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "agent_attention_bwd_cpu", [&] {
    BiasGrad<scalar_t> g1, g2;
    // fast float path: stage-1 gradient transposed and padded (N x np), stage-2 as the bias (N x n);
    // BLAS-tile path: stage-1 as the bias (n x N), stage-2 transposed (n x N)
    const bool fast = std::is_same_v<scalar_t, float> && use_fast(q.size(3)) && kHaveFast;
    g1.init(b1, q.size(0), q.size(1), fast, fast ? (agents.size(2) + 7) / 8 * 8 : 0);
    g2.init(b2, q.size(0), q.size(1), !fast);
    backward_impl<scalar_t>(dout, q, k, v, agents, b1, b2, out.contiguous(), agent_v.contiguous(),
                            lse_agent.contiguous(), lse_query.contiguous(), static_cast<scalar_t>(scale), dq,
                            dk, dv, da, g1, g2);
    g1.finish();
    g2.finish();
    if (b1) db1 = fast ? g1.grad.narrow(3, 0, agents.size(2)).transpose(2, 3).contiguous() : g1.grad;
    if (b2) db2 = fast ? g2.grad : g2.grad.transpose(2, 3).contiguous();
  });
  return {dq, dk, dv, da, db1, db2};
}

}  // namespace

TORCH_LIBRARY_IMPL(agentattn, CPU, m) {
  m.impl("agent_attention_fwd", &agent_attention_fwd_cpu);
  m.impl("agent_attention_bwd", &agent_attention_bwd_cpu);
}

}  // namespace agentattn
