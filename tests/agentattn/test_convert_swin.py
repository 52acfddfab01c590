"""Agent-Swin (LeapLabTHU/Agent-Attention agent_transformer/models/agent_swin.py; copy in originals/agent_swin.py)
-> ``agentattn.convert``: the attention module and whole SwinTransformerBlocks, with and without a cyclic shift (the
block passes its shifted-window mask, which the authors' agent attention ignores; ours does the same only when
converted, ``ignore_mask=True``). Outputs and every gradient in fp64 (<= 1e-12) and fp32 (<= 4x fp32's own error).
"""

from __future__ import annotations

import pytest
import torch

from agentattn import AgentAttention
from agentattn import convert as cv


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_agent_swin_attention(originals, parity, fused):
    torch.manual_seed(0)
    orig = parity.randomise(originals.agent_swin.AgentAttention(96, (7, 7), num_heads=3, agent_num=9), seed=1)
    ours = cv.from_original(orig)
    assert ours.ignore_mask and ours.window == (7, 7)
    ours.fused = fused
    x = torch.randn(4, 49, 96, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(4, 49, 49)
    parity.check(orig, ours, [x, mask], call_orig=lambda m, x, mask: m(x, mask=mask))


@pytest.mark.parametrize("shift", [0, 3], ids=["no_shift", "shift3"])
def test_agent_swin_block(originals, parity, shift):
    """SwinTransformerBlock at a 14x14 resolution with 7x7 windows (4 windows per image; shift 3: the rolled
    windows and the block's -100 mask between regions, which the agent attention drops, as the original)."""
    S = originals.agent_swin
    torch.manual_seed(3)

    def make():
        return S.SwinTransformerBlock(
            96,
            (14, 14),
            num_heads=3,
            window_size=7,
            shift_size=shift,
            agent_num=16,
            attn_type="A",
        )

    orig = parity.randomise(make(), seed=4)
    assert (orig.attn_mask is not None) == (shift > 0)
    ours = make()
    ours.load_state_dict(orig.state_dict())
    assert cv.swap(ours) == ["attn"] and isinstance(ours.attn, AgentAttention)
    x = torch.randn(2, 196, 96, generator=torch.Generator().manual_seed(5))
    parity.check(orig, ours, [x])


def test_mask_is_refused_unless_converted():
    m = AgentAttention(32, num_heads=2, agent_num=4, window=4)
    x = torch.randn(2, 16, 32)
    with pytest.raises(ValueError, match=r"cannot apply an attention mask.*ignore_mask=True"):
        m(x, mask=torch.zeros(1, 16, 16))
    m.ignore_mask = True
    torch.testing.assert_close(m(x, mask=torch.zeros(1, 16, 16)), m(x), rtol=0, atol=0)


def test_non_square_swin_window_is_refused(originals):
    orig = originals.agent_swin.AgentAttention(32, (4, 6), num_heads=2, agent_num=4)
    with pytest.raises(ValueError, match=r"window_size=\(4, 6\) is not square"):
        cv.from_original(orig)
