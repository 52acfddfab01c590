// Agent attention CUDA kernels, forward and backward, fp32 / fp16 / bf16 inputs, fp32 accumulation.
//
// Per (batch b, head h), scale s, agents A (n x d), keys/values K, V (M x d) and queries Q (N x d):
//   stage 1: S1 = s A K^T + B1 (n x M), P1 = softmax over M, V_A = P1 V (n x d)
//   stage 2: S2 = s Q A^T + B2 (N x n), P2 = softmax over n, O = P2 V_A (N x d)
//
// Non-finite values follow the reference composition: a NaN score enters its row sum through
// __expf(NaN) = NaN (fmaxf in the row max ignores it, the sum does not), a row of -inf scores ends as 0/0
// = NaN, and the online softmax subtracts 0 instead of a running max that is still -inf (a tile or split
// whose scores are all -inf so far, e.g. masked keys) so that it adds exactly 0 rather than NaN.
//
// Kernels (one block of kThreads = 4 warps each; everything staged in dynamic shared memory as fp32,
// rows padded to d+1 floats so that column walks are free of bank conflicts):
//   stage1_fwd_split  grid (splits1, B*H): online softmax of the n agent rows over a range of key tiles;
//                     partial (max, sum, P1 V) per split into the workspace (flash-decoding).
//   stage1_fwd_reduce grid (B*H): combines the splits -> V_A, lse_agent.
//   stage2_fwd        grid (ceil(N/kRowTile), B*H): A and V_A resident in shared memory; scores, row
//                     softmax over n (one warp per row), O = P2 V_A; lse_query.
//   stage2_bwd        grid (splits2, B*H): P2 recomputed from lse_query; dQ, dB2, partial dA and dV_A.
//   sum_splits        fixed-order sum of the per-split partials (deterministic).
//   stage1_bwd        grid (splits1, B*H): P1 recomputed from lse_agent; dK, dV, dB1, partial dA.
//   finish_dagents    dA = sum of the stage-1 partials + the stage-2 total, cast to the input dtype.
// No (N x n) tensor is kept between forward and backward. Broadcast bias gradients use fp32 atomicAdd
// (not bitwise deterministic); full biases are written once per element.
//
// Only cuda_runtime / cuda_fp16 / cuda_bf16: compiles with `nvcc -c` without ATen (scripts/check_cuda_compile.sh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cuda/agent_attention.h"

