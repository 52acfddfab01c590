// Fused Agent Attention on CPU: forward and backward, float32 and float64.
//
// Per (batch, head) task, with scale s, agents A (n x d), keys/values K, V (N x d), queries Q (N x d):
//   stage 1: S1 = s A K^T + B1 (n x N) -> row softmax -> P1;  V_A = P1 V (n x d)
//   stage 2: S2 = s Q A^T + B2 (N x n), in row blocks of kRows -> row softmax -> P2;  O = P2 V_A
// Only one score tile per thread lives in cache (n x N for stage 1, kRows x n for stage 2); the forward
// keeps for backward only V_A and the log-sum-exp of every score row (n + N values per head). The
// backward recomputes the probabilities from those statistics.
//
// The four products per stage run through BLAS (MKL's sgemm_/dgemm_, exported by libtorch_cpu) on
// cache-sized tiles; bias add, exp and normalisation are fused into one pass over the tile.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/blas.h"

namespace agentattn {
namespace {

constexpr int64_t kRows = 128;  // stage-2 query rows per tile

// exp for float: 2^(x log2 e) with a degree-6 polynomial for the fraction; written so that GCC
// vectorises loops over it (AVX-512: 16 lanes). Relative error about 2e-7 on the softmax range.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.3f), 88.3f);
  const float t = x * 1.4426950408889634f;
  const float fi = std::floor(t);
  const float f = t - fi;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const int32_t e = static_cast<int32_t>(fi) + 127;
  float scale;
  const uint32_t bits = static_cast<uint32_t>(e) << 23;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double fast_exp(double x) { return std::exp(x); }

// Row-wise: x[j] = exp(x[j] - m) over a row of `len`, returns the sum; m = row max.
template <typename T>
inline T exp_row_inplace(T* x, int64_t len, T m) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < len; ++j) {
    const T e = fast_exp(x[j] - m);
    x[j] = e;
    sum += e;
  }
  return sum;
}

template <typename T>
inline T row_max(const T* x, int64_t len) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < len; ++j) m = std::max(m, x[j]);
  return m;
}

// Softmax of each row of S (rows x cols, row stride ld) in place; writes the log-sum-exp per row.
template <typename T>
void softmax_rows(T* S, int64_t rows, int64_t cols, int64_t ld, T* lse) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = S + i * ld;
    const T m = row_max(row, cols);
    const T sum = exp_row_inplace(row, cols, m);
    const T inv = T(1) / sum;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) row[j] *= inv;
    lse[i] = m + std::log(sum);
  }
}

// P = exp(S - lse[row]) in place (recompute of probabilities in backward).
template <typename T>
void probs_from_lse(T* S, int64_t rows, int64_t cols, const T* lse) {
  for (int64_t i = 0; i < rows; ++i) {
    T* row = S + i * cols;
    const T l = lse[i];
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) row[j] = fast_exp(row[j] - l);
  }
}

template <typename T>
inline void add_into(T* dst, const T* src, int64_t len) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) dst[j] += src[j];
}

struct Dims {
  int64_t B, H, N, n, d;
};

// Where the (b, h) slice of a (Bb, Hb, rows, cols) bias starts; Bb in {1, B}, Hb in {1, H}.
inline int64_t bias_offset(const at::Tensor& bias, int64_t b, int64_t h) {
  const int64_t bb = bias.size(0) == 1 ? 0 : b;
  const int64_t hh = bias.size(1) == 1 ? 0 : h;
  return (bb * bias.size(1) + hh) * bias.size(2) * bias.size(3);
}

