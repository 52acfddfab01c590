"""Agent-PVT (LeapLabTHU/Agent-Attention agent_transformer/models/agent_pvt.py and the detection backbone
downstream/detection/mmdet/models/backbones/agent_pvt.py; copies in originals/) -> ``agentattn.convert``:
sr_ratio 1 and > 1 (keys and values spatially reduced: M != N), a PVT stage with sr_ratio 8, the detection
variant's ``downstream_agent_shape``; outputs and every gradient in fp64 (<= 1e-12) and fp32 (<= 4x fp32's
own error).
"""

from __future__ import annotations

import pytest
import torch

from agentattn import AgentAttention
from agentattn import convert as cv


def _pvt_call(H, W):
    return lambda m, x: m(x, H, W)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize(
    "sr_ratio,agent_num,side", [(1, 9, 8), (2, 16, 8), (4, 9, 16), (8, 9, 16)], ids=["sr1", "sr2", "sr4", "sr8"]
)
def test_agent_pvt_attention(originals, parity, sr_ratio, agent_num, side, fused):
    torch.manual_seed(0)
    orig = originals.agent_pvt.AgentAttention(
        64, side * side, num_heads=2, qkv_bias=True, sr_ratio=sr_ratio, agent_num=agent_num
    )
    parity.randomise(orig, seed=1)
    ours = cv.from_original(orig)
    assert ours.sr_ratio == sr_ratio and ours.fused
    ours.fused = fused
    fresh = AgentAttention(64, 2, qkv_bias=True, agent_num=agent_num, window=side, sr_ratio=sr_ratio)
    fresh.load_state_dict(cv.pvt_state_dict(orig.state_dict()), strict=True)  # the checkpoint route
    x = torch.randn(2, side * side, 64, generator=torch.Generator().manual_seed(2))
    parity.check(orig, ours, [x], call_orig=_pvt_call(side, side), grad_map=cv.pvt_state_dict)


def test_agent_pvt_stage_sr8(originals, parity):
    """PVT-S stage 1's layout at a reduced size: patch embedding (stride 4) then two Blocks with sr_ratio 8
    (a 16x16 query grid against 2x2 keys), swapped in place by ``convert.swap``."""
    P = originals.agent_pvt
    torch.manual_seed(3)

    class Stage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = P.PatchEmbed(img_size=64, patch_size=4, in_chans=3, embed_dim=64)
            self.blocks = torch.nn.ModuleList(
                [P.Block(64, 256, num_heads=1, mlp_ratio=8, qkv_bias=True, sr_ratio=8, agent_num=9) for _ in range(2)]
            )

        def forward(self, img):
            x, (H, W) = self.patch_embed(img)
            for blk in self.blocks:
                x = blk(x, H, W)
            return x

    orig = parity.randomise(Stage(), seed=4)
    ours = Stage()
    ours.load_state_dict(orig.state_dict())
    assert cv.swap(ours) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(isinstance(b.attn, AgentAttention) and b.attn.sr_ratio == 8 for b in ours.blocks)
    img = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    parity.check(orig, ours, [img])  # sr_ratio > 1 keeps the original's parameter names


@pytest.mark.parametrize("shape", [(3, 3), (2, 4), (5, 5)], ids=lambda s: f"agents{s[0]}x{s[1]}")
def test_detection_pvt_downstream_agent_shape(originals, parity, shape):
    """Agents pooled to ``downstream_agent_shape`` while the biases are sized for the trained 3x3 grid (interpolated
    over the agent grid), a 5x5 depthwise kernel, another scale exponent, and a feature map larger than the window."""
    torch.manual_seed(6)
    orig = originals.agent_pvt_detection.AgentAttention(
        48, 36, num_heads=2, qkv_bias=True, kernel_size=5, agent_num=9, downstream_agent_shape=shape, scale=-0.4
    )
    parity.randomise(orig, seed=7)
    ours = cv.from_original(orig)
    assert ours.agent_grid == shape and ours.bias_agent_grid == (3, 3)
    x = torch.randn(2, 8 * 10, 48, generator=torch.Generator().manual_seed(8))
    parity.check(orig, ours, [x], call_orig=_pvt_call(8, 10), grad_map=cv.pvt_state_dict)


def test_detection_pvt_with_sr_ratio_is_refused(originals):
    orig = originals.agent_pvt_detection.AgentAttention(32, 64, num_heads=2, sr_ratio=2, agent_num=4)
    with pytest.raises(ValueError, match=r"backbone.attn: detection Agent-PVT with sr_ratio=2: its forward asserts"):
        cv.from_original(orig, "backbone.attn")


def test_sr_ratio_grid_must_divide(originals):
    orig = originals.agent_pvt.AgentAttention(32, 64, num_heads=2, sr_ratio=4, agent_num=4)
    ours = cv.from_original(orig)
    with pytest.raises(ValueError, match=r"the grid \(6, 8\) must be divisible by sr_ratio=4"):
        ours(torch.randn(1, 48, 32), 6, 8)