namespace agentattn {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

__device__ __forceinline__ float dot_smem(const float* a, const float* b, int d) {
  float acc = 0.f;
  for (int c = 0; c < d; ++c) acc = fmaf(a[c], b[c], acc);
  return acc;
}

// rows x d global (type T) -> shared fp32 with row stride ld, times mul; rows >= valid are zero.
template <typename T>
__device__ __forceinline__ void load_rows(float* dst, const T* src, int rows, int valid, int d, int ld, float mul) {
  for (int e = threadIdx.x; e < rows * d; e += blockDim.x) {
    const int r = e / d, c = e - r * d;
    dst[r * ld + c] = r < valid ? to_f(src[static_cast<int64_t>(r) * d + c]) * mul : 0.f;
  }
}

template <typename T>
__device__ __forceinline__ void bias_grad(void* db, bool atomic, int64_t off, float g) {
  if (atomic)
    atomicAdd(static_cast<float*>(db) + off, g);
  else
    static_cast<T*>(db)[off] = from_f<T>(g);
}

// ------------------------------------------------------------------------------------------ forward
template <typename T>
__global__ void __launch_bounds__(kThreads) stage1_fwd_split(const AgentAttnParams p) {
  extern __shared__ float smem[];
  const int n = p.n, D = p.d, LD = D + 1, M = p.M, S = p.splits1;
  const int sp = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float* sA = smem;                // n x LD, pre-scaled
  float* sAcc = sA + n * LD;       // n x LD
  float* sK = sAcc + n * LD;       // kKeyTile x LD
  float* sV = sK + kKeyTile * LD;  // kKeyTile x LD
  float* sS = sV + kKeyTile * LD;  // n x kKeyTile
  float* sM = sS + n * kKeyTile;
  float* sL = sM + n;
  float* sAlpha = sL + n;
  const T* A = static_cast<const T*>(p.agents) + bh * n * D;
  const T* K = static_cast<const T*>(p.k) + bh * M * D;
  const T* V = static_cast<const T*>(p.v) + bh * M * D;
  const T* bias = p.bias_agent ? static_cast<const T*>(p.bias_agent) + b * p.b1_sb + h * p.b1_sh : nullptr;
  load_rows(sA, A, n, n, D, LD, p.scale);
  for (int e = tid; e < n * D; e += blockDim.x) sAcc[(e / D) * LD + e % D] = 0.f;
  for (int i = tid; i < n; i += blockDim.x) {
    sM[i] = -INFINITY;
    sL[i] = 0.f;
  }
  const int key0 = sp * p.tiles_per_split1 * kKeyTile;
  const int key_end = min(M, key0 + p.tiles_per_split1 * kKeyTile);
  __syncthreads();
  for (int j0 = key0; j0 < key_end; j0 += kKeyTile) {
    const int valid = min(kKeyTile, M - j0);
    load_rows(sK, K + static_cast<int64_t>(j0) * D, kKeyTile, valid, D, LD, 1.f);
    load_rows(sV, V + static_cast<int64_t>(j0) * D, kKeyTile, valid, D, LD, 1.f);
    __syncthreads();
    for (int e = tid; e < n * kKeyTile; e += blockDim.x) {
      const int i = e / kKeyTile, j = e - i * kKeyTile;
      float s = -INFINITY;
      if (j < valid) {
        s = dot_smem(sA + i * LD, sK + j * LD, D);
        if (bias) s += to_f(bias[static_cast<int64_t>(i) * M + j0 + j]);
      }
      sS[e] = s;
    }
    __syncthreads();
    for (int i = warp; i < n; i += kWarps) {  // online softmax, one warp per agent row, lane = key
      const float s = sS[i * kKeyTile + lane];
      const float m_old = sM[i];
      const float m_new = fmaxf(m_old, warp_max(s));
      const float m_use = m_new == -INFINITY ? 0.f : m_new;  // all -inf so far (masked keys): p = 0, not NaN
      const float pv = __expf(s - m_use);
      const float sum = warp_sum(pv);
      sS[i * kKeyTile + lane] = pv;
      if (lane == 0) {
        const float alpha = __expf(m_old - m_use);
        sAlpha[i] = alpha;
        sL[i] = sL[i] * alpha + sum;
        sM[i] = m_new;
      }
    }
    __syncthreads();
    for (int e = tid; e < n * D; e += blockDim.x) {
      const int i = e / D, c = e - i * D;
      float acc = sAcc[i * LD + c] * sAlpha[i];
      const float* pr = sS + i * kKeyTile;
#pragma unroll 8
      for (int j = 0; j < kKeyTile; ++j) acc = fmaf(pr[j], sV[j * LD + c], acc);
      sAcc[i * LD + c] = acc;
    }
    __syncthreads();
  }
  float* m_part = p.work + (bh * S + sp) * n;
  float* l_part = p.work + static_cast<int64_t>(p.B) * p.H * S * n + (bh * S + sp) * n;
  float* acc_part = p.work + 2 * static_cast<int64_t>(p.B) * p.H * S * n + (bh * S + sp) * n * D;
  for (int i = tid; i < n; i += blockDim.x) {
    m_part[i] = sM[i];
    l_part[i] = sL[i];
  }
  for (int e = tid; e < n * D; e += blockDim.x) acc_part[e] = sAcc[(e / D) * LD + e % D];
}

template <typename T>
__global__ void __launch_bounds__(kThreads) stage1_fwd_reduce(const AgentAttnParams p) {
  const int n = p.n, D = p.d, S = p.splits1;
  const int64_t bh = blockIdx.x, BHS = static_cast<int64_t>(p.B) * p.H * S;
  const float* m_part = p.work + bh * S * n;
  const float* l_part = p.work + BHS * n + bh * S * n;
  const float* acc_part = p.work + 2 * BHS * n + bh * S * n * D;
  T* VA = static_cast<T*>(p.agent_v) + bh * n * D;
  for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
    const int i = e / D, c = e - i * D;
    float m = -INFINITY;
    for (int s = 0; s < S; ++s) m = fmaxf(m, m_part[s * n + i]);
    const float m_use = m == -INFINITY ? 0.f : m;  // every split all -inf: l = 0, V_A = 0/0 = NaN as the reference
    float l = 0.f, acc = 0.f;
    for (int s = 0; s < S; ++s) {
      const float w = __expf(m_part[s * n + i] - m_use);
      l = fmaf(l_part[s * n + i], w, l);
      acc = fmaf(acc_part[(static_cast<int64_t>(s) * n + i) * D + c], w, acc);
    }
    VA[e] = from_f<T>(acc / l);
    if (c == 0) p.lse_agent[bh * n + i] = m_use + logf(l);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) stage2_fwd(const AgentAttnParams p) {
  extern __shared__ float smem[];
  const int n = p.n, D = p.d, LD = D + 1, N = p.N;
  const int r0 = blockIdx.x * kRowTile;
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int valid = min(kRowTile, N - r0);
  float* sA = smem;                // n x LD
  float* sVA = sA + n * LD;        // n x LD
  float* sQ = sVA + n * LD;        // kRowTile x LD, pre-scaled
  float* sS = sQ + kRowTile * LD;  // kRowTile x n
  const T* bias = p.bias_query ? static_cast<const T*>(p.bias_query) + b * p.b2_sb + h * p.b2_sh : nullptr;
  load_rows(sA, static_cast<const T*>(p.agents) + bh * n * D, n, n, D, LD, 1.f);
  load_rows(sVA, static_cast<const T*>(p.agent_v) + bh * n * D, n, n, D, LD, 1.f);
  load_rows(sQ, static_cast<const T*>(p.q) + (bh * N + r0) * D, kRowTile, valid, D, LD, p.scale);
  __syncthreads();
  for (int e = tid; e < kRowTile * n; e += blockDim.x) {
    const int r = e / n, j = e - r * n;
    float s = dot_smem(sQ + r * LD, sA + j * LD, D);
    if (bias && r < valid) s += to_f(bias[static_cast<int64_t>(r0 + r) * n + j]);
    sS[e] = s;
  }
  __syncthreads();
  for (int r = warp; r < kRowTile; r += kWarps) {  // softmax over n, one warp per row
    float* row = sS + r * n;
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, row[j]);
    m = warp_max(m);
    float sum = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float e = __expf(row[j] - m);
      row[j] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    const float inv = 1.f / sum;
    for (int j = lane; j < n; j += 32) row[j] *= inv;
    if (lane == 0 && r < valid) p.lse_query[bh * N + r0 + r] = m + logf(sum);
  }
  __syncthreads();
  T* O = static_cast<T*>(p.out) + (bh * N + r0) * D;
  for (int e = tid; e < valid * D; e += blockDim.x) {
    const int r = e / D, c = e - r * D;
    const float* pr = sS + r * n;
    float acc = 0.f;
    for (int j = 0; j < n; ++j) acc = fmaf(pr[j], sVA[j * LD + c], acc);
    O[e] = from_f<T>(acc);
  }
}

