"""Agent attention as a registered PyTorch op: input checks, bias preparation, backend dispatch, and the
Python side of the ``torch.library`` registration (fake tensors, autograd, FLOP formula).

The schema and the CPU (and CUDA) kernels come from C++ (``csrc/``): ``agentattn::agent_attention_fwd``
returns ``(out, agent_v, lse_agent, lse_query)`` and ``agentattn::agent_attention_bwd`` recomputes the
probabilities from those statistics. Without the compiled extension, every call runs the reference
composition in ``naive.py`` (one warning per process).
"""

from __future__ import annotations

import torch

from agentattn import _ext
from agentattn.ops.agent_attention.naive import agent_attention_ref

Tensor = torch.Tensor

BACKENDS = _ext.BACKEND_CHOICES
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------- checks
def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


def check_inputs(q: Tensor, k: Tensor, v: Tensor, agents: Tensor) -> None:
    """Raise a ``ValueError`` naming the argument, the expected and the actual shape/dtype/device.

    q (B, H, N, d); k and v (B, H, M, d) with one M (M = N for self-attention); agents (B, H, n, d)."""
    for name, t, rows in (("q", q, "N"), ("k", k, "M"), ("v", v, "M"), ("agents", agents, "n")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, {rows}, d), got shape {_shape(t)}")
    B, H, N, d = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != d:
        raise ValueError(f"k must be (B, H, M, d) = ({B}, {H}, M, {d}) like q {_shape(q)}, got {_shape(k)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape (B, H, M, d) = {_shape(k)}, got {_shape(v)}")
    if agents.shape[0] != B or agents.shape[1] != H or agents.shape[3] != d:
        raise ValueError(f"agents must be (B, H, n, d) = ({B}, {H}, n, {d}), got {_shape(agents)}")
    if agents.shape[2] == 0:
        raise ValueError("agents must hold at least one agent token (n >= 1), got n = 0")
    if d == 0:
        raise ValueError(
            f"q, k, v and agents need a head dim d >= 1, got d = 0 (q {_shape(q)}); check the "
            "head split (dim // num_heads)"
        )
    for name, t in (("k", k), ("v", v), ("agents", agents)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from q dtype {q.dtype}; cast them to one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; move them to one device")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"q must be a floating-point tensor (fp16, bf16, fp32, fp64), got {q.dtype}")


def prepare_bias(bias: Tensor | None, target: tuple, name: str, q: Tensor) -> Tensor | None:
    """Bias broadcastable to ``target`` = (B, H, rows, cols) -> contiguous (Bb, Hb, rows, cols) with
    Bb in {1, B}, Hb in {1, H}: the batch and head dims are never materialised when they are 1. The
    expansion of the last two dims (if any) is differentiable, so autograd sums the gradient back."""
    if bias is None:
        return None
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(bias).__name__}")
    if bias.dim() > 4:
        raise ValueError(f"{name} must be broadcastable to {target}, got {bias.dim()}-D shape {_shape(bias)}")
    shape = (1,) * (4 - bias.dim()) + _shape(bias)
    for have, want in zip(shape, target, strict=True):
        if have not in (1, want):
            raise ValueError(f"{name} must be broadcastable to (B, H, rows, cols) = {target}, got {_shape(bias)}")
    if bias.device != q.device:
        raise ValueError(f"{name} is on {bias.device} but q is on {q.device}")
    if not bias.dtype.is_floating_point:
        raise ValueError(f"{name} must be floating point, got {bias.dtype}")
    bias = bias.reshape(shape).to(q.dtype)
    return bias.expand(shape[0], shape[1], target[2], target[3]).contiguous()


# ------------------------------------------------------------------------------------------- dispatch
def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without importing ``torch._dynamo`` at import time (that
    import costs seconds): the public function only sets this attribute, which Dynamo reads when it traces
    a call (tests/agentattn/ops/test_agent_attention_cpu.py checks both)."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _available(device_type: str) -> tuple:
    """The backends this installation offers for ``device_type`` (default first); queries no GPU.

    Marked constant for ``torch.compile``: the extension's and Triton's presence do not change within a
    process, and evaluating them at trace time keeps ``fullgraph=True`` graphs unbroken (the op that says
    whether CUDA kernels were built returns a bool, which Dynamo cannot put in a graph)."""
    if device_type not in ("cpu", "cuda"):
        return ("reference",)
    return tuple(_ext.device_backends(device_type))


