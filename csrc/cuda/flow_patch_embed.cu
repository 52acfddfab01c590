// Flow-patch embedding CUDA kernels, forward and backward, fp32 / fp16 / bf16 inputs, fp32 accumulation.
//
//   out[b, :, i, j] = W2 · patch(x)[b, i, j] + bias + pos[:, i, j]      (W2 = weight as (D, K), K = C·p·p)
//
// Tokens tok = b·L + l, l = i·gw + j. The patch matrix cols (B·L x K) is never stored: tiles are
// gathered from x on the fly. One tiled-GEMM kernel, three compile-time modes (64 x 64 output tile per
// block of 256 threads, 4 x 4 outputs per thread, reduction chunks of 16 staged in shared memory as fp32):
//   kFwd      rows = tokens, cols = D, reduce over K:      out = cols · W2ᵀ, epilogue + bias + pos, one store
//   kDx       rows = tokens, cols = K, reduce over D:      dcols = dY · W2, scattered straight into dx
//   kDweight  rows = D, cols = K, reduce over the tokens of one split: partial dW2 = dYᵀ · cols (fp32)
// plus sum_splits (fixed-order sum of the dweight partials: deterministic), dpos (sum over the batch,
// one thread per (channel, position)) and dbias (one block per channel, fixed-order tree reduction).
//
// Only cuda_runtime / cuda_fp16 / cuda_bf16: compiles with `nvcc -c` without ATen (scripts/check_cuda_compile.sh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "cuda/flow_patch_embed.h"

namespace agentattn {
namespace cuda_fpe {
namespace {

constexpr int kFwd = 0, kDx = 1, kDweight = 2;
constexpr int kPad = 4;  // shared-memory row padding (floats)

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

// Offset into x of patch column k of token tok.
__device__ __forceinline__ int64_t patch_off(const FlowPatchParams& p, int64_t tok, int k) {
  const int64_t b = tok / p.L;
  const int l = static_cast<int>(tok - b * p.L);
  const int i = l / p.gw, j = l - (l / p.gw) * p.gw;
  const int pp = p.p * p.p;
  const int c = k / pp, r = k - c * pp, pi = r / p.p, pj = r - (r / p.p) * p.p;
  return ((b * p.C + c) * p.H + static_cast<int64_t>(i) * p.p + pi) * p.W + static_cast<int64_t>(j) * p.p + pj;
}

// Offset into the output (or its gradient) of channel n of token tok.
__device__ __forceinline__ int64_t out_off(const FlowPatchParams& p, int64_t tok, int n) {
  if (p.flatten) return tok * p.D + n;
  const int64_t b = tok / p.L;
  const int64_t l = tok - b * p.L;
  return (b * p.D + n) * p.L + l;
}

// Problem size of a mode: rows, cols, full reduction length.
template <int MODE>
__device__ __forceinline__ void dims(const FlowPatchParams& p, int64_t& rows, int64_t& cols, int64_t& red) {
  const int64_t ntok = static_cast<int64_t>(p.B) * p.L;
  if (MODE == kFwd) {
    rows = ntok;
    cols = p.D;
    red = p.K;
  }
  if (MODE == kDx) {
    rows = ntok;
    cols = p.K;
    red = p.D;
  }
  if (MODE == kDweight) {
    rows = p.D;
    cols = p.K;
    red = ntok;
  }
}

// A(row, r) and B(r, col) of each mode, as fp32 (callers guarantee the indices are in range).
template <typename T, int MODE>
__device__ __forceinline__ float load_a(const FlowPatchParams& p, int64_t row, int64_t r) {
  if (MODE == kFwd) return to_f(static_cast<const T*>(p.x)[patch_off(p, row, static_cast<int>(r))]);
  if (MODE == kDx) return to_f(static_cast<const T*>(p.grad_out)[out_off(p, row, static_cast<int>(r))]);
  return to_f(static_cast<const T*>(p.grad_out)[out_off(p, r, static_cast<int>(row))]);
}
template <typename T, int MODE>
__device__ __forceinline__ float load_b(const FlowPatchParams& p, int64_t r, int64_t col) {
  if (MODE == kFwd) return to_f(static_cast<const T*>(p.weight)[col * p.K + r]);
  if (MODE == kDx) return to_f(static_cast<const T*>(p.weight)[r * p.K + col]);
  return to_f(static_cast<const T*>(p.x)[patch_off(p, r, static_cast<int>(col))]);
}

// grid (row tiles, col tiles x splits); block kThreads. Dynamic shared memory: smem_bytes().
template <typename T, int MODE>
__global__ void __launch_bounds__(kThreads) gemm_kernel(FlowPatchParams p) {
  extern __shared__ float smem[];
  float* As = smem;                             // [kTileR][kTileM + kPad]: As[r][m] = A(m0 + m, r0 + r)
  float* Bs = smem + kTileR * (kTileM + kPad);  // [kTileR][kTileN + kPad]: Bs[r][n] = B(r0 + r, n0 + n)
  int64_t rows, cols, red;
  dims<MODE>(p, rows, cols, red);
  const int col_tiles = static_cast<int>((cols + kTileN - 1) / kTileN);
  const int split = static_cast<int>(blockIdx.y) / col_tiles;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y % col_tiles) * kTileN;
  int64_t r_begin = 0, r_end = red;
  if (MODE == kDweight) {  // this split's token range
    r_begin = static_cast<int64_t>(split) * p.token_tiles_per_split * kTileM;
    r_end = r_begin + static_cast<int64_t>(p.token_tiles_per_split) * kTileM;
    if (r_end > red) r_end = red;
  }
  const int tid = threadIdx.x;
  const int tr = tid / 16, tc = tid % 16;  // this thread's 4 x 4 micro-tile: rows tr*4.., cols tc*4..
  float acc[4][4];
#pragma unroll
  for (int a = 0; a < 4; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b) acc[a][b] = 0.f;

