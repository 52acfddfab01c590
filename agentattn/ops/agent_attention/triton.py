"""Triton implementation of Agent Attention: launchers and the ``torch.library`` custom ops.

Kernels are in ``triton_kernels.py``. Public entry: :func:`agent_attention_triton` (differentiable).
Registered ops (so ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck`` see them):

    agentattn_triton::fwd(q, k, v, agents, bias_agent?, bias_query?, scale) -> (out, agent_v, lse_agent, lse_query)
    agentattn_triton::bwd(grad_out, q, k, v, agents, bias_agent?, bias_query?, out, agent_v, lse_agent,
                          lse_query, scale) -> (dq, dk, dv, dagents, dbias_agent, dbias_query)

The same contract as the C++ ops ``agentattn::agent_attention_fwd/bwd``: q (B, H, N, d), k, v (B, H, M, d),
agents (B, H, n, d), biases contiguous (Bb, Hb, n, M) / (Bb, Hb, N, n) with Bb in {1, B}, Hb in {1, H};
lse in fp32; absent bias gradients are empty tensors. Inputs fp16, bf16 or fp32 (fp32 accumulation).

Bias gradients: a bias with its own slice per (b, h) is written directly (deterministic); a broadcast
bias (Bb = 1 < B or Hb = 1 < H) is reduced with fp32 atomic adds (not bitwise deterministic), then cast.
Partial dA / dV_A / stage-1 softmax states of the splits are reduced in a fixed order (deterministic).

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` (set before ``import triton``) also on CPU tensors,
which is how the CPU test suite checks it. Nothing here touches a GPU at import time.
"""

from __future__ import annotations

import os

import torch
import triton

from agentattn.ops.agent_attention.triton_kernels import (
    _stage1_bwd,
    _stage1_fwd_reduce,
    _stage1_fwd_split,
    _stage2_bwd,
    _stage2_fwd,
)

Tensor = torch.Tensor
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)
_D_MAX = 256


def _pow2(x: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(x)))


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a small number so that tests exercise several splits


