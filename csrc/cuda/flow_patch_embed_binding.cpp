// Torch glue for the flow-patch embedding CUDA kernels: TORCH_LIBRARY_IMPL(agentattn, CUDA, m) for
// flow_patch_embed_fwd / flow_patch_embed_bwd (schemas in csrc/agentattn.cpp). Checks the inputs with
// readable messages, allocates outputs and the fp32 workspace, fills FlowPatchParams, and launches on the
// current stream of the inputs' device. Compiled only in CUDA builds (setup.py).
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>
#include <torch/types.h>

#include <limits>
#include <tuple>
#include <vector>

#include "cuda/flow_patch_embed.h"

namespace agentattn {
namespace {

using cuda_fpe::FlowPatchParams;

cuda_fpe::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda_fpe::DType::kFloat32;
    case at::kHalf: return cuda_fpe::DType::kFloat16;
    case at::kBFloat16: return cuda_fpe::DType::kBFloat16;
    default:
      TORCH_CHECK(false, "flow_patch_embed CUDA kernel supports float32, float16 and bfloat16, got ", t,
                  "; use backend='reference' for float64");
  }
}

void check(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
           const c10::optional<at::Tensor>& pos, int64_t p) {
  TORCH_CHECK(x.dim() == 4, "flow_patch_embed: x must be (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(p >= 1, "flow_patch_embed: patch_size must be >= 1, got ", p);
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(H % p == 0 && W % p == 0, "flow_patch_embed: x spatial size (", H, ", ", W,
              ") must be divisible by patch_size ", p);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == C && weight.size(2) == p && weight.size(3) == p,
              "flow_patch_embed: weight must be (D, C, p, p) = (D, ", C, ", ", p, ", ", p, "), got ", weight.sizes());
  const int64_t D = weight.size(0);
  if (bias.has_value())
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == D, "flow_patch_embed: bias must be (", D, "), got ",
                bias->sizes());
  if (pos.has_value())
    TORCH_CHECK(pos->dim() == 3 && pos->size(0) == D && pos->size(1) == H / p && pos->size(2) == W / p,
                "flow_patch_embed: pos must be (D, H/p, W/p) = (", D, ", ", H / p, ", ", W / p, "), got ",
                pos->sizes());
  std::vector<const at::Tensor*> ts{&x, &weight};
  if (bias.has_value()) ts.push_back(&*bias);
  if (pos.has_value()) ts.push_back(&*pos);
  for (const at::Tensor* t : ts) {
    TORCH_CHECK(t->is_cuda(), "flow_patch_embed CUDA kernel got a tensor on ", t->device());
    TORCH_CHECK(t->device() == x.device(), "flow_patch_embed: all inputs must be on ", x.device(), ", got ",
                t->device());
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), "flow_patch_embed: all inputs must share x's dtype ",
                x.scalar_type(), ", got ", t->scalar_type());
  }
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  TORCH_CHECK(x.size(0) * (H / p) * (W / p) < kMax && C * p * p < kMax && D < kMax && H < kMax && W < kMax,
              "flow_patch_embed CUDA kernel: sizes must fit in 32-bit ints, got x ", x.sizes());
}

FlowPatchParams make_params(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const c10::optional<at::Tensor>& pos, int64_t p, bool flatten) {
  FlowPatchParams q;
  q.B = static_cast<int>(x.size(0));
  q.C = static_cast<int>(x.size(1));
  q.H = static_cast<int>(x.size(2));
  q.W = static_cast<int>(x.size(3));
  q.p = static_cast<int>(p);
  q.D = static_cast<int>(weight.size(0));
  q.gw = q.W / q.p;
  q.L = (q.H / q.p) * q.gw;
  q.K = q.C * q.p * q.p;
  q.flatten = flatten;
  q.dtype = to_dtype(x.scalar_type());
  q.x = x.data_ptr();
  q.weight = weight.data_ptr();
  q.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  q.pos = pos.has_value() ? pos->data_ptr() : nullptr;
  return q;
}

c10::optional<at::Tensor> contig(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return t;
  return t->contiguous();
}