template <typename T>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                  const at::Tensor* b1, const at::Tensor* b2, T scale, at::Tensor& out,
                  at::Tensor& agent_v, at::Tensor& lse1, at::Tensor& lse2) {
  const Dims D{q.size(0), q.size(1), q.size(2), a.size(2), q.size(3)};
  const T* Q = q.data_ptr<T>();
  const T* K = k.data_ptr<T>();
  const T* V = v.data_ptr<T>();
  const T* A = a.data_ptr<T>();
  const T* B1 = b1 ? b1->data_ptr<T>() : nullptr;
  const T* B2 = b2 ? b2->data_ptr<T>() : nullptr;
  T* O = out.data_ptr<T>();
  T* VA = agent_v.data_ptr<T>();
  T* L1 = lse1.data_ptr<T>();
  T* L2 = lse2.data_ptr<T>();
  const int64_t N = D.N, n = D.n, d = D.d;

  at::parallel_for(0, D.B * D.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> s1(static_cast<size_t>(n * N));
    std::vector<T> s2(static_cast<size_t>(kRows * n));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / D.H, h = bh % D.H;
      const T* Qp = Q + bh * N * d;
      const T* Kp = K + bh * N * d;
      const T* Vp = V + bh * N * d;
      const T* Ap = A + bh * n * d;
      T* VAp = VA + bh * n * d;
      // stage 1: S1 = s A K^T (+ B1), softmax over N, V_A = P1 V
      if (B1) {
        std::memcpy(s1.data(), B1 + bias_offset(*b1, b, h), sizeof(T) * n * N);
        blas::gemm_rm<T>(false, true, n, N, d, scale, Ap, d, Kp, d, T(1), s1.data(), N);
      } else {
        blas::gemm_rm<T>(false, true, n, N, d, scale, Ap, d, Kp, d, T(0), s1.data(), N);
      }
      softmax_rows(s1.data(), n, N, N, L1 + bh * n);
      blas::gemm_rm<T>(false, false, n, d, N, T(1), s1.data(), N, Vp, d, T(0), VAp, d);
      // stage 2: row blocks of queries against the n agents
      const T* B2p = B2 ? B2 + bias_offset(*b2, b, h) : nullptr;
      for (int64_t r0 = 0; r0 < N; r0 += kRows) {
        const int64_t R = std::min(kRows, N - r0);
        if (B2p) {
          std::memcpy(s2.data(), B2p + r0 * n, sizeof(T) * R * n);
          blas::gemm_rm<T>(false, true, R, n, d, scale, Qp + r0 * d, d, Ap, d, T(1), s2.data(), n);
        } else {
          blas::gemm_rm<T>(false, true, R, n, d, scale, Qp + r0 * d, d, Ap, d, T(0), s2.data(), n);
        }
        softmax_rows(s2.data(), R, n, n, L2 + bh * N + r0);
        blas::gemm_rm<T>(false, false, R, d, n, T(1), s2.data(), n, VAp, d, T(0), O + bh * N * d + r0 * d, d);
      }
    }
  });
}

// Bias-gradient accumulation target for task (b, h): the output itself when the bias is not broadcast
// (each (b, h) owns its slice), else a per-thread buffer summed at the end.
template <typename T>
struct BiasGrad {
  at::Tensor grad;                    // (Bb, Hb, rows, cols), the returned gradient
  std::vector<std::vector<T>> local;  // per-thread partial sums when broadcast
  bool broadcast = false;
  int64_t slice = 0;

  void init(const at::Tensor* bias, int64_t B, int64_t H) {
    if (!bias) return;
    grad = at::zeros_like(*bias);
    broadcast = bias->size(0) != B || bias->size(1) != H;
    slice = bias->size(2) * bias->size(3);
    if (broadcast) local.assign(static_cast<size_t>(at::get_num_threads()), {});
  }
  T* target(int64_t b, int64_t h) {
    const int64_t off = bias_offset(grad, b, h);
    if (!broadcast) return grad.data_ptr<T>() + off;
    auto& buf = local[static_cast<size_t>(at::get_thread_num())];
    if (buf.empty()) buf.assign(static_cast<size_t>(grad.numel()), T(0));
    return buf.data() + off;
  }
  void finish() {
    if (!broadcast) return;
    T* g = grad.data_ptr<T>();
    for (auto& buf : local)
      if (!buf.empty()) add_into(g, buf.data(), grad.numel());
  }
};

