// Fused Agent Attention on CPU: forward and backward, float32 and float64.
//
// Per (batch, head), with scale s, agents A (n x d), keys/values K, V (N x d), queries Q (N x d):
//   stage 1: S1 = s A K^T + B1 (n x N) -> softmax over N -> P1;  V_A = P1 V (n x d)
//   stage 2: S2 = s Q A^T + B2 (N x n) -> softmax over n -> P2;  O = P2 V_A (N x d)
//
// Stage 1 runs over blocks of kKeys keys with an online softmax (running max, sum and an n x d
// accumulator rescaled when the max grows), so only one n x kKeys score tile per thread exists. When
// there are few (batch, head) slices, the keys are split into chunks on different threads and the partial
// (max, sum, accumulator) triples are merged. Stage 2 works on kRows queries at a time in a transposed tile
// ST = s A Q_blk^T (n x kRows): the softmax over the n agents runs down the columns, so every vector op
// covers 8 queries whatever n is; the stage-2 bias is transposed once per call to match. Bias add, max,
// exp and the sum run in two passes over the cache-resident tile; the normalisation is applied to
// whichever of P2 (n x R) or O (R x d) is smaller. Products go through BLAS (MKL's sgemm_/dgemm_ exported
// by libtorch_cpu, one thread per task) on the tiles.
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
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/blas.h"
#include "cpu/vec.h"

namespace agentattn {
namespace {

constexpr int64_t kRows = 128;  // stage-2 queries per tile
constexpr int64_t kKeys = 256;  // stage-1 keys per tile
constexpr int64_t kRowTask = 512;  // stage-2 queries per parallel task

using vec::neg_inf;

// Run f(task, thread) for task in [0, ntasks) on the intra-op threads, dynamically scheduled (the
// machine is shared: a static split waits for the slowest thread).
template <typename F>
void parallel_tasks(int64_t ntasks, const F& f) {
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), ntasks);
  if (nt <= 1 || omp_in_parallel()) {
    for (int64_t t = 0; t < ntasks; ++t) f(t, 0);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(static_cast<int>(nt))
  for (int64_t t = 0; t < ntasks; ++t) f(t, omp_get_thread_num());
}

// Per-thread scratch that only grows (no allocation per call once warm).
template <typename T>
T* scratch(int slot, size_t count) {
  static thread_local std::vector<T> buf[4];
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

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                  const at::Tensor* b1, const at::Tensor* b2, T scale, at::Tensor& out,
                  at::Tensor& agent_v, at::Tensor& lse1, at::Tensor& lse2) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = a.size(2), d = q.size(3), BH = B * H;
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

  void init(const at::Tensor* bias, int64_t B, int64_t H, bool transposed) {
    if (!bias) return;
    grad = transposed ? at::zeros({bias->size(0), bias->size(1), bias->size(3), bias->size(2)}, bias->options())
                      : at::zeros_like(*bias);
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

template <typename T>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& a, const at::Tensor* b1, const at::Tensor* b2, const at::Tensor& out,
                   const at::Tensor& agent_v, const at::Tensor& lse1, const at::Tensor& lse2, T scale,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& da, BiasGrad<T>& g1,
                   BiasGrad<T>& g2) {
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), n = a.size(2), d = q.size(3), BH = B * H;
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
  });
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
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "agent_attention_bwd_cpu", [&] {
    BiasGrad<scalar_t> g1, g2;
    g1.init(b1, q.size(0), q.size(1), false);
    g2.init(b2, q.size(0), q.size(1), true);
    backward_impl<scalar_t>(dout, q, k, v, agents, b1, b2, out.contiguous(), agent_v.contiguous(),
                            lse_agent.contiguous(), lse_query.contiguous(), static_cast<scalar_t>(scale), dq,
                            dk, dv, da, g1, g2);
    g1.finish();
    g2.finish();
    if (b1) db1 = g1.grad;
    if (b2) db2 = g2.grad.transpose(2, 3).contiguous();
  });
  return {dq, dk, dv, da, db1, db2};
}

}  // namespace

TORCH_LIBRARY_IMPL(agentattn, CPU, m) {
  m.impl("agent_attention_fwd", &agent_attention_fwd_cpu);
  m.impl("agent_attention_bwd", &agent_attention_bwd_cpu);
}

}  // namespace agentattn
