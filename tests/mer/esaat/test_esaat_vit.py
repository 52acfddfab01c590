"""mer.models.vit: the generic ViT used to show ESAAT is not HTNet-specific."""

import pytest
import torch

from agentattn import AgentAttention
from mer.models.layers import SoftmaxAttention
from mer.models.vit import VisionTransformer, vit_mer_tiny, vit_test


@pytest.mark.parametrize("attn", ["softmax", "agent"])
@pytest.mark.parametrize("factory", [vit_test, vit_mer_tiny])
def test_vit_forward_backward(factory, attn):
    torch.manual_seed(0)
    m = factory(attn=attn)
    x = torch.randn(2, 3, m.img_size, m.img_size)
    y = m(x)
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    y.square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


def test_vit_hooks_remove_convert_fade():
    torch.manual_seed(0)
    m = vit_test().eval()
    x = torch.randn(3, 3, 16, 16)
    names = [n for n, _ in m.attention_layers()]
    assert names == ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    src = m.block_of("blocks.1.attn").attn
    qkv, pw, pb = src.qkv.weight.clone(), src.proj.weight.clone(), src.proj.bias.clone()
    new = m.convert_attention("blocks.1.attn")
    assert isinstance(new, AgentAttention) and new.num_prefix_tokens == 1
    assert torch.equal(new.qkv.weight, qkv) and torch.equal(new.proj.weight, pw) and torch.equal(new.proj.bias, pb)
    # fade to lam = 0 equals the folded identity branch (skip_scale 2)
    m.set_attention_lambda("blocks.0.attn", 0.0)
    faded = m(x)
    n0 = sum(p.numel() for p in m.parameters())
    m.replace_attention("blocks.0.attn", None, skip_scale=2.0)
    torch.testing.assert_close(m(x), faded)
    assert sum(p.numel() for p in m.parameters()) < n0
    assert [n for n, _ in m.attention_layers()] == ["blocks.1.attn", "blocks.2.attn"]
    with pytest.raises(ValueError, match="removed"):
        m.set_attention_lambda("blocks.0.attn", 0.5)
    with pytest.raises(KeyError, match="blocks.0.attn"):
        m.block_of("blocks.9.attn")
    with pytest.raises(ValueError, match="not a softmax"):
        m.convert_attention("blocks.1.attn")
    assert isinstance(m.block_of("blocks.2.attn").attn, SoftmaxAttention)


def test_vit_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        VisionTransformer(img_size=15, patch_size=4)
    with pytest.raises(ValueError, match="agents"):
        vit_test(attn="agent", agent_num=25)
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        vit_test()(torch.randn(1, 3, 8, 8))
