"""HTNet variants: forward/gradients, fused vs reference attention, shapes, errors, layer access."""

import pytest
import torch

from agentattn import AgentAttention
from mer.models import HTNet, SoftmaxAttention, create_model, list_models
from mer.models.profile import count_flops, count_params

WORKING = [n for n in list_models() if n != "htnet_original"]


def _x(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.cfg.channels, model.cfg.image_size, model.cfg.image_size, generator=g)


@pytest.mark.parametrize("name", WORKING)
def test_variant_forward_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name)
    out = model(_x(model))
    assert out.shape == (2, model.cfg.num_classes) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert not missing, f"parameters without a (finite, nonzero) gradient: {missing}"


@pytest.mark.parametrize("name", WORKING)
def test_variant_is_a_working_configuration(name):
    """Every attention sees >= 16 tokens and the model has <= 10M parameters (unlike the release: 1 token)."""
    model = create_model(name)
    info = model.attention_info()
    assert info and all(r["tokens"] >= 16 for r in info), info
    assert count_params(model) <= 10_000_000


def test_htnet_original_is_the_release_with_one_token_per_attention():
    with torch.device("meta"):
        model = create_model("htnet_original")
    assert count_params(model) == 139_582_982
    assert {r["tokens"] for r in model.attention_info()} == {1}
    assert len(model.attention_layers()) == 14


