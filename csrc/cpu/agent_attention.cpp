// Fused Agent Attention on CPU: the driver (op entry points, the plan, threading) and the BLAS-tile path.
//
// Per (batch, head), with scale s, agents A (n x d), keys/values K, V (M x d), queries Q (N x d):
//   stage 1: S1 = s A K^T + B1 (n x M) -> softmax over M -> P1;  V_A = P1 V (n x d)
//   stage 2: S2 = s Q A^T + B2 (N x n) -> softmax over n -> P2;  O = P2 V_A (N x d)
// (M != N for PVT's spatially reduced keys and cross-attention.)
//
// Every call first builds a Plan (aa_kernels.h): the path, the ISA of the tile kernels, the forward layout,
// how the keys and queries are cut into tasks, and the per-thread scratch; the kernels then run as tasks on
// the intra-op threads, one OpenMP region per call where possible.
//  - Path::kTiles (float32, d % 8 == 0): the register-tile kernels of aa_kernels_impl.h, compiled once per
//    ISA (aa_kernels_{generic,avx2,avx512}.cpp: 4, 8, 16 lanes) and chosen at run time from the CPU's
//    features, or AGENTATTN_CPU_ISA=generic|avx2|avx512 (read once). The forward has two score layouts
//    (token-major: agents in the lanes, when n is a multiple of the lanes; agent-major otherwise), the
//    backward is token-major. Their description is in aa_kernels_impl.h.
//  - Path::kBlas (float64; float32 with d % 8 != 0 or AGENTATTN_CPU_BLAS_PATH=1): BLAS (MKL's sgemm_/dgemm_
//    exported by libtorch_cpu, one thread per task) on tiles: stage 1 in key blocks of kKeys with the same
//    online softmax, stage 2 in transposed tiles ST = s A Q_blk^T (n x kRows), the softmax down the columns,
//    the stage-2 bias transposed per call. Plain loops for the element-wise passes (vec.h).
// Both split the keys of stage 1 into chunks on different threads, with a merge of the partial (max, sum,
// accumulator) triples (online_softmax.h), when there are fewer than 4 slices per thread.
//
// The forward keeps for backward only V_A and the log-sum-exp of every score row (n + N values per head);
// the backward recomputes the probabilities tile by tile from them, in the same layouts.
//
// This file is compiled for the baseline ISA (no AVX): everything that uses wider vectors is in the
// per-ISA translation units, reached through the Kernels table.
#include <ATen/Parallel.h>
#include <omp.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/aa_kernels.h"
#include "cpu/blas.h"
#include "cpu/online_softmax.h"
#include "cpu/vec.h"

