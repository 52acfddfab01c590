"""The converter against an independent, compact re-statement of the released HTNet forward (written here
from the release's Model.py structure (docs/models.md), sharing no code with mer.models)."""

import pytest
import torch
import torch.nn as nn
from einops import rearrange

from mer.models import create_model, htnet_from_original, softmax_to_agent


# ----------------------------------------------------------------- re-statement of the released module
class _LN(nn.Module):  # channel LayerNorm, biased variance, eps 1e-5, params g, b (1, C, 1, 1)
    def __init__(self, c):
        super().__init__()
        self.g, self.b = nn.Parameter(1 + 0.1 * torch.randn(1, c, 1, 1)), nn.Parameter(0.1 * torch.randn(1, c, 1, 1))

    def forward(self, x):
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        return (x - x.mean(1, keepdim=True)) / (var + 1e-5).sqrt() * self.g + self.b


class _Pre(nn.Module):
    def __init__(self, c, fn):
        super().__init__()
        self.norm, self.fn = _LN(c), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class _FF(nn.Module):
    def __init__(self, c, m):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, c * m, 1), nn.GELU(), nn.Dropout(0.0), nn.Conv2d(c * m, c, 1), nn.Dropout(0.0)
        )

    def forward(self, x):
        return self.net(x)


class _Attn(nn.Module):
    def __init__(self, c, heads):
        super().__init__()
        self.h, d = heads, c // heads
        self.scale, inner = d**-0.5, d * heads
        self.to_qkv = nn.Conv2d(c, inner * 3, 1, bias=False)
        self.to_out = nn.Sequential(nn.Conv2d(inner, c, 1), nn.Dropout(0.0))

    def forward(self, x):
        _, _, h, w = x.shape
        q, k, v = (rearrange(t, "b (h d) x y -> b h (x y) d", h=self.h) for t in self.to_qkv(x).chunk(3, dim=1))
        a = (torch.einsum("bhid,bhjd->bhij", q, k) * self.scale).softmax(-1)
        return self.to_out(rearrange(torch.einsum("bhij,bhjd->bhid", a, v), "b h (x y) d -> b (h d) x y", x=h, y=w))


class _Transformer(nn.Module):
    def __init__(self, c, seq_len, depth, heads, m):
        super().__init__()
        self.pos_emb = nn.Parameter(torch.randn(seq_len))
        self.layers = nn.ModuleList(
            [nn.ModuleList([_Pre(c, _Attn(c, heads)), _Pre(c, _FF(c, m))]) for _ in range(depth)]
        )

    def forward(self, x):
        h, w = x.shape[-2:]
        x = x + rearrange(self.pos_emb[: h * w], "(h w) -> () () h w", h=h, w=w)
        for a, f in self.layers:
            x = a(x) + x
            x = f(x) + x
        return x


class ReleasedHTNet(nn.Module):
    def __init__(
        self, *, image_size, patch_size, num_classes, dim, heads, num_hierarchies, block_repeats, mlp_mult=4, channels=3
    ):
        super().__init__()
        fmap, L = image_size // patch_size, num_hierarchies
        seq_len = (fmap // 2 ** (L - 1)) ** 2
        mults = [2**i for i in range(L)]
        dims = [dim * m for m in mults] + [dim * mults[-1]]
        self.p = patch_size
        self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.Conv2d(channels * patch_size**2, dim, 1))
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        _Transformer(dims[i], seq_len, block_repeats[i], heads * mults[i], mlp_mult),
                        nn.Sequential(
                            nn.Conv2d(dims[i], dims[i + 1], 3, padding=1), _LN(dims[i + 1]), nn.MaxPool2d(3, 2, 1)
                        )
                        if i < L - 1
                        else nn.Identity(),
                    ]
                )
                for i in range(L)
            ]
        )
        self.mlp_head = nn.Sequential(_LN(dims[-1]), nn.Identity(), nn.Linear(dims[-1], num_classes))

    def forward(self, img):
        x = rearrange(img, "b c (h p1) (w p2) -> b (p1 p2 c) h w", p1=self.p, p2=self.p)
        x = self.to_patch_embedding(x)
        for level, (tr, agg) in zip(reversed(range(len(self.layers))), self.layers, strict=True):
            b = 2**level
            x = rearrange(x, "b c (b1 h) (b2 w) -> (b b1 b2) c h w", b1=b, b2=b)
            x = rearrange(tr(x), "(b b1 b2) c h w -> b c (b1 h) (b2 w)", b1=b, b2=b)
            x = agg(x)
        return self.mlp_head[2](self.mlp_head[0](x).mean(dim=(-2, -1)))


