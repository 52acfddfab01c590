// C entry points over the emulated CUDA launchers, called from the test through ctypes (fp32 only).
#include <vector>

#include "cuda/agent_attention.h"

using agentattn::cuda::AgentAttnParams;

static AgentAttnParams make(int B, int H, int N, int M, int n, int d, float scale, int num_sms, const float* q,
                            const float* k, const float* v, const float* a, const float* b1, long b1_sb,
                            long b1_sh, const float* b2, long b2_sb, long b2_sh) {
  AgentAttnParams p;
  p.B = B; p.H = H; p.N = N; p.M = M; p.n = n; p.d = d; p.scale = scale;
  p.q = q; p.k = k; p.v = v; p.agents = a;
  p.bias_agent = b1; p.b1_sb = b1_sb; p.b1_sh = b1_sh;
  p.bias_query = b2; p.b2_sb = b2_sb; p.b2_sh = b2_sh;
  agentattn::cuda::plan_splits(p, num_sms);
  return p;
}

extern "C" int emu_forward(int B, int H, int N, int M, int n, int d, float scale, int num_sms, const float* q,
                           const float* k, const float* v, const float* a, const float* b1, long b1_sb, long b1_sh,
                           const float* b2, long b2_sb, long b2_sh, float* out, float* agent_v, float* lse1,
                           float* lse2, int* splits) {
  AgentAttnParams p = make(B, H, N, M, n, d, scale, num_sms, q, k, v, a, b1, b1_sb, b1_sh, b2, b2_sb, b2_sh);
  std::vector<float> work(agentattn::cuda::workspace_floats(p, false), std::nanf(""));
  p.out = out; p.agent_v = agent_v; p.lse_agent = lse1; p.lse_query = lse2; p.work = work.data();
  splits[0] = p.splits1;
  splits[1] = p.splits2;
  return agentattn::cuda::launch_forward(p, nullptr);
}

extern "C" int emu_backward(int B, int H, int N, int M, int n, int d, float scale, int num_sms, const float* q,
                            const float* k, const float* v, const float* a, const float* b1, long b1_sb,
                            long b1_sh, const float* b2, long b2_sb, long b2_sh, const float* out,
                            const float* agent_v, const float* lse1, const float* lse2, const float* dout,
                            float* dq, float* dk, float* dv, float* da, float* db1, int db1_atomic, float* db2,
                            int db2_atomic) {
  AgentAttnParams p = make(B, H, N, M, n, d, scale, num_sms, q, k, v, a, b1, b1_sb, b1_sh, b2, b2_sb, b2_sh);
  std::vector<float> work(agentattn::cuda::workspace_floats(p, true), std::nanf(""));
  p.out = const_cast<float*>(out); p.agent_v = const_cast<float*>(agent_v);
  p.lse_agent = const_cast<float*>(lse1); p.lse_query = const_cast<float*>(lse2);
  p.grad_out = dout; p.dq = dq; p.dk = dk; p.dv = dv; p.dagents = da;
  p.dbias_agent = db1; p.db1_atomic = db1_atomic; p.dbias_query = db2; p.db2_atomic = db2_atomic;
  p.work = work.data();
  return agentattn::cuda::launch_backward(p, nullptr);
}
