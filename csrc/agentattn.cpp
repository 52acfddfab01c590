// agentattn._C: op schemas (TORCH_LIBRARY) and the Python module stub.
// Per-device implementations live in cpu/*.cpp (TORCH_LIBRARY_IMPL(agentattn, CPU, ...)) and, in CUDA
// builds, cuda/*_binding.cpp (TORCH_LIBRARY_IMPL(agentattn, CUDA, ...)).
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

extern "C" {
// `import agentattn._C` loads this shared object, which runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "agentattn compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace agentattn {

namespace cpu {  // cpu/agent_attention.cpp
std::string cpu_isa();
std::vector<std::string> cpu_isas(bool usable_only);
std::vector<std::string> cpu_set_options(const std::string& isa, const std::string& layout, const std::string& blas);
}  // namespace cpu

bool built_with_cuda() {
#ifdef AGENTATTN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

TORCH_LIBRARY(agentattn, m) {
  // Agent attention forward: returns (out (B,H,N,d), agent_v (B,H,n,d), lse_agent (B,H,n), lse_query (B,H,N)).
  // Inputs contiguous; bias_agent (Bb,Hb,n,N) and bias_query (Bb,Hb,N,n) contiguous with Bb in {1,B}, Hb in {1,H}.
  m.def(
      "agent_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor agents, Tensor? bias_agent, "
      "Tensor? bias_query, float scale) -> (Tensor, Tensor, Tensor, Tensor)");
  // Backward from the saved statistics: returns (dq, dk, dv, dagents, dbias_agent, dbias_query); a bias
  // gradient is an empty tensor when that bias is None. Bias gradients have the bias's (Bb,Hb,...) shape.
  m.def(
      "agent_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor agents, "
      "Tensor? bias_agent, Tensor? bias_query, Tensor out, Tensor agent_v, Tensor lse_agent, "
      "Tensor lse_query, float scale) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Flow-patch embedding: out = W·patch(x) + bias + pos, (B, D, H/p, W/p) or (B, N, D) when flatten.
  m.def(
      "flow_patch_embed_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? pos, int patch_size, bool flatten) -> "
      "Tensor");
  // Its backward: (dx, dweight, dbias, dpos); a gradient not asked for (need_* false, or bias/pos None) is empty.
  m.def(
      "flow_patch_embed_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? pos, int patch_size, bool "
      "flatten, bool need_dx, bool need_dweight) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("built_with_cuda() -> bool", &built_with_cuda);
  // The CPU kernels' instruction set: the one in use (AGENTATTN_CPU_ISA, read once, else the best the CPU
  // supports), and those compiled into this build (usable_only: and supported by this CPU), best first.
  m.def("cpu_isa() -> str", &cpu::cpu_isa);
  m.def("cpu_isas(bool usable_only=True) -> str[]", &cpu::cpu_isas);
  // For tests and benchmarks: switch the CPU kernel's ISA (avx512 | avx2 | generic | auto), forward layout
  // (token | agent | auto) and float32 BLAS-tile path (1 | 0 | auto) for the whole process; "" keeps a
  // switch. Returns the settings in force.
  m.def("_cpu_set_options(str isa='', str layout='', str blas_path='') -> str[]", &cpu::cpu_set_options);
}

}  // namespace agentattn