  for (int64_t r0 = r_begin; r0 < r_end; r0 += kTileR) {
    for (int e = tid; e < kTileR * kTileM; e += kThreads) {
      const int rr = e / kTileM, m = e % kTileM;
      const int64_t row = m0 + m, r = r0 + rr;
      As[rr * (kTileM + kPad) + m] = (row < rows && r < r_end) ? load_a<T, MODE>(p, row, r) : 0.f;
    }
    for (int e = tid; e < kTileR * kTileN; e += kThreads) {
      const int rr = e / kTileN, n = e % kTileN;
      const int64_t col = n0 + n, r = r0 + rr;
      Bs[rr * (kTileN + kPad) + n] = (col < cols && r < r_end) ? load_b<T, MODE>(p, r, col) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < kTileR; ++rr) {
      float av[4], bv[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) av[a] = As[rr * (kTileM + kPad) + tr * 4 + a];
#pragma unroll
      for (int b = 0; b < 4; ++b) bv[b] = Bs[rr * (kTileN + kPad) + tc * 4 + b];
#pragma unroll
      for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) acc[a][b] = fmaf(av[a], bv[b], acc[a][b]);
    }
    __syncthreads();
  }

  // epilogue
#pragma unroll
  for (int a = 0; a < 4; ++a) {
    const int64_t row = m0 + tr * 4 + a;
    if (row >= rows) continue;
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const int64_t col = n0 + tc * 4 + b;
      if (col >= cols) continue;
      float v = acc[a][b];
      if (MODE == kFwd) {
        const int n = static_cast<int>(col);
        if (p.bias) v += to_f(static_cast<const T*>(p.bias)[n]);
        if (p.pos) v += to_f(static_cast<const T*>(p.pos)[static_cast<int64_t>(n) * p.L + row % p.L]);
        static_cast<T*>(p.out)[out_off(p, row, n)] = from_f<T>(v);
      } else if (MODE == kDx) {
        static_cast<T*>(p.dx)[patch_off(p, row, static_cast<int>(col))] = from_f<T>(v);
      } else {
        p.work[(static_cast<int64_t>(split) * p.D + row) * p.K + col] = v;
      }
    }
  }
}

// dweight[e] = sum over splits of work[s][e], in split order (deterministic).
template <typename T>
__global__ void sum_splits_kernel(FlowPatchParams p) {
  const int64_t n = static_cast<int64_t>(p.D) * p.K;
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= n) return;
  float s = 0.f;
  for (int sp = 0; sp < p.splits; ++sp) s += p.work[sp * n + e];
  static_cast<T*>(p.dweight)[e] = from_f<T>(s);
}

// dpos[n, l] = sum over b of dY(b·L + l, n); one thread per (n, l).
template <typename T>
__global__ void dpos_kernel(FlowPatchParams p) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= static_cast<int64_t>(p.D) * p.L) return;
  const int n = static_cast<int>(e / p.L);
  const int64_t l = e - static_cast<int64_t>(n) * p.L;
  const T* g = static_cast<const T*>(p.grad_out);
  float s = 0.f;
  for (int b = 0; b < p.B; ++b) s += to_f(g[out_off(p, static_cast<int64_t>(b) * p.L + l, n)]);
  static_cast<T*>(p.dpos)[e] = from_f<T>(s);
}