def resolve_backend(device: torch.device, backend: str | None) -> str:
    """The backend a call on ``device`` uses: the argument, else ``AGENTATTN_BACKEND`` (CPU) /
    ``AGENTATTN_CUDA_BACKEND`` (CUDA), else the fastest available."""
    return _ext.choose_backend("agent_attention", device.type, backend, _available(device.type))


def _cpu_cpp(q: Tensor, k: Tensor, v: Tensor, agents: Tensor, b1: Tensor | None, b2: Tensor | None, s: float) -> Tensor:
    """The C++ CPU kernel (any M; fp16/bf16 computed in float32). A NaN or infinity in any input reaches
    the outputs and gradients as in the reference composition: the kernel's exponentials and logarithms
    keep NaN (tests/agentattn/ops/test_agent_attention_nan.py), so no check runs here and traced graphs
    (torch.compile / export / jit.trace) behave as eager calls do."""
    low = q.dtype in (torch.float16, torch.bfloat16)  # the CPU kernel computes in fp32/fp64
    args = [(t.float() if low else t).contiguous() for t in (q, k, v, agents)]
    bs = [None if t is None else (t.float() if low else t) for t in (b1, b2)]
    out = torch.ops.agentattn.agent_attention_fwd(*args, bs[0], bs[1], s)[0]
    return out.to(q.dtype) if low else out


def agent_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    agents: Tensor,
    bias_agent: Tensor | None = None,
    bias_query: Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
    scale_query: float | None = None,
) -> Tensor:
    """Agent attention ``softmax(s2 Q Aᵀ + B2) · softmax(s A Kᵀ + B1) · V``.

    Args:
        q: (B, H, N, d) queries. k, v: (B, H, M, d) keys and values (M = N for self-attention; M != N for
            PVT's spatially reduced keys or cross-attention). agents: (B, H, n, d).
        bias_agent: stage-1 bias broadcastable to (B, H, n, M) (e.g. (1, H, n, M)), or None.
        bias_query: stage-2 bias broadcastable to (B, H, N, n), or None.
        scale: score scale s, default d ** -0.5.
        backend: 'auto' (default), 'cpp', 'cuda', 'triton' or 'reference'.
            Under ``torch.func.vmap`` 'auto' runs the reference composition (PyTorch's own batching
            rules; the compiled ops have none).
        scale_query: stage-2 scale s2, default ``scale`` (AgentSD uses s ** k_scale2).
    Returns:
        (B, H, N, d), differentiable w.r.t. every tensor argument. NaN/inf inputs give the reference
        composition's NaN/inf pattern on every backend.
    """
    check_inputs(q, k, v, agents)
    B, H, N, d = q.shape
    M, n = k.shape[2], agents.shape[2]
    s = float(d) ** -0.5 if scale is None else float(scale)
    s2 = s if scale_query is None else float(scale_query)
    b1 = prepare_bias(bias_agent, (B, H, n, M), "bias_agent", q)
    b2 = prepare_bias(bias_query, (B, H, N, n), "bias_query", q)
    be = resolve_backend(q.device, backend)
    if be == "cuda" and q.dtype == torch.float64:
        be = "reference"  # the CUDA kernels take fp16/bf16/fp32; float64 runs the reference composition
    if backend is None and _ext.under_vmap(q, k, v, agents, b1, b2):
        be = "reference"  # under torch.func.vmap (e.g. mer's folds trained together): PyTorch's batching rules
    if N == 0 or M == 0:
        be = "reference"  # no tokens: nothing to compute; the compiled kernels assume N, M >= 1
    if s2 != s and be != "reference":
        if s == 0.0:
            be = "reference"  # the kernels take one scale; s2 / s below needs s != 0
        else:
            q = q * (s2 / s)  # the kernels' one scale s on q * (s2 / s) gives stage 2 its scale s2
    if be == "reference":
        return agent_attention_ref(q, k, v, agents, b1, b2, s, scale_query=s2)
    if be == "triton":
        from agentattn.ops.agent_attention import triton as tri

        return tri.agent_attention_triton(q, k, v, agents, b1, b2, s)
    if q.device.type == "cpu":
        return _cpu_cpp(q, k, v, agents, b1, b2, s)
    out = torch.ops.agentattn.agent_attention_fwd(*[t.contiguous() for t in (q, k, v, agents)], b1, b2, s)[0]
    return out


