"""Agent-CSwin (LeapLabTHU/Agent-Attention agent_transformer/models/agent_cswin.py; copy in originals/agent_cswin.py)
-> ``agentattn.convert.CSWinAgentAttention``: the attention branch (horizontal and vertical stripes, and the last
stage's full-resolution window) and whole CSWinBlocks; ``get_v`` -> ``dwc``; outputs and every gradient in fp64
(<= 1e-12) and fp32 (<= 4x fp32's own error).
"""

from __future__ import annotations

import pytest
import torch

from agentattn import convert as cv


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("idx", [0, 1, -1], ids=["stripes_h", "stripes_w", "last_stage"])
def test_agent_cswin_attention(originals, parity, idx, fused):
    torch.manual_seed(0)
    orig = originals.agent_cswin.AgentAttention(32, resolution=14, idx=idx, split_size=2, num_heads=2, agent_num=4)
    parity.randomise(orig, seed=1)
    ours = cv.from_original(orig)
    assert isinstance(ours, cv.CSWinAgentAttention) and ours.stripe == (orig.H_sp, orig.W_sp)
    ours.fused = fused
    fresh = cv.CSWinAgentAttention(32, 14, (orig.H_sp, orig.W_sp), 2, agent_num=4)
    fresh.load_state_dict(cv.cswin_state_dict(orig.state_dict()), strict=True)
    qkv = torch.randn(3, 2, 196, 32, generator=torch.Generator().manual_seed(2))
    parity.check(orig, ours, [qkv], grad_map=cv.cswin_state_dict)


@pytest.mark.parametrize("last_stage", [False, True], ids=["two_branches", "last_stage"])
def test_agent_cswin_block(originals, parity, last_stage):
    torch.manual_seed(3)

    def make():
        return originals.agent_cswin.CSWinBlock(
            64,
            14,
            num_heads=4,
            split_size=7 if not last_stage else 14,
            agent_num=9,
            attn_type="A",
            last_stage=last_stage,
        )

    orig = parity.randomise(make(), seed=4)
    ours = make()
    ours.load_state_dict(orig.state_dict())
    names = cv.swap(ours)
    assert names == (["attns.0"] if last_stage else ["attns.0", "attns.1"])
    x = torch.randn(2, 196, 64, generator=torch.Generator().manual_seed(5))
    parity.check(orig, ours, [x], grad_map=lambda g: {k.replace(".get_v.", ".dwc."): v for k, v in g.items()})
