"""Agent-DeiT (LeapLabTHU/Agent-Attention agent_transformer/models/agent_deit.py, copy in originals/agent_deit.py)
-> ``agentattn.convert``: the attention module and a whole AgentBlock, strict state-dict loading, outputs and every
gradient in fp64 (<= 1e-12) and fp32 (<= 4x fp32's own error), fused and reference paths.
"""

from __future__ import annotations

import pytest
import torch

import agentattn
from agentattn import AgentAttention
from agentattn import convert as cv


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize(
    "cfg",
    [
        dict(dim=192, num_heads=3, agent_num=49, window=14),  # DeiT-T
        dict(dim=64, num_heads=2, agent_num=16, window=7, qkv_bias=True),
    ],
    ids=["deit_t", "small_qkv_bias"],
)
def test_agent_deit_attention(originals, parity, cfg, fused):
    torch.manual_seed(0)
    orig = parity.randomise(originals.agent_deit.AgentAttention(**cfg), seed=1)
    ours = cv.from_original(orig)
    assert isinstance(ours, AgentAttention) and ours.num_prefix_tokens == 1
    ours.fused = fused
    ours.load_state_dict(cv.deit_state_dict(orig.state_dict()), strict=True)  # the checkpoint route too
    x = torch.randn(2, 1 + cfg["window"] ** 2, cfg["dim"], generator=torch.Generator().manual_seed(2))
    parity.check(orig, ours, [x])


def test_agent_deit_block(originals, parity):
    """A whole AgentBlock (norms, MLP, residuals) with its attention swapped in place by ``convert.swap``."""
    torch.manual_seed(3)
    blk = originals.agent_deit.AgentBlock(96, num_heads=3, qkv_bias=True, agent_num=9, window=6)
    parity.randomise(blk, seed=4)
    ours = parity.randomise(originals.agent_deit.AgentBlock(96, num_heads=3, qkv_bias=True, agent_num=9, window=6), 4)
    ours.load_state_dict(blk.state_dict())
    assert cv.swap(ours) == ["attn"] and isinstance(ours.attn, AgentAttention)
    x = torch.randn(3, 37, 96, generator=torch.Generator().manual_seed(5))
    parity.check(blk, ours, [x])


def test_non_square_agent_num_is_refused(originals):
    orig = originals.agent_deit.AgentAttention(32, num_heads=2, agent_num=12, window=4)
    with pytest.raises(ValueError, match=r"attn: agent_num=12 is not a perfect square: the original pools to .* 9 ag"):
        cv.from_original(orig, "attn")


def test_unknown_module_is_refused():
    with pytest.raises(ValueError, match=r"blocks.0 \(Linear\) is not an Agent-Attention module known here"):
        cv.from_original(torch.nn.Linear(2, 2), "blocks.0")
    assert cv.swap(torch.nn.Sequential(torch.nn.Linear(2, 2))) == []
    assert agentattn.convert is cv