// ----------------------------------------------------------------------------------------- backward
// Workspace layout of the backward (fp32): dA2 partials, dV_A partials (each B*H*splits2*n*d), the dV_A
// total and the dA2 total (each B*H*n*d), the dA1 partials (B*H*splits1*n*d).
struct BwdWork {
  float *da2_part, *dva_part, *dva, *da2, *da1_part;
};
__host__ __device__ inline BwdWork bwd_work(const AgentAttnParams& p) {
  const int64_t nd = static_cast<int64_t>(p.B) * p.H * p.n * p.d;
  BwdWork w;
  w.da2_part = p.work;
  w.dva_part = w.da2_part + nd * p.splits2;
  w.dva = w.dva_part + nd * p.splits2;
  w.da2 = w.dva + nd;
  w.da1_part = w.da2 + nd;
  return w;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) stage2_bwd(const AgentAttnParams p) {
  extern __shared__ float smem[];
  const int n = p.n, D = p.d, LD = D + 1, N = p.N, S = p.splits2;
  const int sp = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float* sA = smem;                 // n x LD
  float* sVA = sA + n * LD;         // n x LD
  float* sdA = sVA + n * LD;        // n x LD
  float* sdVA = sdA + n * LD;       // n x LD
  float* sQ = sdVA + n * LD;        // kRowTile x LD
  float* sdO = sQ + kRowTile * LD;  // kRowTile x LD
  float* sP = sdO + kRowTile * LD;  // kRowTile x n
  float* sDS = sP + kRowTile * n;   // kRowTile x n
  float* sDi = sDS + kRowTile * n;  // kRowTile
  const int64_t boff = b * p.b2_sb + h * p.b2_sh;
  const T* bias = p.bias_query ? static_cast<const T*>(p.bias_query) + boff : nullptr;
  const T* Q = static_cast<const T*>(p.q) + bh * N * D;
  const T* O = static_cast<const T*>(p.out) + bh * N * D;
  const T* dO = static_cast<const T*>(p.grad_out) + bh * N * D;
  T* dQ = static_cast<T*>(p.dq) + bh * N * D;
  load_rows(sA, static_cast<const T*>(p.agents) + bh * n * D, n, n, D, LD, 1.f);
  load_rows(sVA, static_cast<const T*>(p.agent_v) + bh * n * D, n, n, D, LD, 1.f);
  for (int e = tid; e < n * D; e += blockDim.x) {
    sdA[(e / D) * LD + e % D] = 0.f;
    sdVA[(e / D) * LD + e % D] = 0.f;
  }
  const int row_begin = sp * p.tiles_per_split2 * kRowTile;
  const int row_end = min(N, row_begin + p.tiles_per_split2 * kRowTile);
  for (int r0 = row_begin; r0 < row_end; r0 += kRowTile) {
    const int valid = min(kRowTile, N - r0);
    __syncthreads();  // previous tile's readers are done
    load_rows(sQ, Q + static_cast<int64_t>(r0) * D, kRowTile, valid, D, LD, 1.f);
    load_rows(sdO, dO + static_cast<int64_t>(r0) * D, kRowTile, valid, D, LD, 1.f);
    for (int r = warp; r < kRowTile; r += kWarps) {  // Di = rowsum(dO * O)
      float acc = 0.f;
      if (r < valid)
        for (int c = lane; c < D; c += 32)
          acc += to_f(dO[static_cast<int64_t>(r0 + r) * D + c]) * to_f(O[static_cast<int64_t>(r0 + r) * D + c]);
      acc = warp_sum(acc);
      if (lane == 0) sDi[r] = acc;
    }
    __syncthreads();
    for (int e = tid; e < kRowTile * n; e += blockDim.x) {
      const int r = e / n, j = e - r * n;
      float pv = 0.f, ds = 0.f;
      if (r < valid) {
        const int64_t row = r0 + r;
        float s = p.scale * dot_smem(sQ + r * LD, sA + j * LD, D);
        if (bias) s += to_f(bias[row * n + j]);
        pv = __expf(s - p.lse_query[bh * N + row]);
        const float dp = dot_smem(sdO + r * LD, sVA + j * LD, D);
        ds = pv * (dp - sDi[r]);
        if (p.dbias_query) bias_grad<T>(p.dbias_query, p.db2_atomic, boff + row * n + j, ds);
      }
      sP[e] = pv;
      sDS[e] = ds;
    }
    __syncthreads();
    for (int e = tid; e < valid * D; e += blockDim.x) {  // dQ = s dS A
      const int r = e / D, c = e - r * D;
      const float* dsr = sDS + r * n;
      float acc = 0.f;
      for (int j = 0; j < n; ++j) acc = fmaf(dsr[j], sA[j * LD + c], acc);
      dQ[static_cast<int64_t>(r0) * D + e] = from_f<T>(acc * p.scale);
    }
    for (int e = tid; e < n * D; e += blockDim.x) {  // dA += s dS^T Q ; dV_A += P^T dO
      const int j = e / D, c = e - j * D;
      float da = 0.f, dva = 0.f;
      for (int r = 0; r < valid; ++r) {
        da = fmaf(sDS[r * n + j], sQ[r * LD + c], da);
        dva = fmaf(sP[r * n + j], sdO[r * LD + c], dva);
      }
      sdA[j * LD + c] += p.scale * da;
      sdVA[j * LD + c] += dva;
    }
  }
  __syncthreads();
  const BwdWork w = bwd_work(p);
  const int64_t off = (bh * S + sp) * n * D;
  for (int e = tid; e < n * D; e += blockDim.x) {
    w.da2_part[off + e] = sdA[(e / D) * LD + e % D];
    w.dva_part[off + e] = sdVA[(e / D) * LD + e % D];
  }
}