# ----------------------------------------------------------------------------------------------- tests
CONFIGS = {
    # the released geometry (28/7, 3 levels, heads not dividing dim) at a small width
    "released-geometry-dim12-h3": dict(
        image_size=28, patch_size=7, num_classes=3, dim=12, heads=3, num_hierarchies=3, block_repeats=(1, 1, 2)
    ),
    "dim16-h3-inner15": dict(
        image_size=28, patch_size=7, num_classes=3, dim=16, heads=3, num_hierarchies=3, block_repeats=(2, 1, 1)
    ),
    "many-tokens-16px-p2-L2": dict(
        image_size=16, patch_size=2, num_classes=5, dim=8, heads=2, num_hierarchies=2, block_repeats=(1, 2), mlp_mult=2
    ),
    "odd-map-28-p2-L2": dict(
        image_size=28, patch_size=2, num_classes=3, dim=8, heads=2, num_hierarchies=2, block_repeats=(1, 1)
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_htnet_from_original_matches_released_forward(name):
    torch.manual_seed(0)
    kw = CONFIGS[name]
    ref = ReleasedHTNet(**kw).eval()
    ours = htnet_from_original(ref.state_dict(), **kw).eval()
    x = 255 * torch.rand(3, 3, kw["image_size"], kw["image_size"])
    with torch.no_grad():
        want, got = ref(x), ours(x)
        ours.set_fused(False)
        got_ref = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    torch.testing.assert_close(got_ref, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_htnet_original_layout_maps_every_key():
    """The full released configuration (built on the meta device: no memory, no compute) converts strictly."""
    kw = dict(image_size=28, patch_size=7, dim=256, heads=3, num_hierarchies=3, block_repeats=(2, 2, 10), num_classes=3)
    with torch.device("meta"):
        ref = ReleasedHTNet(**kw)
        ours = htnet_from_original(ref.state_dict(), **kw)
    assert sum(p.numel() for p in ref.parameters()) == 139_582_982
    assert sum(p.numel() for p in ours.parameters()) == 139_582_982
    assert ours.cfg == create_model.__globals__["variant_config"]("htnet_original", layout="face")


def test_converter_rejects_foreign_keys():
    kw = CONFIGS["many-tokens-16px-p2-L2"]
    sd = ReleasedHTNet(**kw).state_dict()
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra.weight"):
        htnet_from_original(sd, **kw)
    with pytest.raises(ValueError, match="original_kwargs"):
        htnet_from_original(ReleasedHTNet(**kw).state_dict(), **{**kw, "dim": 16})


def test_softmax_to_agent_carries_weights():
    torch.manual_seed(0)
    model = create_model("htnet_tiny", dropout=0.1)
    name, sm = model.attention_layers()[0]
    agent = model.convert_attention(name, "agent", agent_num=4)
    assert model.attention_layers()[0][1] is agent and agent.agent_num == 4 and agent.window == (4, 4)
    assert torch.equal(agent.qkv.weight, sm.qkv.weight)
    assert torch.equal(agent.proj.weight, sm.proj.weight) and torch.equal(agent.proj.bias, sm.proj.bias)
    assert agent.attn_drop.p == 0.1 and agent.proj_drop.p == 0.1
    x = torch.randn(2, 3, 16, 16)
    model(x).sum().backward()
    assert agent.qkv.weight.grad is not None


def test_softmax_to_agent_explains_inner_dim_mismatch():
    from mer.models import SoftmaxAttention

    with pytest.raises(ValueError, match="inner_dim"):
        softmax_to_agent(SoftmaxAttention(16, 3), window=(4, 4), agent_num=4)


@pytest.mark.slow
def test_full_released_configuration_matches_released_forward():
    """The real 139.6M-parameter configuration end to end (about 3 s, 1.2 GB)."""
    torch.manual_seed(0)
    kw = dict(image_size=28, patch_size=7, dim=256, heads=3, num_hierarchies=3, block_repeats=(2, 2, 10), num_classes=3)
    ref = ReleasedHTNet(**kw).eval()
    ours = htnet_from_original(ref.state_dict(), **kw).eval()
    x = 255 * torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
