// The interface between the agent-attention driver (agent_attention.cpp, compiled for the baseline ISA)
// and the float32 tile kernels compiled once per instruction-set level (aa_kernels_{generic,avx2,avx512}.cpp):
// the plan of one call, the parameter structs, the per-thread scratch, and the table of kernel entry points.
//
// Plain data only: no torch, no std containers, so that the per-ISA translation units include nothing that
// the linker could merge with a baseline copy (the check is tests/agentattn/ops/test_cpu_isa_objects.py).
#pragma once
#include <cstdint>

namespace agentattn::cpu {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
enum class Path : int { kTiles = 0, kBlas = 1 };               // SIMD register tiles / BLAS tiles (fp64, d % 8)
enum class Layout : int { kTokenMajor = 0, kAgentMajor = 1 };  // forward score layout (kernel header)

// A bias (Bb, Hb, rows, cols), Bb in {1, B}, Hb in {1, H}, contiguous (or a rearranged copy of one with
// per_slice floats per (b, h)); null when absent.
struct BiasRef {
  const float* p = nullptr;
  int64_t Bb = 1, Hb = 1, per_slice = 0;
  const float* slice(int64_t b, int64_t h) const {
    return p ? p + ((Bb == 1 ? 0 : b) * Hb + (Hb == 1 ? 0 : h)) * per_slice : nullptr;
  }
};

// Per-thread scratch, floats per named buffer (sizes from the kernel table for a given plan).
struct ScratchSizes {
  int64_t s1 = 0, s2 = 0, packed = 0, agents = 0, stats = 0;
};
// Pointers into one 64-byte aligned per-thread buffer, in that order.
struct Scratch {
  float* s1 = nullptr;      // stage-1 score tile (backward: the score tile S)
  float* s2 = nullptr;      // stage-2 score tile (backward: the gradient tile dP)
  float* packed = nullptr;  // a K or Q tile packed transposed (agent-major forward)
  float* agents = nullptr;  // the agents, scaled and/or packed (per slice, or per group of slices)
  float* stats = nullptr;   // running max / sum / rescale factors, per-row statistics
};

// What is decided once per call, before any work: which kernels, which layout, how the work is cut.
struct Plan {
  Isa isa = Isa::kGeneric;
  Path path = Path::kTiles;
  Layout layout = Layout::kAgentMajor;
  int lanes = 4;         // vector lanes of the ISA's kernels
  int64_t np = 0;        // n rounded up to min(8, lanes) (token-major score columns, statistics)
  int64_t kc = 0;        // stage-1 keys per task (all M unless there are few slices)
  int64_t nkc = 1;       // key chunks per slice; > 1: partial (m, l, acc) merged by the driver
  int64_t row_task = 0;  // stage-2 queries per task in the chunked mode
  int64_t nrc = 1;       // stage-2 tasks per slice in the chunked mode
  int64_t group = 1;     // batches per task (agent-major, biases shared over the batch)
  int64_t threads = 1;
  ScratchSizes scratch;  // per thread
};

// One forward call. N queries, M keys and values (equal today; kept apart for cross-attention).
struct FwdParams {
  int64_t B = 0, H = 0, N = 0, M = 0, n = 0, d = 0;
  float scale = 1.0f;
  const float *q = nullptr, *k = nullptr, *v = nullptr, *a = nullptr;  // (B,H,N,d) (B,H,M,d) x2 (B,H,n,d)
  BiasRef b1, b2;                                                      // bias_agent (.., n, M), bias_query (.., N, n)
  float *out = nullptr, *agent_v = nullptr, *lse1 = nullptr, *lse2 = nullptr;
  // the rearranged bias copy (token-major: b1 as (.., M, np); agent-major: b2 as (.., n, N)), filled by
  // fwd_bias_copy tasks before the main tasks
  BiasRef bias_copy;
  float* copy_dst = nullptr;
  int64_t copy_chunks = 0;  // 64-token pieces per bias slice
  float* parts = nullptr;   // nkc > 1: per (slice, chunk) [m (np), l (np), acc (n x d)]
  Plan plan;
  int64_t part_size() const { return n * d + 2 * plan.np; }
};

// One backward call (the forward's statistics in).
struct BwdParams {
  int64_t B = 0, H = 0, N = 0, M = 0, n = 0, d = 0;
  float scale = 1.0f;
  const float *dout = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *a = nullptr;
  const float *out = nullptr, *agent_v = nullptr, *lse1 = nullptr, *lse2 = nullptr;
  BiasRef b1, b2;
  BiasRef bias_copy;  // b1 as (.., M, np)
  float* copy_dst = nullptr;
  int64_t copy_chunks = 0;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr, *da = nullptr;
  Plan plan;
};

// The float32 kernels of one ISA. Tasks are independent; the driver runs them on its threads.
struct Kernels {
  Isa isa;
  int lanes;
  ScratchSizes (*fwd_scratch)(const FwdParams&);
  ScratchSizes (*bwd_scratch)(const BwdParams&);
  void (*fwd_bias_copy)(const FwdParams&, int64_t task);
  // nkc == 1: both stages for the batches [b0, b0 + group) of one head; task = (b0 / group) * H + h
  void (*fwd_group)(const FwdParams&, int64_t task, const Scratch&);
  // nkc > 1: stage 1 over one key chunk (task = bh * nkc + chunk) into parts; stage 2 over one row chunk
  void (*fwd_stage1_chunk)(const FwdParams&, int64_t task, const Scratch&);
  void (*fwd_stage2_rows)(const FwdParams&, int64_t task, const Scratch&);
  void (*bwd_bias_copy)(const BwdParams&, int64_t task);
  // one (b, h); g1T: stage-1 bias gradient target (M x np, transposed), g2: stage-2 (N x n); null if no bias
  void (*bwd_slice)(const BwdParams&, int64_t bh, float* g1T, float* g2, const Scratch&);
};

const Kernels& kernels_generic();
#if defined(AGENTATTN_X86_ISAS)
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();
#endif

}  // namespace agentattn::cpu