// dst[bh, e] = sum_s src[bh, s, e] over S splits (fixed order), e < len.
__global__ void __launch_bounds__(kThreads) sum_splits(const float* src, float* dst, int S, int64_t len) {
  const int64_t bh = blockIdx.y;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < len;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < S; ++s) acc += src[(bh * S + s) * len + e];
    dst[bh * len + e] = acc;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) stage1_bwd(const AgentAttnParams p) {
  extern __shared__ float smem[];
  const int n = p.n, D = p.d, LD = D + 1, M = p.M, S = p.splits1;
  const int sp = blockIdx.x;
  const int64_t bh = blockIdx.y;
  const int64_t b = bh / p.H, h = bh % p.H;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const BwdWork w = bwd_work(p);
  float* sA = smem;                 // n x LD
  float* sdVA = sA + n * LD;        // n x LD
  float* sdA = sdVA + n * LD;       // n x LD
  float* sK = sdA + n * LD;         // kKeyTile x LD
  float* sV = sK + kKeyTile * LD;   // kKeyTile x LD
  float* sP = sV + kKeyTile * LD;   // n x kKeyTile
  float* sDS = sP + n * kKeyTile;   // n x kKeyTile
  float* sD1 = sDS + n * kKeyTile;  // n
  float* sLse = sD1 + n;            // n
  const int64_t boff = b * p.b1_sb + h * p.b1_sh;
  const T* bias = p.bias_agent ? static_cast<const T*>(p.bias_agent) + boff : nullptr;
  const T* K = static_cast<const T*>(p.k) + bh * M * D;
  const T* V = static_cast<const T*>(p.v) + bh * M * D;
  const T* VA = static_cast<const T*>(p.agent_v) + bh * n * D;
  const float* dVA = w.dva + bh * n * D;
  T* dK = static_cast<T*>(p.dk) + bh * M * D;
  T* dV = static_cast<T*>(p.dv) + bh * M * D;
  load_rows(sA, static_cast<const T*>(p.agents) + bh * n * D, n, n, D, LD, 1.f);
  load_rows(sdVA, dVA, n, n, D, LD, 1.f);
  for (int e = tid; e < n * D; e += blockDim.x) sdA[(e / D) * LD + e % D] = 0.f;
  for (int i = warp; i < n; i += kWarps) {  // D1 = rowsum(dV_A * V_A)
    float acc = 0.f;
    for (int c = lane; c < D; c += 32)
      acc += dVA[static_cast<int64_t>(i) * D + c] * to_f(VA[static_cast<int64_t>(i) * D + c]);
    acc = warp_sum(acc);
    if (lane == 0) {
      sD1[i] = acc;
      sLse[i] = p.lse_agent[bh * n + i];
    }
  }
  const int key0 = sp * p.tiles_per_split1 * kKeyTile;
  const int key_end = min(M, key0 + p.tiles_per_split1 * kKeyTile);
  for (int j0 = key0; j0 < key_end; j0 += kKeyTile) {
    const int valid = min(kKeyTile, M - j0);
    __syncthreads();
    load_rows(sK, K + static_cast<int64_t>(j0) * D, kKeyTile, valid, D, LD, 1.f);
    load_rows(sV, V + static_cast<int64_t>(j0) * D, kKeyTile, valid, D, LD, 1.f);
    __syncthreads();
    for (int e = tid; e < n * kKeyTile; e += blockDim.x) {
      const int i = e / kKeyTile, j = e - i * kKeyTile;
      float pv = 0.f, ds = 0.f;
      if (j < valid) {
        const int64_t key = j0 + j;
        float s = p.scale * dot_smem(sA + i * LD, sK + j * LD, D);
        if (bias) s += to_f(bias[static_cast<int64_t>(i) * M + key]);
        pv = __expf(s - sLse[i]);
        const float dp = dot_smem(sdVA + i * LD, sV + j * LD, D);
        ds = pv * (dp - sD1[i]);
        if (p.dbias_agent) bias_grad<T>(p.dbias_agent, p.db1_atomic, boff + static_cast<int64_t>(i) * M + key, ds);
      }
      sP[e] = pv;
      sDS[e] = ds;
    }
    __syncthreads();
    for (int e = tid; e < valid * D; e += blockDim.x) {  // dV = P^T dV_A ; dK = s dS^T A
      const int j = e / D, c = e - j * D;
      float dv = 0.f, dk = 0.f;
      for (int i = 0; i < n; ++i) {
        dv = fmaf(sP[i * kKeyTile + j], sdVA[i * LD + c], dv);
        dk = fmaf(sDS[i * kKeyTile + j], sA[i * LD + c], dk);
      }
      dV[static_cast<int64_t>(j0) * D + e] = from_f<T>(dv);
      dK[static_cast<int64_t>(j0) * D + e] = from_f<T>(dk * p.scale);
    }
    for (int e = tid; e < n * D; e += blockDim.x) {  // dA += s dS K
      const int i = e / D, c = e - i * D;
      float acc = 0.f;
      for (int j = 0; j < valid; ++j) acc = fmaf(sDS[i * kKeyTile + j], sK[j * LD + c], acc);
      sdA[i * LD + c] += p.scale * acc;
    }
  }
  __syncthreads();
  float* part = w.da1_part + (bh * S + sp) * n * D;
  for (int e = tid; e < n * D; e += blockDim.x) part[e] = sdA[(e / D) * LD + e % D];
}