@pytest.mark.parametrize("name", WORKING)
def test_fused_and_reference_attention_agree_on_the_same_instance(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = _x(model, batch=3)
    grads = []
    for fused in (True, False):
        model.set_fused(fused)
        for _, branch in model.attention_layers():
            assert branch.fused is fused
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = grads
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize(
    "kw,tokens",
    [
        (dict(image_size=32, patch_size=2, num_hierarchies=3, block_repeats=(1, 1, 1)), {16}),
        (dict(image_size=64, patch_size=2, num_hierarchies=4, block_repeats=1, dim=8, heads=1), {16}),
        (dict(image_size=56, patch_size=4, num_hierarchies=2, block_repeats=(1, 1), attn="agent"), {49}),
        (
            dict(
                image_size=28,
                patch_size=4,
                num_hierarchies=1,
                block_repeats=2,
                layout="face",
                pos="lape",
                attn="agent",
                agent_num=16,
            ),
            {49},
        ),
    ],
    ids=["S32-L3", "S64-L4", "S56-p4-L2-agent", "S28-p4-L1-lape"],
)
def test_other_shapes(kw, tokens):
    torch.manual_seed(0)
    model = create_model("htnet_tiny", **kw)
    assert {r["tokens"] for r in model.attention_info()} == tokens
    out = model(_x(model))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.sum().backward()


def test_block_grid_that_does_not_divide_the_map_is_a_clear_error():
    with pytest.raises(ValueError, match=r"14x14 feature map cannot be split into 4x4 blocks"):
        HTNet(image_size=28, patch_size=2, num_hierarchies=3)
    with pytest.raises(ValueError, match="cannot be split into 2x2 blocks"):
        HTNet(image_size=28, patch_size=4, num_hierarchies=2)  # 7x7 map
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        HTNet(image_size=28, patch_size=3)
    with pytest.raises(ValueError, match="layout='regions'"):
        HTNet(image_size=28, patch_size=4, num_hierarchies=1, layout="regions")
    with pytest.raises(ValueError, match="agent_num=64 exceeds"):
        HTNet(image_size=28, patch_size=2, attn="agent", agent_num=64)
    with pytest.raises(ValueError, match="one per level"):
        HTNet(num_hierarchies=2, attn=("agent", "softmax", "none"))
    model = create_model("htnet_tiny")
    with pytest.raises(ValueError, match=r"input must be \(B, 3, 16, 16\)"):
        model(torch.randn(2, 3, 28, 28))


def test_per_level_options_build_what_they_say():
    model = HTNet(
        image_size=16,
        patch_size=2,
        dim=8,
        heads=2,
        num_hierarchies=2,
        block_repeats=(1, 2),
        pos=("lape", "lape+block_scalar"),
        attn=("none", "agent"),
        agent_num=(4, 9),
    )
    names = dict(model.named_parameters())
    assert "patch_embed.pos_embed" in names and "levels.0.pos_emb" not in names and "levels.0.lape" not in names
    assert "levels.1.lape" in names and "levels.1.pos_emb" in names
    assert [r["kind"] for r in model.attention_info()] == ["none", "agent", "agent"]
    assert [n for n, _ in model.attention_layers()] == ["levels.1.blocks.0.attn", "levels.1.blocks.1.attn"]
    assert model.attention_layers()[0][1].agent_num == 9
    none = HTNet(image_size=16, patch_size=2, dim=8, heads=2, pos="none")
    assert not any("pos" in n or "lape" in n for n, _ in none.named_parameters())


def test_remove_attention_really_removes_parameters_and_flops():
    torch.manual_seed(0)
    model = create_model("htnet_small_lape_agent")
    x = _x(model, batch=1)
    name, branch = model.attention_layers()[1]
    branch_params = count_params(branch) + 2 * model.cfg.dim  # + its pre-norm (weight, bias)
    before_p, before_f, before_keys = count_params(model), count_flops(model, x)["flops"], set(model.state_dict())
    model.replace_attention(name, None)
    assert count_params(model) == before_p - branch_params
    gone = before_keys - set(model.state_dict())
    assert gone and all(k.startswith(("levels.0.blocks.1.attn.", "levels.0.blocks.1.norm1.")) for k in gone)
    assert count_flops(model, x)["flops"] < before_f
    assert [n for n, _ in model.attention_layers()] == [
        "levels.0.blocks.0.attn",
        "levels.1.blocks.0.attn",
        "levels.1.blocks.1.attn",
    ]
    assert (name, None) in model.attention_layers(include_removed=True)
    # the block is now the identity branch + feed-forward
    blk = model.levels[0].blocks[1]
    t = torch.randn(4, 49, model.cfg.dim)
    torch.testing.assert_close(blk(t, (7, 7)), t + blk.mlp(blk.norm2(t)))
    out = model(x)
    assert torch.isfinite(out).all()


def test_replace_attention_with_agent_or_softmax_modules():
    torch.manual_seed(0)
    model = create_model("htnet_small")
    name = "levels.1.blocks.0.attn"
    new = AgentAttention(64, num_heads=4, agent_num=16, window=(7, 7), num_prefix_tokens=0)
    model.replace_attention(name, new)
    assert dict(model.attention_layers())[name] is new
    with pytest.raises(ValueError, match=r"window=\(7, 7\)"):
        model.replace_attention(name, AgentAttention(64, num_heads=4, agent_num=16, window=(14, 14)))
    with pytest.raises(KeyError, match="no attention layer"):
        model.replace_attention("levels.9.blocks.0.attn", None)
    model.replace_attention(name, None)
    model.replace_attention(name, SoftmaxAttention(64, 4))  # a removed slot can get a branch back
    assert model.levels[1].blocks[0].norm1 is not None
    model(_x(model)).sum().backward()
    assert new.qkv.weight.grad is None and model.levels[1].blocks[0].attn.qkv.weight.grad is not None


def test_tiny_variant_learns_a_batch():
    """The test-size model fits 24 random samples in a few dozen Adam steps (sanity of the whole graph)."""
    torch.manual_seed(0)
    model = create_model("htnet_tiny_lape_agent")
    x, y = _x(model, batch=24), torch.arange(24) % 3
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() >= 0.9


def test_fade_out_then_fold_to_identity_branch():
    """lam = 0 (branch faded to the identity) and removal with skip_scale=2 give the same outputs."""
    torch.manual_seed(0)
    model = create_model("htnet_small").eval()
    x = _x(model)
    name = model.attention_layers()[2][0]
    model.set_attention_lambda(name, 0.5)
    half = model(x)
    model.set_attention_lambda(name, 0.0)
    faded = model(x)
    assert not torch.allclose(half, faded)
    model.replace_attention(name, None, skip_scale=2.0)
    torch.testing.assert_close(model(x), faded)
    assert model.block_of(name).attn is None and model.block_of(name).attn_lambda == 1.0
    with pytest.raises(ValueError, match="removed"):
        model.set_attention_lambda(name, 0.5)