namespace agentattn {
namespace cpu {

// =============================================================================== ISA and options
const char* isa_name(Isa isa) { return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "generic"; }

namespace {

constexpr Isa kAllIsas[] = {Isa::kAvx512, Isa::kAvx2, Isa::kGeneric};  // best first

bool isa_compiled(Isa isa) {
#if defined(AGENTATTN_X86_ISAS)
  (void)isa;
  return true;
#else
  return isa == Isa::kGeneric;
#endif
}

// What the CPU (and the OS, which must save the wider registers) supports.
bool cpu_has(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return isa == Isa::kGeneric;
#endif
}

bool isa_usable(Isa isa) { return isa_compiled(isa) && cpu_has(isa); }

Isa isa_best() {
  for (Isa isa : kAllIsas)
    if (isa_usable(isa)) return isa;
  return Isa::kGeneric;
}

Isa parse_isa(const std::string& s, const char* what) {
  for (Isa isa : kAllIsas)
    if (s == isa_name(isa)) {
      TORCH_CHECK(isa_usable(isa), what, "=", s, ": ",
                  isa_compiled(isa) ? "this CPU does not support it" : "not compiled into this build",
                  "; usable here: ", isa_name(isa_best()), " and below");
      return isa;
    }
  TORCH_CHECK(s == "auto" || s.empty(), what, " must be one of avx512, avx2, generic, auto; got '", s, "'");
  return isa_best();
}

// Switches, read once from the environment at first use; tests and benchmarks change them through the
// _cpu_set_options op. layout, bwd_layout: -1 by n, else a Layout; blas: force the BLAS-tile path for
// float32.
int parse_layout(const char* name) {
  const char* l = std::getenv(name);
  const int v = !l ? -1 : std::strcmp(l, "token") == 0 ? 0 : std::strcmp(l, "agent") == 0 ? 1 : -2;
  TORCH_CHECK(v != -2, name, " must be token or agent, got '", l, "'");
  return v;
}

struct Options {
  std::atomic<int> isa, layout, bwd_layout, blas;
  Options() {
    const char* e = std::getenv("AGENTATTN_CPU_ISA");
    isa = static_cast<int>(parse_isa(e ? e : "", "AGENTATTN_CPU_ISA"));
    layout = parse_layout("AGENTATTN_CPU_FWD_LAYOUT");
    bwd_layout = parse_layout("AGENTATTN_CPU_BWD_LAYOUT");
    const char* b = std::getenv("AGENTATTN_CPU_BLAS_PATH");
    blas = b != nullptr && std::strcmp(b, "0") != 0 && b[0] != '\0';
  }
};

Options& options() {
  static Options o;
  return o;
}

const Kernels& kernels_for(Isa isa) {
#if defined(AGENTATTN_X86_ISAS)
  if (isa == Isa::kAvx512) return kernels_avx512();
  if (isa == Isa::kAvx2) return kernels_avx2();
#endif
  (void)isa;
  return kernels_generic();
}

// ======================================================================================= threading
// Run f(task, thread) for task in [0, ntasks) on the intra-op threads, dynamically scheduled (the
// machine is shared: a static split waits for the slowest thread). `ordered`: task t always runs on
// thread t % threads, in increasing t, so per-thread sums (broadcast bias gradients) are bitwise
// reproducible from run to run at a fixed thread count, as PyTorch's own CPU reductions are.
template <typename F>
void parallel_tasks(int64_t ntasks, const F& f, bool ordered = false) {
  const int nt = static_cast<int>(std::min<int64_t>(at::get_num_threads(), ntasks));
  if (nt <= 1 || omp_in_parallel()) {
    for (int64_t t = 0; t < ntasks; ++t) f(t, 0);
    return;
  }
  if (ordered) {
#pragma omp parallel for schedule(static, 1) num_threads(nt)
    for (int64_t t = 0; t < ntasks; ++t) f(t, omp_get_thread_num());
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t t = 0; t < ntasks; ++t) f(t, omp_get_thread_num());
}

// One OpenMP region: pre(t) for t < npre (static split), a barrier, then main(t, thread) for t < nmain
// (dynamic). One fork/join instead of two: on a loaded machine every join waits for a descheduled thread.
// `ordered` as in parallel_tasks.
template <typename F1, typename F2>
void parallel_two_phase(int64_t npre, const F1& pre, int64_t nmain, const F2& main, bool ordered = false) {
  const int nt = static_cast<int>(std::min<int64_t>(at::get_num_threads(), std::max(npre, nmain)));
  if (nt <= 1 || omp_in_parallel()) {
    for (int64_t t = 0; t < npre; ++t) pre(t);
    for (int64_t t = 0; t < nmain; ++t) main(t, 0);
    return;
  }
#pragma omp parallel num_threads(nt)
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

// ========================================================================================== scratch
// A per-thread buffer that only grows (no allocation per call once warm), 64-byte aligned.
template <typename T>
T* thread_buffer(size_t count) {
  static thread_local std::vector<T> buf;
  const size_t pad = 64 / sizeof(T);
  if (buf.size() < count + pad) buf.resize(count + pad);
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<T*>((p + 63) / 64 * 64);
}

inline int64_t round64(int64_t floats) { return (floats + 15) / 16 * 16; }

// The named buffers of s, carved from this thread's buffer.
Scratch thread_scratch(const ScratchSizes& s) {
  const int64_t o1 = round64(s.s1), o2 = o1 + round64(s.s2), o3 = o2 + round64(s.packed), o4 = o3 + round64(s.agents),
                total = o4 + round64(s.stats);
  float* base = thread_buffer<float>(static_cast<size_t>(total));
  return Scratch{base, base + o1, base + o2, base + o3, base + o4};
}

// A call-wide buffer of the calling thread (the bias copies), kept between calls: no page faults on a
// fresh allocation per call.
float* call_buffer(int slot, size_t count) {
  static thread_local std::vector<float> buf[2];
  if (buf[slot].size() < count) buf[slot].resize(count);
  return buf[slot].data();
}

// ============================================================================================ plan
constexpr int64_t kRows = 128;     // BLAS path: stage-2 queries per tile
constexpr int64_t kKeys = 256;     // stage-1 keys per chunk unit (and BLAS path keys per tile)
constexpr int64_t kRowTask = 512;  // stage-2 queries per parallel task (chunked mode)

inline int64_t pad_to(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Keys per stage-1 task: all M unless there are fewer than ~4 tasks per thread.
int64_t stage1_chunk(int64_t BH, int64_t M, int64_t threads) {
  int64_t chunks = std::max<int64_t>(1, (4 * threads + BH - 1) / BH);
  chunks = std::min(chunks, (M + kKeys - 1) / kKeys);
  const int64_t len = (M + chunks - 1) / chunks;
  return ((len + kKeys - 1) / kKeys) * kKeys;
}

// Batches per task in the agent-major forward when the biases are shared over the batch: as many as
// possible (each bias tile is read once per task), while keeping at least 2 tasks per thread.
int64_t batch_group(int64_t B, int64_t H, int64_t threads) {
  int64_t g = B;
  while (g > 1 && H * ((B + g - 1) / g) < 2 * threads) g = (g + 1) / 2;
  return g;
}

bool tiles_path(bool fp32, int64_t d) { return fp32 && d % 8 == 0 && !options().blas.load(); }

// The parts of the plan common to both paths and passes.
Plan base_plan(bool fp32, int64_t B, int64_t H, int64_t M, int64_t N, int64_t n, int64_t d) {
  Plan p;
  p.threads = at::get_num_threads();
  p.path = tiles_path(fp32, d) ? Path::kTiles : Path::kBlas;
  p.isa = static_cast<Isa>(options().isa.load());
  p.lanes = p.path == Path::kTiles ? kernels_for(p.isa).lanes : 1;
  // token-major columns: whole vectors of up to 8 lanes (at 16 lanes the last one of a row may hold 8;
  // the kernels rely on every vector but the last lying within n)
  p.np = p.path == Path::kTiles ? pad_to(n, std::min(8, p.lanes)) : n;
  p.kc = stage1_chunk(B * H, M, p.threads);
  p.nkc = (M + p.kc - 1) / p.kc;
  p.row_task = kRowTask;
  p.nrc = (N + kRowTask - 1) / kRowTask;
  return p;
}

Plan forward_plan(bool fp32, int64_t B, int64_t H, int64_t M, int64_t N, int64_t n, int64_t d, bool shared_biases) {
  Plan p = base_plan(fp32, B, H, M, N, n, d);
  const int forced = options().layout.load();
  p.layout = forced >= 0 ? static_cast<Layout>(forced) : n % 8 == 0 ? Layout::kTokenMajor : Layout::kAgentMajor;
  if (p.path == Path::kTiles && p.layout == Layout::kAgentMajor && p.nkc == 1 && shared_biases)
    p.group = batch_group(B, H, p.threads);
  return p;
}

// The backward runs one (batch, head) per task, token-major unless AGENTATTN_CPU_BWD_LAYOUT /
// _cpu_set_options ask for agent-major.
Plan backward_plan(bool fp32, int64_t B, int64_t H, int64_t M, int64_t N, int64_t n, int64_t d) {
  Plan p = base_plan(fp32, B, H, M, N, n, d);
  const int forced = options().bwd_layout.load();
  p.layout = forced >= 0 ? static_cast<Layout>(forced) : Layout::kTokenMajor;
  return p;
}

// Where the (b, h) slice of a (Bb, Hb, rows, cols) tensor starts; Bb in {1, B}, Hb in {1, H}.
inline int64_t bias_offset(const at::Tensor& bias, int64_t b, int64_t h) {
  const int64_t bb = bias.size(0) == 1 ? 0 : b;
  const int64_t hh = bias.size(1) == 1 ? 0 : h;
  return (bb * bias.size(1) + hh) * bias.size(2) * bias.size(3);
}

BiasRef bias_ref(const at::Tensor* t) {
  BiasRef r;
  if (!t) return r;
  r.p = t->data_ptr<float>();
  r.Bb = t->size(0), r.Hb = t->size(1), r.per_slice = t->size(2) * t->size(3);
  return r;
}

// ================================================================================ float32 tile path
void forward_tiles(const Plan& plan, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                   const at::Tensor* b1, const at::Tensor* b2, float scale, at::Tensor& out, at::Tensor& agent_v,
                   at::Tensor& lse1, at::Tensor& lse2) {
  const Kernels& K = kernels_for(plan.isa);
  FwdParams P;
  P.B = q.size(0), P.H = q.size(1), P.N = q.size(2), P.M = k.size(2), P.n = a.size(2), P.d = q.size(3);
  P.scale = scale;
  P.q = q.data_ptr<float>(), P.k = k.data_ptr<float>(), P.v = v.data_ptr<float>(), P.a = a.data_ptr<float>();
  P.b1 = bias_ref(b1), P.b2 = bias_ref(b2);
  P.out = out.data_ptr<float>(), P.agent_v = agent_v.data_ptr<float>();
  P.lse1 = lse1.data_ptr<float>(), P.lse2 = lse2.data_ptr<float>();
  P.plan = plan;
  P.plan.scratch = K.fwd_scratch(P);
  // the bias the layout reads rearranged: token-major b1 -> (M x np), agent-major b2 -> (n x N)
  const bool token = plan.layout == Layout::kTokenMajor;
  const at::Tensor* copied = token ? b1 : b2;
  if (copied) {
    const int64_t tokens = token ? P.M : P.N, per_slice = tokens * (token ? plan.np : P.n);
    P.bias_copy = bias_ref(copied);
    P.bias_copy.per_slice = per_slice;
    P.copy_dst = call_buffer(0, static_cast<size_t>(P.bias_copy.Bb * P.bias_copy.Hb * per_slice));
    P.bias_copy.p = P.copy_dst;
    P.copy_chunks = (tokens + 63) / 64;
  }
  const int64_t ncopy = copied ? P.bias_copy.Bb * P.bias_copy.Hb * P.copy_chunks : 0;
  auto copy = [&](int64_t t) { K.fwd_bias_copy(P, t); };
  const int64_t BH = P.B * P.H;
  if (plan.nkc == 1) {
    // enough slices: one task per (group of batches, head) runs both stages, all in one parallel region
    const int64_t ntasks = P.H * ((P.B + plan.group - 1) / plan.group);
    parallel_two_phase(ncopy, copy, ntasks, [&](int64_t t, int) { K.fwd_group(P, t, thread_scratch(P.plan.scratch)); });
    return;
  }
  // few slices: key chunks for stage 1, merged, then query chunks for stage 2
  std::vector<float> parts(static_cast<size_t>(BH * plan.nkc * P.part_size()));
  P.parts = parts.data();
  parallel_two_phase(ncopy, copy, BH * plan.nkc,
                     [&](int64_t t, int) { K.fwd_stage1_chunk(P, t, thread_scratch(P.plan.scratch)); });
  const int64_t n = P.n, d = P.d, np = plan.np, nkc = plan.nkc, psz = P.part_size();
  parallel_tasks(BH, [&](int64_t bh, int) {
    for (int64_t j = 0; j < n; ++j) {
      auto part = [&](int64_t c) {
        const float* p = P.parts + (bh * nkc + c) * psz;
        return Partial<float>{p[j], p[np + j], p + 2 * np + j * d};
      };
      P.lse1[bh * n + j] = merge_partials<float>(nkc, part, d, P.agent_v + (bh * n + j) * d);
    }
  });
  parallel_tasks(BH * plan.nrc, [&](int64_t t, int) { K.fwd_stage2_rows(P, t, thread_scratch(P.plan.scratch)); });
}

// Bias-gradient accumulation target for task (b, h): the output itself when the bias is not broadcast
// (each (b, h) owns its slice), else a per-thread buffer summed at the end. `grad` has the layout the
// kernel accumulates in (tile path: the stage-1 bias transposed and padded, (Bb, Hb, M, np); BLAS path:
// the stage-2 bias transposed, (Bb, Hb, n, N)).
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
    if (!grad.defined()) return nullptr;
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

void backward_tiles(const Plan& plan, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& a, const at::Tensor* b1, const at::Tensor* b2,
                    const at::Tensor& out, const at::Tensor& agent_v, const at::Tensor& lse1, const at::Tensor& lse2,
                    float scale, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv, at::Tensor& da, BiasGrad<float>& g1T,
                    BiasGrad<float>& g2) {
  const Kernels& K = kernels_for(plan.isa);
  BwdParams P;
  P.B = q.size(0), P.H = q.size(1), P.N = q.size(2), P.M = k.size(2), P.n = a.size(2), P.d = q.size(3);
  P.scale = scale;
  P.dout = dout.data_ptr<float>(), P.q = q.data_ptr<float>(), P.k = k.data_ptr<float>();
  P.v = v.data_ptr<float>(), P.a = a.data_ptr<float>(), P.out = out.data_ptr<float>();
  P.agent_v = agent_v.data_ptr<float>(), P.lse1 = lse1.data_ptr<float>(), P.lse2 = lse2.data_ptr<float>();
  P.b1 = bias_ref(b1), P.b2 = bias_ref(b2);
  P.dq = dq.data_ptr<float>(), P.dk = dk.data_ptr<float>(), P.dv = dv.data_ptr<float>(), P.da = da.data_ptr<float>();
  P.plan = plan;
  P.plan.scratch = K.bwd_scratch(P);
  // the bias the layout reads rearranged: token-major b1 -> (M x np), agent-major b2 -> (n x N)
  const bool token = plan.layout == Layout::kTokenMajor;
  const at::Tensor* copied = token ? b1 : b2;
  if (copied) {
    const int64_t tokens = token ? P.M : P.N, per_slice = tokens * (token ? plan.np : P.n);
    P.bias_copy = bias_ref(copied);
    P.bias_copy.per_slice = per_slice;
    P.copy_dst = call_buffer(1, static_cast<size_t>(P.bias_copy.Bb * P.bias_copy.Hb * per_slice));
    P.bias_copy.p = P.copy_dst;
    P.copy_chunks = (tokens + 63) / 64;
  }
  const int64_t ncopy = copied ? P.bias_copy.Bb * P.bias_copy.Hb * P.copy_chunks : 0;
  parallel_two_phase(
      ncopy, [&](int64_t t) { K.bwd_bias_copy(P, t); }, P.B * P.H,
      [&](int64_t bh, int thread) {
        const int64_t b = bh / P.H, h = bh % P.H;
        K.bwd_slice(P, bh, g1T.target(b, h, thread), g2.target(b, h, thread), thread_scratch(P.plan.scratch));
      },
      g1T.broadcast || g2.broadcast);  // ordered: reproducible broadcast bias-gradient sums
}

// ====================================================================================== BLAS path
// Stage 1 over keys [k0, k1) of one slice: unnormalised online softmax. On return m[j] is the row max,
// l[j] the sum of exp(score - m[j]) and acc (n x d) = sum exp(score - m[j]) V.
template <typename T>
void stage1_partial(const T* Ap, const T* Kp, const T* Vp, const T* B1p, int64_t M, int64_t n, int64_t d, T scale,
                    int64_t k0, int64_t k1, T* m, T* l, T* acc, T* S) {
  for (int64_t j = 0; j < n; ++j) m[j] = neg_inf<T>(), l[j] = 0;
  std::fill(acc, acc + n * d, T(0));
  for (int64_t c0 = k0; c0 < k1; c0 += kKeys) {
    const int64_t C = std::min(kKeys, k1 - c0);
    blas::gemm_rm<T>(false, true, n, C, d, scale, Ap, d, Kp + c0 * d, d, T(0), S, C);
    for (int64_t j = 0; j < n; ++j) {
      T* row = S + j * C;
      const T mb = vec::add_bias_max(row, B1p ? B1p + j * M + c0 : nullptr, C);
      const T mnew = std::max(m[j], mb);
      const T sum = vec::exp_sub_sum(row, C, mnew);
      online_commit(m[j], l[j], mnew, sum, [&](T alpha) { vec::scale_inplace(acc + j * d, d, alpha); });
    }
    blas::gemm_rm<T>(false, false, n, d, C, T(1), S, C, Vp + c0 * d, d, T(1), acc, d);
  }
}

// Stage 2 over queries [r0, r1) of one slice: O rows and their log-sum-exp.
template <typename T>
void stage2_rows(const T* Qp, const T* Ap, const T* VAp, const T* B2Tp, int64_t N, int64_t n, int64_t d, T scale,
                 int64_t r0, int64_t r1, T* Op, T* L2p, T* ST, T* mv) {
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
void forward_blas(const Plan& plan, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                  const at::Tensor* b1, const at::Tensor* b2, T scale, at::Tensor& out, at::Tensor& agent_v,
                  at::Tensor& lse1, at::Tensor& lse2) {
  const int64_t H = q.size(1), N = q.size(2), M = k.size(2), n = a.size(2), d = q.size(3), BH = q.size(0) * H;
  const T *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(), *A = a.data_ptr<T>();
  const T* B1 = b1 ? b1->data_ptr<T>() : nullptr;
  at::Tensor b2t;  // stage-2 bias as (Bb, Hb, n, N)
  if (b2) b2t = b2->transpose(2, 3).contiguous();
  const T* B2T = b2 ? b2t.template data_ptr<T>() : nullptr;
  T *O = out.data_ptr<T>(), *VA = agent_v.data_ptr<T>(), *L1 = lse1.data_ptr<T>(), *L2 = lse2.data_ptr<T>();
  // per-thread scratch: the stage-1 score tile and state, or the stage-2 tile and its row statistics
  const size_t s1_size = static_cast<size_t>(n * kKeys + 2 * n), s2_size = static_cast<size_t>(n * kRows + 2 * kRows);

  // ---- stage 1: V_A and lse1, in key chunks
  const int64_t kc = plan.kc, nkc = plan.nkc;
  const int64_t part_sz = n * d + 2 * n;
  std::vector<T> parts(nkc > 1 ? static_cast<size_t>(BH * nkc * part_sz) : 0);
  parallel_tasks(BH * nkc, [&](int64_t t, int) {
    const int64_t bh = t / nkc, c = t % nkc, b = bh / H, h = bh % H;
    const T* B1p = B1 ? B1 + bias_offset(*b1, b, h) : nullptr;
    const int64_t k0 = c * kc, k1 = std::min(M, k0 + kc);
    T* S = thread_buffer<T>(s1_size);
    if (nkc == 1) {
      T *m = S + n * kKeys, *l = m + n, *acc = VA + bh * n * d;
      stage1_partial(A + bh * n * d, K + bh * M * d, V + bh * M * d, B1p, M, n, d, scale, k0, k1, m, l, acc, S);
      for (int64_t j = 0; j < n; ++j) L1[bh * n + j] = finish_row(m[j], l[j], acc + j * d, d);
    } else {
      T* p = parts.data() + t * part_sz;
      stage1_partial(A + bh * n * d, K + bh * M * d, V + bh * M * d, B1p, M, n, d, scale, k0, k1, p, p + n, p + 2 * n,
                     S);
    }
  });
  if (nkc > 1) {
    parallel_tasks(BH, [&](int64_t bh, int) {
      for (int64_t j = 0; j < n; ++j) {
        auto part = [&](int64_t c) {
          const T* p = parts.data() + (bh * nkc + c) * part_sz;
          return Partial<T>{p[j], p[n + j], p + 2 * n + j * d};
        };
        L1[bh * n + j] = merge_partials<T>(nkc, part, d, VA + (bh * n + j) * d);
      }
    });
  }

  // ---- stage 2: O and lse2, in row chunks
  const int64_t nrc = plan.nrc;
  parallel_tasks(BH * nrc, [&](int64_t t, int) {
    const int64_t bh = t / nrc, c = t % nrc, b = bh / H, h = bh % H;
    const T* B2Tp = B2T ? B2T + bias_offset(b2t, b, h) : nullptr;
    const int64_t r0 = c * plan.row_task, r1 = std::min(N, r0 + plan.row_task);
    T* ST = thread_buffer<T>(s2_size);
    stage2_rows(Q + bh * N * d, A + bh * n * d, VA + bh * n * d, B2Tp, N, n, d, scale, r0, r1, O + bh * N * d,
                L2 + bh * N, ST, ST + n * kRows);
  });
}

template <typename T>
void backward_blas(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& a, const at::Tensor* b1, const at::Tensor* b2, const at::Tensor& out,
                   const at::Tensor& agent_v, const at::Tensor& lse1, const at::Tensor& lse2, T scale, at::Tensor& dq,
                   at::Tensor& dk, at::Tensor& dv, at::Tensor& da, BiasGrad<T>& g1, BiasGrad<T>& g2) {
  const int64_t H = q.size(1), N = q.size(2), M = k.size(2), n = a.size(2), d = q.size(3), BH = q.size(0) * H;
  const T *dO = dout.data_ptr<T>(), *Q = q.data_ptr<T>(), *K = k.data_ptr<T>(), *V = v.data_ptr<T>(),
          *A = a.data_ptr<T>(), *O = out.data_ptr<T>(), *VA = agent_v.data_ptr<T>(), *L1 = lse1.data_ptr<T>(),
          *L2 = lse2.data_ptr<T>();
  const T* B1 = b1 ? b1->data_ptr<T>() : nullptr;
  at::Tensor b2t;
  if (b2) b2t = b2->transpose(2, 3).contiguous();
  const T* B2T = b2 ? b2t.template data_ptr<T>() : nullptr;
  T *dQ = dq.data_ptr<T>(), *dK = dk.data_ptr<T>(), *dV = dv.data_ptr<T>(), *dA = da.data_ptr<T>();
  const int64_t tile = std::max(kRows, kKeys);

  parallel_tasks(
      BH,
      [&](int64_t bh, int thread) {
        const int64_t b = bh / H, h = bh % H;
        const T *Qp = Q + bh * N * d, *Kp = K + bh * M * d, *Vp = V + bh * M * d, *Ap = A + bh * n * d;
        const T *dOp = dO + bh * N * d, *Op = O + bh * N * d, *VAp = VA + bh * n * d;
        T *dQp = dQ + bh * N * d, *dKp = dK + bh * M * d, *dVp = dV + bh * M * d, *dAp = dA + bh * n * d;
        // named per-thread buffers: probabilities P, their gradient dP, dV_A, the row dot products
        T* P = thread_buffer<T>(static_cast<size_t>(2 * n * tile + n * d + std::max(kRows, n)));
        T *dP = P + n * tile, *dva = dP + n * tile, *rowdot = dva + n * d;
        std::fill(dva, dva + n * d, T(0));
        std::fill(dAp, dAp + n * d, T(0));
        // ---- stage 2 backward, transposed tiles PT = P2^T (n x R)
        const T* B2Tp = B2T ? B2T + bias_offset(b2t, b, h) : nullptr;
        T* G2Tp = g2.target(b, h, thread);
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
        T* G1p = g1.target(b, h, thread);
        for (int64_t c0 = 0; c0 < M; c0 += kKeys) {
          const int64_t C = std::min(kKeys, M - c0);
          blas::gemm_rm<T>(false, true, n, C, d, scale, Ap, d, Kp + c0 * d, d, T(0), P, C);
          for (int64_t j = 0; j < n; ++j)
            vec::exp_bias_sub(P + j * C, B1p ? B1p + j * M + c0 : nullptr, C, L1[bh * n + j]);
          // dV = P1^T dV_A ; dP1 = dV_A V^T
          blas::gemm_rm<T>(true, false, C, d, n, T(1), P, C, dva, d, T(0), dVp + c0 * d, d);
          blas::gemm_rm<T>(false, true, n, C, d, T(1), dva, d, Vp + c0 * d, d, T(0), dP, C);
          for (int64_t j = 0; j < n; ++j)
            vec::dsoftmax_row(dP + j * C, P + j * C, C, rowdot[j], G1p ? G1p + j * M + c0 : nullptr);
          // dA += s dS1 K ; dK = s dS1^T A
          blas::gemm_rm<T>(false, false, n, d, C, scale, dP, C, Kp + c0 * d, d, T(1), dAp, d);
          blas::gemm_rm<T>(true, false, C, d, n, scale, dP, C, Ap, d, T(0), dKp + c0 * d, d);
        }
      },
      g1.broadcast || g2.broadcast);  // ordered: reproducible broadcast bias-gradient sums
}

// ======================================================================================= op entry
void check_bias(const c10::optional<at::Tensor>& bias, const at::Tensor& q, int64_t rows, int64_t cols,
                const char* name) {
  if (!bias.has_value()) return;
  const auto& t = *bias;
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D (Bb, Hb, ", rows, ", ", cols, "), got ", t.sizes());
  TORCH_CHECK(t.size(0) == 1 || t.size(0) == q.size(0), name, ": batch dim must be 1 or ", q.size(0), ", got ",
              t.sizes());
  TORCH_CHECK(t.size(1) == 1 || t.size(1) == q.size(1), name, ": head dim must be 1 or ", q.size(1), ", got ",
              t.sizes());
  TORCH_CHECK(t.size(2) == rows && t.size(3) == cols, name, " must end in (", rows, ", ", cols, "), got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " dtype ", t.scalar_type(), " != q dtype ", q.scalar_type());
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a) {
  TORCH_CHECK(q.dim() == 4, "q must be (B, H, N, d), got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) &&
                  v.sizes() == k.sizes(),
              "k and v must be (B, H, M, d) = (", q.size(0), ", ", q.size(1), ", M, ", q.size(3),
              ") with one M, got k ", k.sizes(), " v ", v.sizes());
  TORCH_CHECK(a.dim() == 4 && a.size(0) == q.size(0) && a.size(1) == q.size(1) && a.size(3) == q.size(3),
              "agents must be (B, H, n, d) = (", q.size(0), ", ", q.size(1), ", n, ", q.size(3), "), got ", a.sizes());
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
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), n = agents.size(2), d = q.size(3);
  check_bias(bias_agent, q, n, M, "bias_agent");
  check_bias(bias_query, q, N, n, "bias_query");
  auto out = at::empty_like(q);
  auto agent_v = at::empty({B, H, n, d}, q.options());
  auto lse1 = at::empty({B, H, n}, q.options());
  auto lse2 = at::empty({B, H, N}, q.options());
  const at::Tensor* b1 = bias_agent.has_value() ? &*bias_agent : nullptr;
  const at::Tensor* b2 = bias_query.has_value() ? &*bias_query : nullptr;
  if (M == 0 || B * H == 0) {  // no keys: the agents attend to nothing (V_A = 0, lse = -inf)
    agent_v.zero_();
    lse1.fill_(-std::numeric_limits<double>::infinity());
    return {out, agent_v, lse1, lse2};
  }
  const bool fp32 = q.scalar_type() == at::kFloat;
  const bool shared = (!b1 || b1->size(0) == 1) && (!b2 || b2->size(0) == 1);
  const Plan plan = forward_plan(fp32, B, H, M, N, n, d, shared);
  if (plan.path == Path::kTiles) {
    forward_tiles(plan, q, k, v, agents, b1, b2, static_cast<float>(scale), out, agent_v, lse1, lse2);
  } else {
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "agent_attention_fwd_cpu", [&] {
      forward_blas<scalar_t>(plan, q, k, v, agents, b1, b2, static_cast<scalar_t>(scale), out, agent_v, lse1, lse2);
    });
  }
  return {out, agent_v, lse1, lse2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> agent_attention_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& agents,
    const c10::optional<at::Tensor>& bias_agent, const c10::optional<at::Tensor>& bias_query, const at::Tensor& out,
    const at::Tensor& agent_v, const at::Tensor& lse_agent, const at::Tensor& lse_query, double scale) {
  check_inputs(q, k, v, agents);
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), n = agents.size(2), d = q.size(3);
  check_bias(bias_agent, q, n, M, "bias_agent");
  check_bias(bias_query, q, N, n, "bias_query");
  auto dout = grad_out.contiguous();
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v), da = at::empty_like(agents);
  const at::Tensor* b1 = bias_agent.has_value() ? &*bias_agent : nullptr;
  const at::Tensor* b2 = bias_query.has_value() ? &*bias_query : nullptr;
  at::Tensor db1 = at::empty({0}, q.options()), db2 = at::empty({0}, q.options());
  if (M == 0 || B * H == 0) {  // nothing flows back: zero agent and bias gradients
    da.zero_();
    if (b1) db1 = at::zeros_like(*b1);
    if (b2) db2 = at::zeros_like(*b2);
    return {dq, dk, dv, da, db1, db2};
  }
  const Plan plan = backward_plan(q.scalar_type() == at::kFloat, B, H, M, N, n, d);
  const at::Tensor oc = out.contiguous(), vac = agent_v.contiguous(), l1c = lse_agent.contiguous(),
                   l2c = lse_query.contiguous();
  if (plan.path == Path::kTiles) {
    // token-major: stage-1 gradient transposed and padded (M x np), stage-2 as the bias (N x n);
    // agent-major: stage-1 as the bias (n x M), stage-2 transposed (n x N)
    const bool token = plan.layout == Layout::kTokenMajor;
    BiasGrad<float> g1, g2;
    g1.init(b1, B, H, token, token ? plan.np : 0);
    g2.init(b2, B, H, !token);
    backward_tiles(plan, dout, q, k, v, agents, b1, b2, oc, vac, l1c, l2c, static_cast<float>(scale), dq, dk, dv, da,
                   g1, g2);
    g1.finish();
    g2.finish();
    if (b1) db1 = token ? g1.grad.narrow(3, 0, n).transpose(2, 3).contiguous() : g1.grad;
    if (b2) db2 = token ? g2.grad : g2.grad.transpose(2, 3).contiguous();
    return {dq, dk, dv, da, db1, db2};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "agent_attention_bwd_cpu", [&] {
    // stage-1 gradient as the bias (n x M), stage-2 transposed (n x N)
    BiasGrad<scalar_t> g1, g2;
    g1.init(b1, B, H, false);
    g2.init(b2, B, H, true);
    backward_blas<scalar_t>(dout, q, k, v, agents, b1, b2, oc, vac, l1c, l2c, static_cast<scalar_t>(scale), dq, dk, dv,
                            da, g1, g2);
    g1.finish();
    g2.finish();
    if (b1) db1 = g1.grad;
    if (b2) db2 = g2.grad.transpose(2, 3).contiguous();
  });
  return {dq, dk, dv, da, db1, db2};
}

}  // namespace

// ================================================================ ISA / option queries (agentattn.cpp)
std::string cpu_isa() { return isa_name(static_cast<Isa>(options().isa.load())); }

std::vector<std::string> cpu_isas(bool usable_only) {
  std::vector<std::string> out;
  for (Isa isa : kAllIsas)
    if (usable_only ? isa_usable(isa) : isa_compiled(isa)) out.emplace_back(isa_name(isa));
  return out;
}

// Test and benchmark hook: "" leaves a switch as it is, "auto" restores the default. Returns the
// settings in force, e.g. {"isa=avx2", "layout=auto", "blas_path=0"}.
std::vector<std::string> cpu_set_options(const std::string& isa, const std::string& layout, const std::string& blas) {
  Options& o = options();
  if (!isa.empty()) o.isa = static_cast<int>(parse_isa(isa, "isa"));
  if (!layout.empty()) {  // "fwd" or "fwd,bwd"
    const size_t comma = layout.find(',');
    const std::string f = layout.substr(0, comma), b = comma == std::string::npos ? f : layout.substr(comma + 1);
    for (const std::string& x : {f, b})
      TORCH_CHECK(x == "auto" || x == "token" || x == "agent", "layout must be token, agent or auto (or two of them, ",
                  "forward,backward), got '", layout, "'");
    o.layout = f == "auto" ? -1 : f == "token" ? 0 : 1;
    o.bwd_layout = b == "auto" ? -1 : b == "token" ? 0 : 1;
  }
  if (!blas.empty()) {
    TORCH_CHECK(blas == "0" || blas == "1" || blas == "auto", "blas_path must be 0, 1 or auto, got '", blas, "'");
    o.blas = blas == "1";
  }
  auto name = [](int l) { return l < 0 ? "auto" : l == 0 ? "token" : "agent"; };
  return {std::string("isa=") + isa_name(static_cast<Isa>(o.isa.load())),
          std::string("layout=") + name(o.layout.load()) + "," + name(o.bwd_layout.load()),
          std::string("blas_path=") + (o.blas.load() ? "1" : "0")};
}

}  // namespace cpu

TORCH_LIBRARY_IMPL(agentattn, CPU, m) {
  m.impl("agent_attention_fwd", &cpu::agent_attention_fwd_cpu);
  m.impl("agent_attention_bwd", &cpu::agent_attention_bwd_cpu);
}

}  // namespace agentattn
