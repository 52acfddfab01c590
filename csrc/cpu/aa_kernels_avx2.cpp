// The float32 agent-attention kernels for the avx2 level, compiled with -mavx2 -mfma;
// chosen at run time by the driver (agent_attention.cpp) from the CPU's features or AGENTATTN_CPU_ISA.
#if !defined(__AVX2__) || !defined(__FMA__)
#error "aa_kernels_avx2.cpp must be compiled with -mavx2 -mfma (setup.py does)"
#endif
#define AGENTATTN_ISA_NS avx2
#include "cpu/aa_kernels.h"
#include "cpu/simd.h"

namespace agentattn::cpu {
inline namespace avx2 {
namespace {
using S = Simd256;   // full-width vectors
using Sh = Simd256;  // a remaining 8-column piece
constexpr Isa kIsa = Isa::kAvx2;
constexpr int kBcastMR = 6;  // register-tile rows of the 2-vector tiles
constexpr int kWideMR = 3;   // register-tile rows of the 4-vector tiles
}  // namespace
}  // namespace avx2
}  // namespace agentattn::cpu

#include "cpu/aa_kernels_impl.h"

namespace agentattn::cpu {
const Kernels& kernels_avx2() { return avx2::kTable; }
}  // namespace agentattn::cpu