at::Tensor flow_patch_embed_fwd_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                     const c10::optional<at::Tensor>& bias_in, const c10::optional<at::Tensor>& pos_in,
                                     int64_t patch_size, bool flatten) {
  check(x_in, weight_in, bias_in, pos_in, patch_size);
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous(), w = weight_in.contiguous();
  auto bias = contig(bias_in), pos = contig(pos_in);
  FlowPatchParams q = make_params(x, w, bias, pos, patch_size, flatten);
  const int64_t gh = q.H / q.p;
  auto out = flatten ? at::empty({q.B, q.L, q.D}, x.options()) : at::empty({q.B, q.D, gh, q.gw}, x.options());
  if (out.numel() == 0) return out;
  q.out = out.data_ptr();
  C10_CUDA_CHECK(cuda_fpe::launch_forward(q, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> flow_patch_embed_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& x_in, const at::Tensor& weight_in,
    const c10::optional<at::Tensor>& bias_in, const c10::optional<at::Tensor>& pos_in, int64_t patch_size, bool flatten,
    bool need_dx, bool need_dweight) {
  check(x_in, weight_in, bias_in, pos_in, patch_size);
  const c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous(), w = weight_in.contiguous(), dout = grad_out.contiguous();
  auto bias = contig(bias_in), pos = contig(pos_in);
  FlowPatchParams q = make_params(x, w, bias, pos, patch_size, flatten);
  const int64_t gh = q.H / q.p;
  const std::vector<int64_t> oshape =
      flatten ? std::vector<int64_t>{q.B, q.L, q.D} : std::vector<int64_t>{q.B, q.D, gh, q.gw};
  TORCH_CHECK(
      dout.sizes() == at::IntArrayRef(oshape) && dout.scalar_type() == x.scalar_type() && dout.device() == x.device(),
      "flow_patch_embed: grad_out must be ", at::IntArrayRef(oshape), " in ", x.scalar_type(), " on ", x.device(),
      ", got ", dout.sizes(), " ", dout.scalar_type(), " on ", dout.device());
  auto opts = x.options();
  const bool empty_problem = q.B == 0 || q.L == 0 || q.D == 0;
  at::Tensor dx = need_dx ? (empty_problem ? at::zeros_like(x) : at::empty_like(x)) : at::empty({0}, opts);
  at::Tensor dw = need_dweight ? (empty_problem ? at::zeros_like(w) : at::empty_like(w)) : at::empty({0}, opts);
  at::Tensor db =
      bias.has_value() ? (empty_problem ? at::zeros({q.D}, opts) : at::empty({q.D}, opts)) : at::empty({0}, opts);
  at::Tensor dp = pos.has_value()
                      ? (empty_problem ? at::zeros({q.D, gh, q.gw}, opts) : at::empty({q.D, gh, q.gw}, opts))
                      : at::empty({0}, opts);
  if (empty_problem) return {dx, dw, db, dp};
  q.grad_out = dout.data_ptr();
  q.dx = need_dx ? dx.data_ptr() : nullptr;
  q.dweight = need_dweight ? dw.data_ptr() : nullptr;
  q.dbias = bias.has_value() ? db.data_ptr() : nullptr;
  q.dpos = pos.has_value() ? dp.data_ptr() : nullptr;
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, x.get_device()));
  cuda_fpe::plan_splits(q, sms);
  at::Tensor work;
  if (need_dweight) {
    work = at::empty({cuda_fpe::workspace_floats(q)}, opts.dtype(at::kFloat));
    q.work = work.data_ptr<float>();
  }
  C10_CUDA_CHECK(cuda_fpe::launch_backward(q, c10::cuda::getCurrentCUDAStream(x.get_device()).stream()));
  return {dx, dw, db, dp};
}

}  // namespace

TORCH_LIBRARY_IMPL(agentattn, CUDA, m) {
  m.impl("flow_patch_embed_fwd", &flow_patch_embed_fwd_cuda);
  m.impl("flow_patch_embed_bwd", &flow_patch_embed_bwd_cuda);
}

}  // namespace agentattn
