// The float32 agent-attention kernels for the generic level, compiled (baseline flags: SSE2 on x86-64);
// chosen at run time by the driver (agent_attention.cpp) from the CPU's features or AGENTATTN_CPU_ISA.

#define AGENTATTN_ISA_NS generic
#include "cpu/aa_kernels.h"
#include "cpu/simd.h"

namespace agentattn::cpu {
inline namespace generic {
namespace {
using S = SimdGeneric;   // full-width vectors
using Sh = SimdGeneric;  // a remaining 8-column piece
constexpr Isa kIsa = Isa::kGeneric;
constexpr int kBcastMR = 6;  // register-tile rows of the 2-vector tiles
constexpr int kWideMR = 3;   // register-tile rows of the 4-vector tiles
}  // namespace
}  // namespace generic
}  // namespace agentattn::cpu

#include "cpu/aa_kernels_impl.h"

namespace agentattn::cpu {
const Kernels& kernels_generic() { return generic::kTable; }
}  // namespace agentattn::cpu
