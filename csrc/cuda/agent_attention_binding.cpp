// Torch glue for the agent attention CUDA kernels: TORCH_LIBRARY_IMPL(agentattn, CUDA, m) for
// agent_attention_fwd / agent_attention_bwd (schemas in csrc/agentattn.cpp). Checks the inputs with
// readable messages, allocates outputs and the fp32 workspace, fills AgentAttnParams, and launches on
// the current stream of the inputs' device. Compiled only in CUDA builds (setup.py).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>
#include <torch/types.h>

#include <tuple>

#include "cuda/agent_attention.h"

namespace agentattn {
namespace {

using cuda::AgentAttnParams;

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "agent_attention CUDA kernel supports float32, float16 and bfloat16, got ", t,
                  "; use backend='reference' for float64");
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a) {
  TORCH_CHECK(q.dim() == 4, "q must be (B, H, N, d), got ", q.sizes());
  TORCH_CHECK(k.dim() == 4 && k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3) &&
                  k.size(2) >= 1 && v.sizes() == k.sizes(),
              "k and v must be (B, H, M, d) = (", q.size(0), ", ", q.size(1), ", M >= 1, ", q.size(3),
              ") with one M, got k ", k.sizes(), " v ", v.sizes());
  TORCH_CHECK(a.dim() == 4 && a.size(0) == q.size(0) && a.size(1) == q.size(1) && a.size(3) == q.size(3),
              "agents must be (B, H, n, d) = (", q.size(0), ", ", q.size(1), ", n, ", q.size(3), "), got ", a.sizes());
  TORCH_CHECK(a.size(2) >= 1, "agents must hold at least one agent (n >= 1)");
  for (const at::Tensor* t : {&q, &k, &v, &a}) {
    TORCH_CHECK(t->is_cuda(), "agent_attention CUDA kernel got a tensor on ", t->device());
    TORCH_CHECK(t->device() == q.device(), "all inputs must be on ", q.device(), ", got ", t->device());
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "all inputs must share q's dtype ", q.scalar_type(), ", got ",
                t->scalar_type());
  }
  TORCH_CHECK(q.size(2) < (int64_t{1} << 31) && k.size(2) < (int64_t{1} << 31) && q.size(0) * q.size(1) < 65536,
              "agent_attention CUDA kernel: N and M must be < 2^31 and B*H < 65536, got q ", q.sizes(), " k ",
              k.sizes());
}

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
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), name, " dtype ", t.scalar_type(), " != q dtype ", q.scalar_type());
  TORCH_CHECK(t.device() == q.device(), name, " is on ", t.device(), " but q is on ", q.device());
}

// Batch / head strides (elements) of a contiguous (Bb, Hb, r, c) bias: 0 where broadcast.
std::pair<int64_t, int64_t> bias_strides(const at::Tensor& t) {
  const int64_t rc = t.size(2) * t.size(3);
  return {t.size(0) == 1 ? 0 : t.size(1) * rc, t.size(1) == 1 ? 0 : rc};
}

AgentAttnParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& a,
                            const c10::optional<at::Tensor>& b1, const c10::optional<at::Tensor>& b2, double scale) {
  AgentAttnParams p;
  p.B = static_cast<int>(q.size(0));
  p.H = static_cast<int>(q.size(1));
  p.N = static_cast<int>(q.size(2));
  p.M = static_cast<int>(k.size(2));
  p.n = static_cast<int>(a.size(2));
  p.d = static_cast<int>(q.size(3));
  p.scale = static_cast<float>(scale);
  p.dtype = to_dtype(q.scalar_type());
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.agents = a.data_ptr();
  if (b1.has_value()) {
    p.bias_agent = b1->data_ptr();
    std::tie(p.b1_sb, p.b1_sh) = bias_strides(*b1);
  }
  if (b2.has_value()) {
    p.bias_query = b2->data_ptr();
    std::tie(p.b2_sb, p.b2_sh) = bias_strides(*b2);
  }
  int dev = q.get_device(), sms = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cuda::plan_splits(p, sms);
  const size_t need = std::max(cuda::max_smem_bytes(p, false), cuda::max_smem_bytes(p, true));
  TORCH_CHECK(need <= static_cast<size_t>(smem_optin), "agent_attention CUDA kernel needs ", need,
              " bytes of shared memory for n = ", p.n, ", d = ", p.d, " but the device allows ", smem_optin,
              "; use fewer agents, or backend='triton'");
  return p;
}