template <typename T>
__global__ void __launch_bounds__(kThreads) finish_dagents(const AgentAttnParams p) {
  const BwdWork w = bwd_work(p);
  const int S = p.splits1;
  const int64_t bh = blockIdx.y, len = static_cast<int64_t>(p.n) * p.d;
  T* dA = static_cast<T*>(p.dagents) + bh * len;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < len;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float acc = w.da2[bh * len + e];
    for (int s = 0; s < S; ++s) acc += w.da1_part[(bh * S + s) * len + e];
    dA[e] = from_f<T>(acc);
  }
}

// ------------------------------------------------------------------------------------------ host side
size_t smem_stage1_fwd(const AgentAttnParams& p) {
  const size_t LD = p.d + 1, n = p.n;
  return sizeof(float) * (2 * n * LD + 2 * kKeyTile * LD + n * kKeyTile + 3 * n);
}
size_t smem_stage2_fwd(const AgentAttnParams& p) {
  const size_t LD = p.d + 1, n = p.n;
  return sizeof(float) * (2 * n * LD + kRowTile * LD + kRowTile * n);
}
size_t smem_stage2_bwd(const AgentAttnParams& p) {
  const size_t LD = p.d + 1, n = p.n;
  return sizeof(float) * (4 * n * LD + 2 * kRowTile * LD + 2 * kRowTile * n + kRowTile);
}
size_t smem_stage1_bwd(const AgentAttnParams& p) {
  const size_t LD = p.d + 1, n = p.n;
  return sizeof(float) * (3 * n * LD + 2 * kKeyTile * LD + 2 * n * kKeyTile + 2 * n);
}