# ------------------------------------------------------------------------------ torch.library (Python)
def _register() -> None:
    """Fake, autograd and FLOP formula for the C++ ops (only when the extension is loaded)."""
    if not _ext.has_ext():
        return
    from torch.utils.flop_counter import register_flop_formula

    fwd = "agentattn::agent_attention_fwd"
    bwd = "agentattn::agent_attention_bwd"

    def stat_dtype(q):
        return torch.float64 if q.dtype == torch.float64 else torch.float32

    @torch.library.register_fake(fwd)
    def _fwd_fake(q, k, v, agents, bias_agent, bias_query, scale):
        B, H, N, d = q.shape
        n = agents.shape[2]
        sd = stat_dtype(q)
        return (
            torch.empty_like(q),
            q.new_empty((B, H, n, d)),
            q.new_empty((B, H, n), dtype=sd),
            q.new_empty((B, H, N), dtype=sd),
        )

    @torch.library.register_fake(bwd)
    def _bwd_fake(grad_out, q, k, v, agents, bias_agent, bias_query, out, agent_v, lse_a, lse_q, scale):
        # a missing bias gets an empty gradient; two distinct tensors, as the kernels return (no aliasing)
        return (
            torch.empty_like(q),
            torch.empty_like(k),
            torch.empty_like(v),
            torch.empty_like(agents),
            torch.empty_like(bias_agent) if bias_agent is not None else q.new_empty((0,)),
            torch.empty_like(bias_query) if bias_query is not None else q.new_empty((0,)),
        )

    def setup_context(ctx, inputs, output):
        q, k, v, agents, bias_agent, bias_query, scale = inputs
        out, agent_v, lse_a, lse_q = output
        # only O(N·d + n·d + N + n) per head: no (N x n) score or probability tensor is kept
        ctx.save_for_backward(q, k, v, agents, bias_agent, bias_query, out, agent_v, lse_a, lse_q)
        ctx.scale = scale

    def backward(ctx, grad_out, _g_agent_v, _g_lse_a, _g_lse_q):
        q, k, v, agents, b1, b2, out, agent_v, lse_a, lse_q = ctx.saved_tensors
        dq, dk, dv, da, db1, db2 = torch.ops.agentattn.agent_attention_bwd(
            grad_out.contiguous(), q, k, v, agents, b1, b2, out, agent_v, lse_a, lse_q, ctx.scale
        )
        return dq, dk, dv, da, (db1 if b1 is not None else None), (db2 if b2 is not None else None), None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)

    @register_flop_formula(torch.ops.agentattn.agent_attention_fwd)
    def _fwd_flops(q_shape, k_shape, v_shape, a_shape, *args, out_shape=None, **kwargs) -> int:
        return flops(q_shape, k_shape, a_shape)

    @register_flop_formula(torch.ops.agentattn.agent_attention_bwd)
    def _bwd_flops(g_shape, q_shape, k_shape, v_shape, a_shape, *args, out_shape=None, **kwargs) -> int:
        return 2 * flops(q_shape, k_shape, a_shape)


def flops(q_shape, k_shape, a_shape) -> int:
    """Forward FLOPs: the four products, stage 1 (A Kᵀ, P1 V: 2·n·M·d multiply-adds) and stage 2 (Q Aᵀ,
    P2 V_A: 2·N·n·d), i.e. 4·B·H·n·d·(M + N) = 8·B·H·N·n·d for self-attention. Backward is counted as 2x
    forward (the 4 gradient products per stage; the recomputation of the scores, 2·(M + N)·n·d, not
    counted), the convention torch's flop counter uses for SDPA."""
    B, H, N, d = q_shape
    return 4 * B * H * a_shape[2] * d * (k_shape[2] + N)


_register()
