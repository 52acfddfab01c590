"""``agentattn.convert.timm_vit``: every attention of a timm ViT/DeiT becomes ``AgentAttention`` with the q/k/v/proj
weights carried over and the agent parameters initialised as the authors do; the converted block is exactly the
authors' Agent-DeiT ``AgentBlock`` (LeapLabTHU/Agent-Attention, copy in originals/agent_deit.py); DeiT-T forward,
backward and optimizer steps; ``dynamic_img_size`` with a non-square image; refusals.

timm itself imports torchvision (not installable beside the CPU torch here), so these run on the trimmed copy of
timm's VisionTransformer in originals/timm_vit.py (its header says what was kept); ``test_real_timm`` runs on
``timm.create_model`` where timm is importable.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn as nn

from agentattn import AgentAttention
from agentattn import convert as cv


def _deit_tiny(originals, **kw):
    torch.manual_seed(0)
    return originals.timm_vit.deit_tiny_patch16_224(**kw)


def test_weights_carried_over_and_agent_parameters_initialised_as_the_authors(originals):
    model = _deit_tiny(originals)
    before = [
        (b.attn.qkv.weight.clone(), b.attn.qkv.bias.clone(), b.attn.proj.weight.clone(), b.attn.proj.bias.clone())
        for b in model.blocks
    ]
    names = cv.timm_vit(model, agent_num=49)
    assert names == [f"blocks.{i}.attn" for i in range(12)]
    biases = []
    for blk, (qw, qb, pw, pb) in zip(model.blocks, before, strict=True):
        a = blk.attn
        assert isinstance(a, AgentAttention) and a.window == (14, 14) and a.num_prefix_tokens == 1 and a.agent_num == 49
        for x, y in ((a.qkv.weight, qw), (a.qkv.bias, qb), (a.proj.weight, pw), (a.proj.bias, pb)):
            assert torch.equal(x, y)
        biases += [p.detach().flatten() for n, p in a.named_parameters() if n.endswith("_bias") and p.dim() >= 4]
        assert a.dwc.weight.shape == (192, 1, 3, 3) and a.dwc.weight.abs().max() <= 1 / 3  # kaiming-uniform bound
    b = torch.cat(biases)
    assert abs(b.std().item() - 0.02) < 0.001 and abs(b.mean().item()) < 0.001  # trunc_normal_(std=0.02)
    first = model.blocks[0].attn
    assert cv.timm_vit(model) == [] and model.blocks[0].attn is first  # a second call keeps what is converted


def test_converted_block_is_the_authors_agent_deit_block(originals, parity):
    """A converted timm Block has the function of Agent-DeiT's AgentBlock holding the same weights."""
    model = _deit_tiny(originals)
    cv.timm_vit(model, agent_num=49)
    ours = parity.randomise(model.blocks[3], seed=1)
    orig = originals.agent_deit.AgentBlock(
        192, num_heads=3, qkv_bias=True, agent_num=49, window=14, norm_layer=partial(nn.LayerNorm, eps=1e-6)
    )
    orig.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 197, 192, generator=torch.Generator().manual_seed(2))
    parity.check(orig, ours, [x])


def test_deit_tiny_forward_backward_optimizer_steps(originals):
    model = _deit_tiny(originals)
    cv.timm_vit(model, agent_num=49)
    g = torch.Generator().manual_seed(3)
    img, target = torch.randn(2, 3, 224, 224, generator=g), torch.tensor([1, 7])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(img), target)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_dynamic_img_size_non_square(originals):
    model = _deit_tiny(originals, dynamic_img_size=True)
    cv.timm_vit(model, agent_num=(2, 3))
    img = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(4))  # a 10 x 14 patch grid
    out = model(img)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert all(b.attn.grid_hint == (10, 14) for b in model.blocks)
    x = torch.randn(1, 141, 192)
    blk = model.blocks[0].attn
    blk.grid_hint = None
    with pytest.raises(ValueError, match="x has 141 tokens"):  # 140 grid tokens: no square, not the window's shape
        blk(x)
    out2 = model(torch.randn(1, 3, 224, 224))  # back at the trained size
    assert model.blocks[0].attn.grid_hint == (14, 14) and torch.isfinite(out2).all()


@pytest.mark.parametrize(
    "what,kw,msg",
    [
        ("qk_norm", dict(qk_norm=True), "q_norm has no counterpart"),
    ],
)
def test_refusals(originals, what, kw, msg):
    model = _deit_tiny(originals, **kw)
    with pytest.raises(ValueError, match=f"blocks.0.attn: {msg}"):
        cv.timm_vit(model)
    assert not any(isinstance(b.attn, AgentAttention) for b in model.blocks)  # nothing replaced


def test_refusals_gate_and_proj_bias(originals):
    T = originals.timm_vit
    for attn, msg in (
        (T.Attention(64, 2, gated=True), "gate has no counterpart"),
        (T.Attention(64, 2, proj_bias=False), "proj_bias=False is not supported"),
        (T.Attention(64, 2, attn_head_dim=16), "attention width 32 != embed dim 64"),
    ):
        model = _deit_tiny(originals)
        model.blocks[0].attn = attn
        with pytest.raises(ValueError, match=msg):
            cv.timm_vit(model, layers=[0])


def test_real_timm():
    timm = pytest.importorskip("timm", reason="timm needs torchvision, not installed here")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    cv.timm_vit(model, agent_num=49)
    out = model(torch.randn(1, 3, 160, 224))
    out.sum().backward()
    assert torch.isfinite(out).all() and all(isinstance(b.attn, AgentAttention) for b in model.blocks)