c10::optional<at::Tensor> contig(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return t->contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> agent_attention_fwd_cuda(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& a_in,
    const c10::optional<at::Tensor>& bias_agent, const c10::optional<at::Tensor>& bias_query, double scale) {
  check_inputs(q_in, k_in, v_in, a_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), a = a_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), n = a.size(2), d = q.size(3);
  check_bias(bias_agent, q, n, M, "bias_agent");
  check_bias(bias_query, q, N, n, "bias_query");
  auto b1 = contig(bias_agent), b2 = contig(bias_query);
  AgentAttnParams p = make_params(q, k, v, a, b1, b2, scale);
  auto out = at::empty_like(q);
  auto agent_v = at::empty({B, H, n, d}, q.options());
  auto f32 = q.options().dtype(at::kFloat);
  auto lse1 = at::empty({B, H, n}, f32), lse2 = at::empty({B, H, N}, f32);
  auto work = at::empty({cuda::workspace_floats(p, false)}, f32);
  p.out = out.data_ptr();
  p.agent_v = agent_v.data_ptr();
  p.lse_agent = lse1.data_ptr<float>();
  p.lse_query = lse2.data_ptr<float>();
  p.work = work.data_ptr<float>();
  C10_CUDA_CHECK(cuda::launch_forward(p, c10::cuda::getCurrentCUDAStream(q.get_device()).stream()));
  return {out, agent_v, lse1, lse2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> agent_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& a_in, const c10::optional<at::Tensor>& bias_agent, const c10::optional<at::Tensor>& bias_query,
    const at::Tensor& out, const at::Tensor& agent_v, const at::Tensor& lse_agent, const at::Tensor& lse_query,
    double scale) {
  check_inputs(q_in, k_in, v_in, a_in);
  const c10::cuda::CUDAGuard guard(q_in.device());
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous(), a = a_in.contiguous();
  const int64_t B = q.size(0), H = q.size(1), N = q.size(2), M = k.size(2), n = a.size(2);
  check_bias(bias_agent, q, n, M, "bias_agent");
  check_bias(bias_query, q, N, n, "bias_query");
  TORCH_CHECK(grad_out.sizes() == q.sizes() && out.sizes() == q.sizes(), "grad_out and out must be ", q.sizes());
  TORCH_CHECK(agent_v.sizes() == a.sizes(), "agent_v must be ", a.sizes(), ", got ", agent_v.sizes());
  TORCH_CHECK(lse_agent.numel() == B * H * n && lse_query.numel() == B * H * N,
              "lse_agent / lse_query must be (B, H, n) / (B, H, N)");
  for (const at::Tensor* t : {&grad_out, &out, &agent_v})
    TORCH_CHECK(t->scalar_type() == q.scalar_type() && t->device() == q.device(),
                "grad_out, out and agent_v must match q's dtype and device");
  auto b1 = contig(bias_agent), b2 = contig(bias_query);
  auto dout = grad_out.contiguous(), o = out.contiguous(), va = agent_v.contiguous();
  auto l1 = lse_agent.to(at::kFloat).contiguous(), l2 = lse_query.to(at::kFloat).contiguous();
  AgentAttnParams p = make_params(q, k, v, a, b1, b2, scale);
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v), da = at::empty_like(a);
  auto f32 = q.options().dtype(at::kFloat);
  // broadcast bias: fp32 atomics into a zeroed buffer; full bias: each element written once, in dtype
  auto bias_grad = [&](const c10::optional<at::Tensor>& b, bool& atomic) -> at::Tensor {
    if (!b.has_value()) return at::empty({0}, q.options());
    atomic = b->size(0) != B || b->size(1) != H;
    return atomic ? at::zeros(b->sizes(), f32) : at::empty_like(*b);
  };
  at::Tensor db1 = bias_grad(b1, p.db1_atomic), db2 = bias_grad(b2, p.db2_atomic);
  auto work = at::empty({cuda::workspace_floats(p, true)}, f32);
  p.out = o.data_ptr();
  p.agent_v = va.data_ptr();
  p.lse_agent = l1.data_ptr<float>();
  p.lse_query = l2.data_ptr<float>();
  p.grad_out = dout.data_ptr();
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  p.dagents = da.data_ptr();
  p.dbias_agent = b1.has_value() ? db1.data_ptr() : nullptr;
  p.dbias_query = b2.has_value() ? db2.data_ptr() : nullptr;
  p.work = work.data_ptr<float>();
  C10_CUDA_CHECK(cuda::launch_backward(p, c10::cuda::getCurrentCUDAStream(q.get_device()).stream()));
  if (p.db1_atomic) db1 = db1.to(q.scalar_type());
  if (p.db2_atomic) db2 = db2.to(q.scalar_type());
  return {dq, dk, dv, da, db1, db2};
}

}  // namespace

TORCH_LIBRARY_IMPL(agentattn, CUDA, m) {
  m.impl("agent_attention_fwd", &agent_attention_fwd_cuda);
  m.impl("agent_attention_bwd", &agent_attention_bwd_cuda);
}

}  // namespace agentattn
