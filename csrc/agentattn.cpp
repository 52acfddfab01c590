// agentattn._C: op schemas (TORCH_LIBRARY) and the Python module stub.
// Per-device implementations live in cpu/*.cpp (TORCH_LIBRARY_IMPL(agentattn, CPU, ...)) and, in CUDA
// builds, cuda/*_binding.cpp (TORCH_LIBRARY_IMPL(agentattn, CUDA, ...)).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import agentattn._C` loads this shared object, which runs the static registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "agentattn compiled kernels", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace agentattn {

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
  m.def("flow_patch_embed_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? pos, int patch_size, bool flatten) -> Tensor");
  // Its backward: (dx, dweight, dbias, dpos); a gradient not asked for (need_* false, or bias/pos None) is empty.
  m.def("flow_patch_embed_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor? bias, Tensor? pos, int patch_size, bool flatten, bool need_dx, bool need_dweight) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("built_with_cuda() -> bool", &built_with_cuda);
}

}  // namespace agentattn
