// Agent attention CUDA kernels: the parameter struct and the launchers (raw pointers, no ATen).
// The torch glue (checks, allocation, device guard, current stream) is agent_attention_binding.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace agentattn {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One (B, H) problem. Tensors are contiguous: q, out (B, H, N, d); k, v (B, H, M, d) (M = N for
// self-attention); agents, agent_v (B, H, n, d); lse_agent (B, H, n) and lse_query (B, H, N) in fp32.
// Biases are contiguous (Bb, Hb, rows, cols) with Bb in {1, B}, Hb in {1, H}; b*_sb / b*_sh are their
// batch / head strides in elements (0 = broadcast).
struct AgentAttnParams {
  int B = 0, H = 0, N = 0, M = 0, n = 0, d = 0;
  float scale = 1.f;
  DType dtype = DType::kFloat32;

  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* agents = nullptr;
  const void* bias_agent = nullptr;  // (Bb, Hb, n, M) or nullptr
  const void* bias_query = nullptr;  // (Bb, Hb, N, n) or nullptr
  int64_t b1_sb = 0, b1_sh = 0, b2_sb = 0, b2_sh = 0;

  // forward results (written by launch_forward, read by launch_backward)
  void* out = nullptr;
  void* agent_v = nullptr;
  float* lse_agent = nullptr;
  float* lse_query = nullptr;

  // backward
  const void* grad_out = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
  void* dagents = nullptr;
  // Bias gradients, (Bb, Hb, ...) like the bias. When db*_atomic is set the pointer is a zero-filled
  // fp32 buffer reduced with atomicAdd (broadcast bias); otherwise it has the input dtype and each
  // element is written exactly once (deterministic).
  void* dbias_agent = nullptr;
  void* dbias_query = nullptr;
  bool db1_atomic = false, db2_atomic = false;

  // Split of the M keys (stage 1) and N queries (stage-2 backward) across thread blocks (set by
  // plan_splits) and the fp32 workspace (workspace_floats() elements).
  int splits1 = 1, tiles_per_split1 = 1;  // stage 1: key tiles of kKeyTile
  int splits2 = 1, tiles_per_split2 = 1;  // stage-2 backward: query tiles of kRowTile
  float* work = nullptr;
};

constexpr int kKeyTile = 32;  // keys per stage-1 tile (one warp lane per key)
constexpr int kRowTile = 32;  // query rows per stage-2 tile
constexpr int kThreads = 128;

// Choose splits so that about two blocks per SM run even when B*H is small (flash-decoding style).
void plan_splits(AgentAttnParams& p, int num_sms);
// fp32 workspace elements needed by the forward (backward=false) or the backward (backward=true).
int64_t workspace_floats(const AgentAttnParams& p, bool backward);
// Largest dynamic shared memory any kernel of this pass needs, in bytes (checked against the device).
size_t max_smem_bytes(const AgentAttnParams& p, bool backward);

cudaError_t launch_forward(const AgentAttnParams& p, cudaStream_t stream);
cudaError_t launch_backward(const AgentAttnParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace agentattn
