"""AgentSD (LeapLabTHU/Agent-Attention agentsd/patch.py ``make_agent_attn`` on ldm's CrossAttention; copies in
originals/agentsd.py) -> ``agentattn.convert.AgentSDAttention``: the two scales (``k_scale2``) and the ``k_shortcut``
term, the plain-attention fallback, cross-attention to 77 context tokens; outputs and every gradient in fp64
(<= 1e-12) and fp32 (<= 4x fp32's own error).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from agentattn import convert as cv
from agentattn.ops.agent_attention.naive import agent_attention_ref


def _patched(originals, attn, k_scale2, k_shortcut):
    """The original patch applied the way AgentSD's apply_patch does it (class swap + set_new_params)."""
    attn.__class__ = originals.agentsd.make_agent_attn(attn.__class__, k_scale2=k_scale2, k_shortcut=k_shortcut)
    attn.set_new_params()
    return attn


@pytest.mark.parametrize(
    "k_scale2,k_shortcut", [(0.3, 0.075), (1.0, 0.0), (0.5, 0.2)], ids=["default", "one_scale_no_shortcut", "other"]
)
def test_agentsd_agent_path(originals, parity, k_scale2, k_shortcut):
    torch.manual_seed(0)
    base = originals.agentsd.CrossAttention(64, heads=4, dim_head=16)
    orig = _patched(originals, base, k_scale2, k_shortcut)
    ours = cv.AgentSDAttention(originals.agentsd.CrossAttention(64, heads=4, dim_head=16), k_scale2, k_shortcut)
    ours.load_state_dict(orig.state_dict(), strict=True)  # shares to_q/to_k/to_v/to_out: the same names
    g = torch.Generator().manual_seed(1)
    x, agent = torch.randn(2, 64, 64, generator=g), torch.randn(2, 9, 64, generator=g)
    call = lambda m, x, agent: m(x, agent=agent)  # noqa: E731
    parity.check(orig, ours, [x, agent], call_orig=call)


def test_agentsd_plain_path_and_mask(originals, parity):
    """Without agents (or with too many) both run plain softmax attention; a boolean mask applies there."""
    torch.manual_seed(2)
    orig = _patched(originals, originals.agentsd.CrossAttention(32, context_dim=48, heads=2, dim_head=16), 0.3, 0.075)
    ours = cv.AgentSDAttention(originals.agentsd.CrossAttention(32, context_dim=48, heads=2, dim_head=16))
    ours.load_state_dict(orig.state_dict(), strict=True)
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(2, 20, 32, generator=g), torch.randn(2, 77, 48, generator=g)
    mask = torch.rand(2, 77, generator=g) > 0.3
    parity.check(orig, ours, [x, ctx], call_orig=lambda m, x, c: m(x, context=c, mask=mask))
    too_many = torch.randn(2, 12, 32, generator=g)  # 12 * 2 >= 20: the original falls back too
    parity.check(orig, ours, [x, ctx, too_many], call_orig=lambda m, x, c, a: m(x, agent=a, context=c))


def test_agentsd_cross_attention_with_agents_and_errors(originals):
    """Agents against 77 context tokens (M != N): the op's two scales, no shortcut (the original cannot add a
    77-token V to 64 queries and fails; ours refuses that case with the reason)."""
    torch.manual_seed(4)
    attn = originals.agentsd.CrossAttention(32, context_dim=48, heads=2, dim_head=16)
    ours = cv.AgentSDAttention(attn, k_scale2=0.3, k_shortcut=0.0)
    g = torch.Generator().manual_seed(5)
    x, ctx = torch.randn(2, 64, 32, generator=g), torch.randn(2, 77, 48, generator=g)
    agent = torch.randn(2, 9, 32, generator=g)
    out = ours(x, agent=agent, context=ctx)
    heads = lambda t: t.reshape(2, t.shape[1], 2, 16).transpose(1, 2)  # noqa: E731
    with torch.no_grad():
        ref = agent_attention_ref(
            heads(attn.to_q(x)),
            heads(attn.to_k(ctx)),
            heads(attn.to_v(ctx)),
            heads(attn.to_q(agent)),
            scale=attn.scale,
            scale_query=attn.scale**0.3,
        )
        want = attn.to_out(ref.transpose(1, 2).reshape(2, 64, 32))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    ours.k_shortcut = 0.075
    with pytest.raises(ValueError, match="k_shortcut=0.075 adds V to the output: it needs as many keys as queries"):
        ours(x, agent=agent, context=ctx)
    with pytest.raises(ValueError, match="a mask cannot apply to the agent path"):
        ours(x, agent=agent, mask=torch.ones(2, 64, dtype=torch.bool))


def test_agentsd_wraps_every_transformer_block(originals):
    CA = originals.agentsd.CrossAttention

    class BasicTransformerBlock(nn.Module):  # the name apply_patch looks for
        def __init__(self):
            super().__init__()
            self.attn1, self.attn2 = CA(16, heads=2, dim_head=8), CA(16, context_dim=24, heads=2, dim_head=8)

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(BasicTransformerBlock(), BasicTransformerBlock()))
    names = cv.agentsd(model, k_scale2=0.5)
    assert names == ["1.0.attn1", "1.0.attn2", "1.1.attn1", "1.1.attn2"]
    assert all(
        isinstance(getattr(b, a), cv.AgentSDAttention) and getattr(b, a).k_scale2 == 0.5
        for b in model[1]
        for a in ("attn1", "attn2")
    )
    assert cv.agentsd(model) == []  # already wrapped
