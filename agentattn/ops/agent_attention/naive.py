"""Reference Agent Attention: the semantics every fast path is tested against.

Per batch b and head h, with scale s (stage 2: s2, default s), queries Q (N x d), keys and values K, V
(M x d; M = N for self-attention, M != N for PVT's spatial reduction or cross-attention), agents A (n x d)
and additive biases B1 (n x M), B2 (N x n):

    P1  = softmax(s * A K^T + B1)     (n x M, softmax over the M keys)      stage 1: agents gather
    V_A = P1 V                        (n x d)
    P2  = softmax(s2 * Q A^T + B2)    (N x n, softmax over the n agents)    stage 2: queries read back
    O   = P2 V_A                      (N x d)

NaN and infinity follow IEEE arithmetic through this composition: a NaN in a score row makes that
softmax row NaN, a row of -inf scores gives NaN (0/0), and a NaN in V spreads through the products. Every
fast path is tested to give the same non-finite pattern (tests/agentattn/ops/test_agent_attention_nan.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def agent_attention_ref(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    agents: Tensor,
    bias_agent: Tensor | None = None,
    bias_query: Tensor | None = None,
    scale: float | None = None,
    *,
    attn_drop: float = 0.0,
    training: bool = False,
    scale_query: float | None = None,
) -> Tensor:
    """Eager composition, as the reference module computes it.

    q: (B, H, N, d); k, v: (B, H, M, d); agents: (B, H, n, d); bias_agent broadcastable to (B, H, n, M);
    bias_query broadcastable to (B, H, N, n). Returns (B, H, N, d). ``scale_query``: the stage-2 scale
    (default ``scale``; AgentSD uses another). ``attn_drop`` applies dropout to both probability matrices
    (only when ``training``), as the reference module does.
    """
    s = q.shape[-1] ** -0.5 if scale is None else scale
    s2 = s if scale_query is None else scale_query
    s1 = (agents * s) @ k.transpose(-2, -1)
    if bias_agent is not None:
        s1 = s1 + bias_agent
    p1 = s1.softmax(dim=-1)
    if attn_drop > 0.0 and training:
        p1 = F.dropout(p1, attn_drop, training=True)
    agent_v = p1 @ v
    sc2 = (q * s2) @ agents.transpose(-2, -1)
    if bias_query is not None:
        sc2 = sc2 + bias_query
    p2 = sc2.softmax(dim=-1)
    if attn_drop > 0.0 and training:
        p2 = F.dropout(p2, attn_drop, training=True)
    return p2 @ agent_v


def agent_attention_ref_stats(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    agents: Tensor,
    bias_agent: Tensor | None,
    bias_query: Tensor | None,
    scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fused op's full forward contract: (out, agent_v, lse_agent, lse_query).

    Shapes as in :func:`agent_attention_ref`. out (B, H, N, d); agent_v (B, H, n, d); lse_agent (B, H, n)
    and lse_query (B, H, N) are the
    log-sum-exp of the stage-1 and stage-2 score rows, in float32 (float64 for float64 inputs).
    """
    stat_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    s1 = (agents.to(stat_dtype) * scale) @ k.to(stat_dtype).transpose(-2, -1)
    if bias_agent is not None:
        s1 = s1 + bias_agent.to(stat_dtype)
    lse1 = torch.logsumexp(s1, dim=-1)
    agent_v = torch.exp(s1 - lse1[..., None]) @ v.to(stat_dtype)
    s2 = (q.to(stat_dtype) * scale) @ agents.to(stat_dtype).transpose(-2, -1)
    if bias_query is not None:
        s2 = s2 + bias_query.to(stat_dtype)
    lse2 = torch.logsumexp(s2, dim=-1)
    out = torch.exp(s2 - lse2[..., None]) @ agent_v
    return out.to(q.dtype), agent_v.to(q.dtype), lse1, lse2


def agent_attention_sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    agents: Tensor,
    bias_agent: Tensor | None = None,
    bias_query: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """The same operator as two calls of ``F.scaled_dot_product_attention`` with float masks."""
    s = q.shape[-1] ** -0.5 if scale is None else scale
    agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=bias_agent, scale=s)
    return F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=bias_query, scale=s)
