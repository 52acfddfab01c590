"""agentattn.FlowPatchEmbed: parameters and init (LAPE, truncated normal std 0.02), fused vs reference on
the same instance, bicubic resize of the position embedding for other grids, loading plain conv and
HTNet (rearrange + 1x1 conv) patch-embedding weights, errors."""

import math

import pytest
import torch
import torch.nn as nn
from einops import rearrange

import agentattn
from agentattn import FlowPatchEmbed


def test_signature_parameters_and_lape_init():
    m = FlowPatchEmbed(in_chans=3, embed_dim=64, patch_size=4, grid_size=(14, 12), pos="learned")
    names = {k: tuple(v.shape) for k, v in m.named_parameters()}
    assert names == {"pos_embed": (64, 14, 12), "proj.weight": (64, 3, 4, 4), "proj.bias": (64,)}
    pe = m.pos_embed.detach()
    # nn.init.trunc_normal_(std=0.02) with its default cut at +-2 (absolute), as timm and the agent
    # attention biases do: 64*14*12 = 10752 draws, std within a few percent of 0.02
    assert abs(pe.std().item() - 0.02) < 0.001 and abs(pe.mean().item()) < 0.001
    none = FlowPatchEmbed(3, 64, 4, 14, pos="none")
    assert none.pos_embed is None and "pos_embed" not in dict(none.named_parameters())
    assert "fused=True" in repr(m)


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("pos", ["learned", "none"])
def test_fused_switch_on_one_instance_matches_conv_plus_pos(flatten, pos):
    torch.manual_seed(0)
    m = FlowPatchEmbed(3, 32, 7, 4, pos=pos, flatten=flatten).double()
    x = torch.randn(5, 3, 28, 28, dtype=torch.float64)
    ref = m.proj(x) + (m.pos_embed if m.pos_embed is not None else 0)
    ref = ref.flatten(2).transpose(1, 2) if flatten else ref
    outs, grads = [], []
    for fused in (True, False):
        m.fused = fused
        m.zero_grad()
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append({k: p.grad.clone() for k, p in m.named_parameters()})
    torch.testing.assert_close(outs[0], ref)
    torch.testing.assert_close(outs[1], ref)
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], msg=k)


def test_other_grid_uses_bicubic_resized_pos():
    torch.manual_seed(0)
    m = FlowPatchEmbed(2, 8, 4, 7).double()
    x = torch.randn(2, 2, 40, 36, dtype=torch.float64)  # 10 x 9 grid instead of 7 x 7
    pos = torch.nn.functional.interpolate(m.pos_embed[None], size=(10, 9), mode="bicubic", align_corners=False)[0]
    torch.testing.assert_close(m(x), m.proj(x) + pos)
    assert m.pos_for(7, 7) is m.pos_embed
    m(x).sum().backward()  # the gradient flows back through the resize
    assert m.pos_embed.grad is not None and m.pos_embed.grad.abs().sum() > 0


def test_load_conv_weights_reproduces_a_plain_patch_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 16, 7, stride=7)
    m = FlowPatchEmbed(3, 16, 7, 4, pos="none").load_conv_weights(conv.weight, conv.bias)
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(m(x), conv(x))
    with pytest.raises(ValueError, match=r"weight must be \(16, 3, 7, 7\), got \(16, 3, 4, 4\)"):
        m.load_conv_weights(torch.zeros(16, 3, 4, 4))
    with pytest.raises(ValueError, match=r"bias must be \(16,\), got \(8,\)"):
        m.load_conv_weights(conv.weight, torch.zeros(8))


@pytest.mark.parametrize("weight_shape", ["4d", "2d"])
def test_load_htnet_weights_matches_rearrange_plus_1x1_conv(weight_shape):
    """HTNet's patch embedding: rearrange b c (h p1) (w p2) -> b (p1 p2 c) h w, then Conv2d(p·p·C, D, 1)."""
    torch.manual_seed(0)
    C, p, D = 3, 7, 24
    conv1 = nn.Conv2d(p * p * C, D, 1)
    x = torch.randn(2, C, 28, 28)
    want = conv1(rearrange(x, "b c (h p1) (w p2) -> b (p1 p2 c) h w", p1=p, p2=p))
    w = conv1.weight if weight_shape == "4d" else conv1.weight[:, :, 0, 0]
    m = FlowPatchEmbed(C, D, p, 4, pos="learned").load_htnet_weights(w, conv1.bias)
    with torch.no_grad():
        m.pos_embed.zero_()
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"HTNet patch weight must be \(24, 147, 1, 1\), got \(24, 146, 1, 1\)"):
        m.load_htnet_weights(torch.zeros(D, 146, 1, 1))


def test_module_errors():
    m = FlowPatchEmbed(3, 16, 7, 4)
    with pytest.raises(ValueError, match=r"C = in_chans = 3, got \(2, 2, 28, 28\)"):
        m(torch.zeros(2, 2, 28, 28))
    with pytest.raises(ValueError, match=r"\(30, 28\) is not divisible by patch_size 7"):
        m(torch.zeros(2, 3, 30, 28))
    with pytest.raises(ValueError, match="pos must be 'learned' or 'none'"):
        FlowPatchEmbed(3, 16, 7, 4, pos="sincos")
    with pytest.raises(ValueError, match="must be >= 1"):
        FlowPatchEmbed(3, 0, 7, 4)


def test_exported_from_package():
    assert agentattn.FlowPatchEmbed is FlowPatchEmbed
    assert math.isclose(sum(p.numel() for p in FlowPatchEmbed(3, 8, 2, 3).parameters()), 8 * 12 + 8 + 8 * 9)
