// The float32 agent-attention kernels for the avx512 level, compiled with -mavx512f -mavx512dq -mavx512bw -mavx512vl
// -mavx2 -mfma; chosen at run time by the driver (agent_attention.cpp) from the CPU's features or AGENTATTN_CPU_ISA.
#if !defined(__AVX512F__) || !defined(__AVX512VL__)
#error "aa_kernels_avx512.cpp must be compiled with the AVX-512 flags of setup.py"
#endif
#define AGENTATTN_ISA_NS avx512
#include "cpu/aa_kernels.h"
#include "cpu/simd.h"

namespace agentattn::cpu {
inline namespace avx512 {
namespace {
using S = Simd512;   // full-width vectors
using Sh = Simd256;  // a remaining 8-column piece
constexpr Isa kIsa = Isa::kAvx512;
constexpr int kBcastMR = 6;  // register-tile rows of the 2-vector tiles (12 measured no faster, 8 slower)
constexpr int kWideMR = 6;   // register-tile rows of the 4-vector tiles
}  // namespace
}  // namespace avx512
}  // namespace agentattn::cpu

#include "cpu/aa_kernels_impl.h"

namespace agentattn::cpu {
const Kernels& kernels_avx512() { return avx512::kTable; }
}  // namespace agentattn::cpu