template <typename T>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& a, const at::Tensor* b1, const at::Tensor* b2, const at::Tensor& out,
                   const at::Tensor& agent_v, const at::Tensor& lse1, const at::Tensor& lse2, T scale,
                   at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& da, BiasGrad<T>& g1,
                   BiasGrad<T>& g2) {
  const Dims D{q.size(0), q.size(1), q.size(2), a.size(2), q.size(3)};
  const int64_t N = D.N, n = D.n, d = D.d;
  const T *dO = dout.data_ptr<T>(), *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(),
          *A = a.data_ptr<T>(), *O = out.data_ptr<T>(), *VA = agent_v.data_ptr<T>(),
          *L1 = lse1.data_ptr<T>(), *L2 = lse2.data_ptr<T>();
  const T* B1 = b1 ? b1->data_ptr<T>() : nullptr;
  const T* B2 = b2 ? b2->data_ptr<T>() : nullptr;
  T *dQ = dq.data_ptr<T>(), *dK = dk.data_ptr<T>(), *dV = dv.data_ptr<T>(), *dA = da.data_ptr<T>();

  at::parallel_for(0, D.B * D.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> p2(static_cast<size_t>(kRows * n)), dp2(static_cast<size_t>(kRows * n));
    std::vector<T> rowdot(static_cast<size_t>(std::max(kRows, n)));
    std::vector<T> p1(static_cast<size_t>(n * N)), dp1(static_cast<size_t>(n * N));
    std::vector<T> dva(static_cast<size_t>(n * d));
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / D.H, h = bh % D.H;
      const T *Qp = Q + bh * N * d, *Kp = K + bh * N * d, *Vp = V + bh * N * d, *Ap = A + bh * n * d;
      const T *dOp = dO + bh * N * d, *Op = O + bh * N * d, *VAp = VA + bh * n * d;
      T *dQp = dQ + bh * N * d, *dKp = dK + bh * N * d, *dVp = dV + bh * N * d, *dAp = dA + bh * n * d;
      std::fill(dva.begin(), dva.end(), T(0));
      // ---- stage 2 backward, row blocks of queries
      const T* B2p = B2 ? B2 + bias_offset(*b2, b, h) : nullptr;
      T* G2p = B2 ? g2.target(b, h) : nullptr;
      for (int64_t r0 = 0; r0 < N; r0 += kRows) {
        const int64_t R = std::min(kRows, N - r0);
        // P2 = exp(s Q A^T + B2 - lse2)
        if (B2p) {
          std::memcpy(p2.data(), B2p + r0 * n, sizeof(T) * R * n);
          blas::gemm_rm<T>(false, true, R, n, d, scale, Qp + r0 * d, d, Ap, d, T(1), p2.data(), n);
        } else {
          blas::gemm_rm<T>(false, true, R, n, d, scale, Qp + r0 * d, d, Ap, d, T(0), p2.data(), n);
        }
        probs_from_lse(p2.data(), R, n, L2 + bh * N + r0);
        // dP2 = dO V_A^T ; Di = rowsum(dO * O)
        blas::gemm_rm<T>(false, true, R, n, d, T(1), dOp + r0 * d, d, VAp, d, T(0), dp2.data(), n);
        for (int64_t i = 0; i < R; ++i) {
          const T* x = dOp + (r0 + i) * d;
          const T* y = Op + (r0 + i) * d;
          T acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t c = 0; c < d; ++c) acc += x[c] * y[c];
          rowdot[i] = acc;
        }
        // dV_A += P2^T dO (uses P2 before it is overwritten)
        blas::gemm_rm<T>(true, false, n, d, R, T(1), p2.data(), n, dOp + r0 * d, d, T(1), dva.data(), d);
        // dS2 = P2 * (dP2 - Di), into dp2
        for (int64_t i = 0; i < R; ++i) {
          T* ds = dp2.data() + i * n;
          const T* p = p2.data() + i * n;
          const T di = rowdot[i];
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - di);
        }
        if (G2p) add_into(G2p + r0 * n, dp2.data(), R * n);
        // dQ = s dS2 A ; dA += s dS2^T Q
        blas::gemm_rm<T>(false, false, R, d, n, scale, dp2.data(), n, Ap, d, T(0), dQp + r0 * d, d);
        blas::gemm_rm<T>(true, false, n, d, R, scale, dp2.data(), n, Qp + r0 * d, d, r0 == 0 ? T(0) : T(1), dAp, d);
      }
      // ---- stage 1 backward, upstream gradient dV_A
      if (B1) {
        std::memcpy(p1.data(), B1 + bias_offset(*b1, b, h), sizeof(T) * n * N);
        blas::gemm_rm<T>(false, true, n, N, d, scale, Ap, d, Kp, d, T(1), p1.data(), N);
      } else {
        blas::gemm_rm<T>(false, true, n, N, d, scale, Ap, d, Kp, d, T(0), p1.data(), N);
      }
      probs_from_lse(p1.data(), n, N, L1 + bh * n);
      // dV = P1^T dV_A ; dP1 = dV_A V^T ; D1 = rowsum(dV_A * V_A)
      blas::gemm_rm<T>(true, false, N, d, n, T(1), p1.data(), N, dva.data(), d, T(0), dVp, d);
      blas::gemm_rm<T>(false, true, n, N, d, T(1), dva.data(), d, Vp, d, T(0), dp1.data(), N);
      for (int64_t i = 0; i < n; ++i) {
        T acc = 0;
        for (int64_t c = 0; c < d; ++c) acc += dva[i * d + c] * VAp[i * d + c];
        rowdot[i] = acc;
      }
      for (int64_t i = 0; i < n; ++i) {
        T* ds = dp1.data() + i * N;
        const T* p = p1.data() + i * N;
        const T di = rowdot[i];
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) ds[j] = p[j] * (ds[j] - di);
      }
      if (B1) add_into(g1.target(b, h), dp1.data(), n * N);
      // dA += s dS1 K ; dK = s dS1^T A
      blas::gemm_rm<T>(false, false, n, d, N, scale, dp1.data(), N, Kp, d, T(1), dAp, d);
      blas::gemm_rm<T>(true, false, N, d, n, scale, dp1.data(), N, Ap, d, T(0), dKp, d);
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
    g1.init(b1, q.size(0), q.size(1));
    g2.init(b2, q.size(0), q.size(1));
    backward_impl<scalar_t>(dout, q, k, v, agents, b1, b2, out.contiguous(), agent_v.contiguous(),
                            lse_agent.contiguous(), lse_query.contiguous(), static_cast<scalar_t>(scale), dq,
                            dk, dv, da, g1, g2);
    g1.finish();
    g2.finish();
    if (b1) db1 = g1.grad;
    if (b2) db2 = g2.grad;
  });
  return {dq, dk, dv, da, db1, db2};
}

}  // namespace

TORCH_LIBRARY_IMPL(agentattn, CPU, m) {
  m.impl("agent_attention_fwd", &agent_attention_fwd_cpu);
  m.impl("agent_attention_bwd", &agent_attention_bwd_cpu);
}

}  // namespace agentattn
