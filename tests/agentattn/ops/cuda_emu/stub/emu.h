// Minimal CPU emulation of CUDA for testing csrc/cuda/agent_attention.cu without a GPU: every block runs
// as blockDim std::threads with a std::barrier for __syncthreads and a per-warp barrier for shuffles.
// Only what that file uses is emulated. fp16/bf16 are stand-ins (float storage) so the templates compile;
// the emulation tests the fp32 instantiation.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
typedef void* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

struct __half { float v; };
struct __nv_bfloat16 { float v; };
inline float __half2float(__half x) { return x.v; }
inline float __bfloat162float(__nv_bfloat16 x) { return x.v; }
inline __half __float2half_rn(float x) { return {x}; }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return {x}; }

inline float __expf(float x) { return std::exp(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }

struct EmuBlock {
  std::vector<float> smem;
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<float> slots;
  EmuBlock(size_t smem_floats, int threads) : smem(smem_floats + 1, std::nanf("")), bar(threads), slots(threads) {
    for (int w = 0; w < threads / 32; ++w) warp_bar.emplace_back(std::make_unique<std::barrier<>>(32));
  }
};
inline thread_local EmuBlock* emu_block = nullptr;
inline float* emu_smem() { return emu_block->smem.data(); }  // poisoned with NaN at block start
inline void __syncthreads() { emu_block->bar.arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float x, int o) {
  const int t = threadIdx.x, w = t / 32, lane = t % 32;
  auto& wb = *emu_block->warp_bar[w];
  emu_block->slots[t] = x;
  wb.arrive_and_wait();
  const float y = emu_block->slots[w * 32 + (lane ^ o)];
  wb.arrive_and_wait();
  return y;
}

template <typename F, typename... Args>
void emu_launch(F f, dim3 grid, int threads, size_t smem_bytes, cudaStream_t, Args... args) {
  for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      EmuBlock blk(smem_bytes / sizeof(float), threads);
      std::vector<std::thread> ts;
      for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
          threadIdx = dim3(t);
          blockIdx = dim3(bx, by);
          blockDim = dim3(threads);
          gridDim = grid;
          emu_block = &blk;
          f(args...);
        });
      for (auto& th : ts) th.join();
    }
}