// dbias[n] = sum over all tokens of dY(tok, n); one block (kThreads) per channel n.
template <typename T>
__global__ void dbias_kernel(FlowPatchParams p) {
  extern __shared__ float smem[];
  const int n = blockIdx.x;
  const int64_t ntok = static_cast<int64_t>(p.B) * p.L;
  const T* g = static_cast<const T*>(p.grad_out);
  float s = 0.f;
  for (int64_t t = threadIdx.x; t < ntok; t += blockDim.x) s += to_f(g[out_off(p, t, n)]);
  smem[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) smem[threadIdx.x] += smem[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) static_cast<T*>(p.dbias)[n] = from_f<T>(smem[0]);
}

size_t gemm_smem_bytes() { return sizeof(float) * kTileR * (kTileM + kPad + kTileN + kPad); }

template <typename T, int MODE>
cudaError_t launch_gemm(const FlowPatchParams& p, int64_t rows, int64_t cols, int splits, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((rows + kTileM - 1) / kTileM),
                  static_cast<unsigned>(((cols + kTileN - 1) / kTileN) * splits));
  const size_t smem = gemm_smem_bytes();
  gemm_kernel<T, MODE><<<grid, kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

template <typename T>
cudaError_t forward_t(const FlowPatchParams& p, cudaStream_t stream) {
  return launch_gemm<T, kFwd>(p, num_tokens(p), p.D, 1, stream);
}

template <typename T>
cudaError_t backward_t(const FlowPatchParams& p, cudaStream_t stream) {
  const int64_t ntok = num_tokens(p);
  cudaError_t err = cudaSuccess;
  if (p.dx) {
    err = launch_gemm<T, kDx>(p, ntok, p.K, 1, stream);
    if (err != cudaSuccess) return err;
  }
  if (p.dweight) {
    err = launch_gemm<T, kDweight>(p, p.D, p.K, p.splits, stream);
    if (err != cudaSuccess) return err;
    const int64_t n = static_cast<int64_t>(p.D) * p.K;
    if (n > 0) {
      const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
      sum_splits_kernel<T><<<grid, kThreads, 0, stream>>>(p);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  if (p.dpos) {
    const int64_t n = static_cast<int64_t>(p.D) * p.L;
    if (n > 0) {
      const dim3 grid(static_cast<unsigned>((n + kThreads - 1) / kThreads));
      dpos_kernel<T><<<grid, kThreads, 0, stream>>>(p);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  if (p.dbias && p.D > 0) {
    const dim3 grid(static_cast<unsigned>(p.D));
    const size_t smem = sizeof(float) * kThreads;
    dbias_kernel<T><<<grid, kThreads, smem, stream>>>(p);
    err = cudaGetLastError();
  }
  return err;
}

}  // namespace

int64_t num_tokens(const FlowPatchParams& p) { return static_cast<int64_t>(p.B) * p.L; }

void plan_splits(FlowPatchParams& p, int num_sms) {
  const int64_t tiles = (num_tokens(p) + kTileM - 1) / kTileM;
  const int64_t blocks_nk = ((p.D + kTileN - 1) / kTileN) * ((p.K + kTileM - 1) / kTileM);
  int64_t want = std::max<int64_t>(
      1, (2 * static_cast<int64_t>(std::max(num_sms, 1)) + blocks_nk - 1) / std::max<int64_t>(blocks_nk, 1));
  want = std::min<int64_t>(want, std::max<int64_t>(tiles, 1));
  want = std::min<int64_t>(want, 65535 / std::max<int64_t>(1, (p.K + kTileN - 1) / kTileN));
  const int64_t per = tiles > 0 ? (tiles + want - 1) / want : 1;
  p.token_tiles_per_split = static_cast<int>(per);
  p.splits = tiles > 0 ? static_cast<int>((tiles + per - 1) / per) : 1;
}

int64_t workspace_floats(const FlowPatchParams& p) { return static_cast<int64_t>(p.splits) * p.D * p.K; }

cudaError_t launch_forward(const FlowPatchParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return forward_t<float>(p, stream);
    case DType::kFloat16: return forward_t<__half>(p, stream);
    case DType::kBFloat16: return forward_t<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_backward(const FlowPatchParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return backward_t<float>(p, stream);
    case DType::kFloat16: return backward_t<__half>(p, stream);
    case DType::kBFloat16: return backward_t<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda_fpe
}  // namespace agentattn
