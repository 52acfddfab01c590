// Flow-patch embedding CUDA kernels: the parameter struct and the launchers (raw pointers, no ATen).
// The torch glue (checks, allocation, device guard, current stream) is flow_patch_embed_binding.cpp.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace agentattn {
namespace cuda_fpe {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// x (B, C, H, W) contiguous; weight (D, C, p, p) = W2 (D, K), K = C·p·p; bias (D) / pos (D, gh, gw) or
// nullptr; output (B, D, gh, gw), or (B, L, D) with flatten (L = gh·gw). All tensors in `dtype`.
struct FlowPatchParams {
  int B = 0, C = 0, H = 0, W = 0, p = 1, D = 0;
  int gw = 0, L = 0, K = 0;
  bool flatten = false;
  DType dtype = DType::kFloat32;

  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;
  const void* pos = nullptr;
  void* out = nullptr;

  // backward: any output pointer may be nullptr (that gradient is not computed)
  const void* grad_out = nullptr;
  void* dx = nullptr;
  void* dweight = nullptr;
  void* dbias = nullptr;
  void* dpos = nullptr;

  // dweight: the token range split across thread blocks (set by plan_splits); fp32 partials in `work`
  int splits = 1, token_tiles_per_split = 1;
  float* work = nullptr;
};

constexpr int kTileM = 64;     // output rows per block
constexpr int kTileN = 64;     // output columns per block
constexpr int kTileR = 16;     // reduction chunk staged in shared memory
constexpr int kThreads = 256;  // 16 x 16 threads, a 4 x 4 micro-tile each

int64_t num_tokens(const FlowPatchParams& p);
// Choose the dweight split of the token range so that about two blocks per SM run.
void plan_splits(FlowPatchParams& p, int num_sms);
// fp32 workspace elements the backward needs (the dweight partials).
int64_t workspace_floats(const FlowPatchParams& p);

cudaError_t launch_forward(const FlowPatchParams& p, cudaStream_t stream);
cudaError_t launch_backward(const FlowPatchParams& p, cudaStream_t stream);

}  // namespace cuda_fpe
}  // namespace agentattn