def _splits(n_tiles: int, bh: int, device: torch.device) -> tuple[int, int]:
    """(tiles_per_split, splits): enough programs (about 2 per SM) even when B·H is small."""
    want = max(1, -(-2 * _num_sms(device) // bh))
    splits = max(1, min(n_tiles, want))
    per = -(-n_tiles // splits)
    return per, -(-n_tiles // per)


def _bias_strides(bias: Tensor | None, B: int, H: int) -> tuple[int, int]:
    if bias is None:
        return 0, 0
    Bb, Hb, r, c = bias.shape
    return (Hb * r * c if Bb == B and B > 1 else 0), (r * c if Hb == H and H > 1 else 0)


def _check(q: Tensor, k: Tensor, v: Tensor, agents: Tensor, b1: Tensor | None, b2: Tensor | None) -> None:
    if q.device.type != "cuda" and not _INTERPRET:
        raise ValueError(
            f"the Triton backend needs CUDA tensors (got {q.device}); set TRITON_INTERPRET=1 "
            "before importing triton to run it on CPU for testing"
        )
    if q.dtype not in _SUPPORTED:
        raise ValueError(f"the Triton backend supports fp16, bf16 and fp32, got {q.dtype}")
    if q.shape[-1] > _D_MAX:
        raise ValueError(f"the Triton backend supports head dims up to {_D_MAX}, got d = {q.shape[-1]}")
    B, H, N, d = q.shape
    M, n = k.shape[2], agents.shape[2]
    if k.shape != (B, H, M, d) or v.shape != k.shape:
        raise ValueError(
            f"k and v must be (B, H, M, d) = ({B}, {H}, M, {d}), got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    for name, t, rc in (("bias_agent", b1, (n, M)), ("bias_query", b2, (N, n))):
        if t is not None and (
            t.dim() != 4
            or t.shape[0] not in (1, B)
            or t.shape[1] not in (1, H)
            or tuple(t.shape[2:]) != rc
            or t.dtype != q.dtype
        ):
            raise ValueError(
                f"{name} must be ({{1,{B}}}, {{1,{H}}}, {rc[0]}, {rc[1]}) in {q.dtype}, got {tuple(t.shape)} {t.dtype}"
            )


def _stage2_configs() -> list:
    """Autotune space of the stage-2 forward (the N-row pass): one config under the interpreter (its
    autotuner cannot benchmark), a small grid on a GPU."""
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 64}, num_warps=4)]
    return [
        triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
        for bm in (32, 64, 128)
        for w in (4, 8)
        for s in (1, 2)
    ]


_stage2_fwd_tuned = triton.autotune(configs=_stage2_configs(), key=["N", "n", "D", "HAS_B2", "LOWP"])(_stage2_fwd)


def _lowp(q: Tensor) -> bool:
    return q.dtype in (torch.float16, torch.bfloat16) and not _INTERPRET


def _blocks(n: int, d: int) -> tuple[int, int]:
    return _pow2(n), _pow2(d)


def _warps(block_a: int, block_d: int) -> int:
    """More warps for bigger resident (BLOCK_A x BLOCK_D) tiles, to limit register spills."""
    return 8 if block_a * block_d >= 64 * 64 else 4


def forward(
    q: Tensor, k: Tensor, v: Tensor, agents: Tensor, b1: Tensor | None, b2: Tensor | None, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the forward kernels. Returns (out (B,H,N,d), agent_v (B,H,n,d), lse_agent (B,H,n) fp32,
    lse_query (B,H,N) fp32)."""
    _check(q, k, v, agents, b1, b2)
    q, k, v, agents = (t.contiguous() for t in (q, k, v, agents))
    b1 = None if b1 is None else b1.contiguous()
    b2 = None if b2 is None else b2.contiguous()
    B, H, N, d = q.shape
    M, n = k.shape[2], agents.shape[2]
    BH = B * H
    BLOCK_A, BLOCK_D = _blocks(n, d)
    BLOCK_N = 64 if BLOCK_A * BLOCK_D <= 64 * 64 else 32
    lowp = _lowp(q)
    f32 = dict(device=q.device, dtype=torch.float32)
    per, S = _splits(triton.cdiv(M, BLOCK_N), BH, q.device)
    m_part = torch.empty((BH, S, BLOCK_A), **f32)
    l_part = torch.empty((BH, S, BLOCK_A), **f32)
    acc_part = torch.empty((BH, S, BLOCK_A, BLOCK_D), **f32)
    s1b, s1h = _bias_strides(b1, B, H)
    dummy = q  # stands in for an absent bias pointer (never read: HAS_B* is False)
    _stage1_fwd_split[(S, BH)](
        agents,
        k,
        v,
        b1 if b1 is not None else dummy,
        m_part,
        l_part,
        acc_part,
        scale,
        H,
        M,
        n,
        d,
        s1b,
        s1h,
        per,
        S,
        HAS_B1=b1 is not None,
        LOWP=lowp,
        BLOCK_A=BLOCK_A,
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        num_warps=_warps(BLOCK_A, BLOCK_D),
    )
    agent_v = torch.empty((B, H, n, d), device=q.device, dtype=q.dtype)
    lse1 = torch.empty((B, H, n), **f32)
    _stage1_fwd_reduce[(BH,)](
        m_part,
        l_part,
        acc_part,
        agent_v,
        lse1,
        n,
        d,
        S,
        BLOCK_A=BLOCK_A,
        BLOCK_D=BLOCK_D,
        num_warps=_warps(BLOCK_A, BLOCK_D),
    )
    out = torch.empty_like(q)
    lse2 = torch.empty((B, H, N), **f32)
    s2b, s2h = _bias_strides(b2, B, H)
    _stage2_fwd_tuned[lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), BH)](
        q,
        agents,
        agent_v,
        b2 if b2 is not None else dummy,
        out,
        lse2,
        scale,
        H,
        N,
        n,
        d,
        s2b,
        s2h,
        HAS_B2=b2 is not None,
        LOWP=lowp,
        BLOCK_A=BLOCK_A,
        BLOCK_D=BLOCK_D,
    )
    return out, agent_v, lse1, lse2


def _bias_grad_buffer(bias: Tensor | None, B: int, H: int) -> tuple[Tensor | None, bool]:
    if bias is None:
        return None, False
    atomic = bias.shape[0] != B or bias.shape[1] != H
    if atomic:
        return torch.zeros(bias.shape, device=bias.device, dtype=torch.float32), True
    return torch.empty_like(bias), False


def backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    agents: Tensor,
    b1: Tensor | None,
    b2: Tensor | None,
    out: Tensor,
    agent_v: Tensor,
    lse1: Tensor,
    lse2: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Launch the backward kernels (probabilities recomputed from lse). Returns
    (dq, dk, dv, dagents, dbias_agent, dbias_query); an absent bias's gradient is an empty tensor."""
    _check(q, k, v, agents, b1, b2)
    grad_out, q, k, v, agents, out, agent_v = (t.contiguous() for t in (grad_out, q, k, v, agents, out, agent_v))
    lse1, lse2 = lse1.float().contiguous(), lse2.float().contiguous()
    b1 = None if b1 is None else b1.contiguous()
    b2 = None if b2 is None else b2.contiguous()
    B, H, N, d = q.shape
    M, n = k.shape[2], agents.shape[2]
    BH = B * H
    BLOCK_A, BLOCK_D = _blocks(n, d)
    BLOCK_M = 64 if BLOCK_A * BLOCK_D <= 64 * 64 else 32
    BLOCK_N = BLOCK_M
    lowp = _lowp(q)
    f32 = dict(device=q.device, dtype=torch.float32)
    dummy = q
    # stage 2 backward over query row blocks
    per2, S2 = _splits(triton.cdiv(N, BLOCK_M), BH, q.device)
    dq = torch.empty_like(q)
    db2, atomic2 = _bias_grad_buffer(b2, B, H)
    da2 = torch.empty((BH, S2, BLOCK_A, BLOCK_D), **f32)
    dva_part = torch.empty((BH, S2, BLOCK_A, BLOCK_D), **f32)
    s2b, s2h = _bias_strides(b2, B, H)
    _stage2_bwd[(S2, BH)](
        q,
        agents,
        agent_v,
        b2 if b2 is not None else dummy,
        out,
        grad_out,
        lse2,
        dq,
        db2 if db2 is not None else dummy,
        da2,
        dva_part,
        scale,
        H,
        N,
        n,
        d,
        s2b,
        s2h,
        per2,
        S2,
        HAS_B2=b2 is not None,
        B2_ATOMIC=atomic2,
        LOWP=lowp,
        BLOCK_M=BLOCK_M,
        BLOCK_A=BLOCK_A,
        BLOCK_D=BLOCK_D,
        num_warps=_warps(BLOCK_A, BLOCK_D),
    )
    dva = dva_part.sum(1).contiguous()  # (BH, BLOCK_A, BLOCK_D) fp32, padding rows/cols are zero
    # stage 1 backward over key blocks, upstream gradient dV_A
    per1, S1 = _splits(triton.cdiv(M, BLOCK_N), BH, q.device)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    db1, atomic1 = _bias_grad_buffer(b1, B, H)
    da1 = torch.empty((BH, S1, BLOCK_A, BLOCK_D), **f32)
    s1b, s1h = _bias_strides(b1, B, H)
    _stage1_bwd[(S1, BH)](
        agents,
        k,
        v,
        agent_v,
        b1 if b1 is not None else dummy,
        lse1,
        dva,
        dk,
        dv,
        db1 if db1 is not None else dummy,
        da1,
        scale,
        H,
        M,
        n,
        d,
        s1b,
        s1h,
        per1,
        S1,
        HAS_B1=b1 is not None,
        B1_ATOMIC=atomic1,
        LOWP=lowp,
        BLOCK_A=BLOCK_A,
        BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
        num_warps=_warps(BLOCK_A, BLOCK_D),
    )
    da = (da2.sum(1) + da1.sum(1))[:, :n, :d].reshape(B, H, n, d).to(q.dtype)
    db1 = q.new_empty((0,)) if db1 is None else db1.to(q.dtype)  # distinct empties: outputs may not alias
    db2 = q.new_empty((0,)) if db2 is None else db2.to(q.dtype)
    return dq, dk, dv, da, db1, db2


# ------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("agentattn_triton::fwd", mutates_args=())
def _fwd_op(
    q: Tensor, k: Tensor, v: Tensor, agents: Tensor, bias_agent: Tensor | None, bias_query: Tensor | None, scale: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return forward(q, k, v, agents, bias_agent, bias_query, scale)


@_fwd_op.register_fake
def _(q, k, v, agents, bias_agent, bias_query, scale):
    B, H, N, d = q.shape
    n = agents.shape[2]
    return (
        torch.empty_like(q),
        q.new_empty((B, H, n, d)),
        q.new_empty((B, H, n), dtype=torch.float32),
        q.new_empty((B, H, N), dtype=torch.float32),
    )


@torch.library.custom_op("agentattn_triton::bwd", mutates_args=())
def _bwd_op(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    agents: Tensor,
    bias_agent: Tensor | None,
    bias_query: Tensor | None,
    out: Tensor,
    agent_v: Tensor,
    lse_agent: Tensor,
    lse_query: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return backward(grad_out, q, k, v, agents, bias_agent, bias_query, out, agent_v, lse_agent, lse_query, scale)


@_bwd_op.register_fake
def _(grad_out, q, k, v, agents, bias_agent, bias_query, out, agent_v, lse_agent, lse_query, scale):
    return (
        torch.empty_like(q),
        torch.empty_like(k),
        torch.empty_like(v),
        torch.empty_like(agents),
        torch.empty_like(bias_agent) if bias_agent is not None else q.new_empty((0,)),
        torch.empty_like(bias_query) if bias_query is not None else q.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output):
    q, k, v, agents, b1, b2, scale = inputs
    out, agent_v, lse1, lse2 = output
    ctx.save_for_backward(q, k, v, agents, b1, b2, out, agent_v, lse1, lse2)  # no (N x n) tensor
    ctx.scale = scale


def _backward(ctx, grad_out, _g_agent_v, _g_lse1, _g_lse2):
    q, k, v, agents, b1, b2, out, agent_v, lse1, lse2 = ctx.saved_tensors
    dq, dk, dv, da, db1, db2 = _bwd_op(
        grad_out.contiguous(), q, k, v, agents, b1, b2, out, agent_v, lse1, lse2, ctx.scale
    )
    return dq, dk, dv, da, (db1 if b1 is not None else None), (db2 if b2 is not None else None), None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def agent_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, agents: Tensor, bias_agent: Tensor | None, bias_query: Tensor | None, scale: float
) -> Tensor:
    """Agent attention on the Triton kernels, differentiable.

    q (B, H, N, d); k, v (B, H, M, d); agents (B, H, n, d); bias_agent (Bb, Hb, n, M) / bias_query (Bb, Hb, N, n)
    contiguous with Bb in {1, B}, Hb in {1, H} (``op.prepare_bias`` produces these), or None.
    Returns (B, H, N, d). float64 inputs run on the reference composition (Triton's fp64 ``tl.dot`` is
    not used here).
    """
    if q.dtype == torch.float64:
        from agentattn.ops.agent_attention.naive import agent_attention_ref

        return agent_attention_ref(q, k, v, agents, bias_agent, bias_query, scale)
    return _fwd_op(q, k, v, agents, bias_agent, bias_query, float(scale))[0]