template <typename Kernel>
cudaError_t launch(Kernel kernel, dim3 grid, size_t smem, const AgentAttnParams& p, cudaStream_t stream) {
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  kernel<<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

#define AGENTATTN_TRY(expr)               \
  do {                                    \
    const cudaError_t err_ = (expr);      \
    if (err_ != cudaSuccess) return err_; \
  } while (0)

template <typename T>
cudaError_t forward_t(const AgentAttnParams& p, cudaStream_t stream) {
  const unsigned BH = static_cast<unsigned>(p.B) * p.H;
  AGENTATTN_TRY(launch(stage1_fwd_split<T>, dim3(p.splits1, BH), smem_stage1_fwd(p), p, stream));
  AGENTATTN_TRY(launch(stage1_fwd_reduce<T>, dim3(BH), 0, p, stream));
  const unsigned row_tiles = (p.N + kRowTile - 1) / kRowTile;
  AGENTATTN_TRY(launch(stage2_fwd<T>, dim3(row_tiles, BH), smem_stage2_fwd(p), p, stream));
  return cudaSuccess;
}

template <typename T>
cudaError_t backward_t(const AgentAttnParams& p, cudaStream_t stream) {
  const unsigned BH = static_cast<unsigned>(p.B) * p.H;
  const int64_t len = static_cast<int64_t>(p.n) * p.d;
  const unsigned xblocks = static_cast<unsigned>((len + kThreads - 1) / kThreads);
  const BwdWork w = bwd_work(p);
  AGENTATTN_TRY(launch(stage2_bwd<T>, dim3(p.splits2, BH), smem_stage2_bwd(p), p, stream));
  sum_splits<<<dim3(xblocks, BH), kThreads, 0, stream>>>(w.dva_part, w.dva, p.splits2, len);
  AGENTATTN_TRY(cudaGetLastError());
  sum_splits<<<dim3(xblocks, BH), kThreads, 0, stream>>>(w.da2_part, w.da2, p.splits2, len);
  AGENTATTN_TRY(cudaGetLastError());
  AGENTATTN_TRY(launch(stage1_bwd<T>, dim3(p.splits1, BH), smem_stage1_bwd(p), p, stream));
  finish_dagents<T><<<dim3(xblocks, BH), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

void plan_splits(AgentAttnParams& p, int num_sms) {
  const int64_t bh = static_cast<int64_t>(p.B) * p.H;
  const int64_t want = bh > 0 ? (2 * static_cast<int64_t>(num_sms) + bh - 1) / bh : 1;
  auto plan = [&](int rows, int tile, int& splits, int& per) {
    const int tiles = (rows + tile - 1) / tile;
    const int s = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(tiles, want)));
    per = (tiles + s - 1) / s;
    splits = (tiles + per - 1) / per;  // every split starts on a real tile
  };
  plan(p.M, kKeyTile, p.splits1, p.tiles_per_split1);
  plan(p.N, kRowTile, p.splits2, p.tiles_per_split2);
}

int64_t workspace_floats(const AgentAttnParams& p, bool backward) {
  const int64_t bh = static_cast<int64_t>(p.B) * p.H, nd = bh * p.n * p.d;
  if (!backward) return bh * p.splits1 * p.n * 2 + nd * p.splits1;
  return nd * (2 * p.splits2 + 2 + p.splits1);
}

size_t max_smem_bytes(const AgentAttnParams& p, bool backward) {
  return backward ? std::max(smem_stage2_bwd(p), smem_stage1_bwd(p)) : std::max(smem_stage1_fwd(p), smem_stage2_fwd(p));
}

cudaError_t launch_forward(const AgentAttnParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return forward_t<float>(p, stream);
    case DType::kFloat16: return forward_t<__half>(p, stream);
    case DType::kBFloat16: return forward_t<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_backward(const AgentAttnParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return backward_t<float>(p, stream);
    case DType::kFloat16: return backward_t<__half>(p, stream);
    case DType::kBFloat16: return backward_t<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace agentattn
