"""``AgentAttention`` in its hosts: the call signatures timm, Swin, PVT and HTNet use; masks it cannot honour;
the grid worked out from the token count; cross-attention (keys from a context); constructor validation with
one-line errors; torch.jit.trace and torch.export on the fused path.

Run: ``OMP_NUM_THREADS=1 python -m pytest -q tests/agentattn/modules/test_agent_attention_hosts.py``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import agentattn
from agentattn import AgentAttention
from agentattn.modules.agent_attention import infer_grid
from agentattn.ops.agent_attention.naive import agent_attention_ref

needs_ext = pytest.mark.skipif(not agentattn.backends()["extension"], reason="agentattn._C not loaded")


def _module(**kw):
    torch.manual_seed(0)
    kw = dict(dict(num_heads=2, agent_num=4, window=(4, 6)), **kw)
    m = AgentAttention(32, **kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("_bias") and p.dim() >= 4:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
    return m


# -------------------------------------------------------------------------------------- call signatures
def test_host_call_signatures_agree():
    m = _module()
    x = torch.randn(2, 24, 32, generator=torch.Generator().manual_seed(2))
    want = m(x)
    for got in (
        m(x, attn_mask=None, is_causal=False),  # timm Block
        m(x, mask=None),  # Swin
        m(x, 4, 6),  # PVT: attn(x, H, W)
        m(x, hw=(4, 6)),
        m(x, (4, 6)),
    ):  # HTNet: hw keyword or positional
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(attn_mask=torch.zeros(24, 24)), "cannot apply an attention mask"),
        (dict(mask=torch.zeros(1, 24, 24)), "cannot apply an attention mask"),
        (dict(is_causal=True), "cannot be causal"),
        (dict(H=4), "pass the grid either as forward"),
        (dict(H=4, W=6, hw=(4, 6)), "pass the grid either as forward"),
    ],
    ids=["timm_attn_mask", "swin_mask", "is_causal", "half_grid", "grid_twice"],
)
def test_what_cannot_be_honoured_is_refused(kw, msg):
    m = _module()
    with pytest.raises(ValueError, match=msg) as e:
        m(torch.randn(1, 24, 32), **kw)
    assert "\n" not in str(e.value)


def test_grid_worked_out_from_the_token_count():
    assert infer_grid(24, (4, 6)) == (4, 6)  # the window
    assert infer_grid(96, (4, 6)) == (8, 12)  # the window's aspect ratio, twice the size
    assert infer_grid(63, (14, 18)) == (7, 9)  # (14, 18) ~ 7:9
    assert infer_grid(49, (4, 6)) == (7, 7)  # else a square
    assert infer_grid(30, (4, 6)) is None  # else the caller must say hw
    m = _module(num_prefix_tokens=1)
    x = torch.randn(2, 1 + 8 * 12, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(m(x), m(x, hw=(8, 12)), rtol=0, atol=0)
    m.grid_hint = (6, 16)  # a host that knows the grid (convert.timm_vit with dynamic_img_size)
    torch.testing.assert_close(m(x), m(x, hw=(6, 16)), rtol=0, atol=0)


# -------------------------------------------------------------------------------------- cross-attention
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_cross_attention_module_matches_its_composition(fused):
    """Queries from a grid, keys and values from 77 context tokens: q = Linear(x), k, v = Linear(context),
    agents pooled from q's grid, only the query-side position biases, no depthwise conv."""
    m = _module(context_dim=48, num_prefix_tokens=1, fused=fused).double()
    assert not hasattr(m, "an_bias") and not hasattr(m, "dwc") and not hasattr(m, "qkv")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 25, 32, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 77, 48, generator=g, dtype=torch.float64)
    x.requires_grad_()
    out = m(x, context=ctx)
    q = m.q(x)
    k, v = m.kv(ctx).reshape(2, 77, 2, 32).unbind(2)
    agents = F.adaptive_avg_pool2d(q[:, 1:].reshape(2, 4, 6, 32).permute(0, 3, 1, 2), (2, 2)).flatten(2).transpose(1, 2)
    heads = lambda t: t.reshape(2, t.shape[1], 2, 16).transpose(1, 2)  # noqa: E731
    _, b2 = m.position_biases(4, 6)
    ref = agent_attention_ref(heads(q), heads(k), heads(v), heads(agents), None, b2, 16**-0.5)
    want = m.proj(ref.transpose(1, 2).reshape(2, 25, 32))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    (gx,) = torch.autograd.grad(out.sum(), x)
    (gw,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gx, gw, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"needs context \(B=2, M, 48\)"):
        m(x)
    with pytest.raises(ValueError, match="context is for cross-attention modules"):
        _module()(torch.randn(1, 24, 32), context=ctx)


# -------------------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(agent_num=0), r"agent_num must be >= 1"),
        (dict(agent_num=(0, 3)), r"agent_num must be positive"),
        (dict(window=0), r"window must be positive"),
        (dict(window=(4, -1)), r"window must be positive"),
        (dict(num_heads=0), r"num_heads must be a positive int, got 0"),
        (dict(num_prefix_tokens=-1), r"num_prefix_tokens must be an int >= 0"),
        (dict(dim=0), r"dim must be a positive int, got 0"),  # d = 0
        (dict(dim=30, num_heads=4), r"dim=30 must be divisible by num_heads=4"),
        (dict(sr_ratio=0), r"sr_ratio must be a positive int"),
        (dict(sr_ratio=8, window=4), r"window=\(4, 4\) is smaller than sr_ratio=8"),
        (dict(sr_ratio=2, num_prefix_tokens=1), r"sr_ratio=2 reduces a pure grid"),
        (dict(sr_ratio=2, context_dim=8), r"exclude each other"),
        (dict(dwc_kernel=4), r"dwc_kernel must be odd"),
        (dict(context_dim=0), r"context_dim must be a positive int or None"),
        (dict(bias_agent_grid=9, num_prefix_tokens=1), r"bias_agent_grid .* needs num_prefix_tokens=0"),
    ],
    ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else None,
)
def test_constructor_errors_are_one_line(kw, msg):
    kw = dict(dict(dim=32, num_heads=2, agent_num=4, window=4), **kw)
    with pytest.raises(ValueError, match=msg) as e:
        AgentAttention(**kw)
    assert "\n" not in str(e.value)


# -------------------------------------------------------------------------------------- tracing
@needs_ext
def test_jit_trace_and_export_on_the_fused_path():
    m = _module(num_prefix_tokens=1)
    x = torch.randn(2, 25, 32, generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning: the shape checks become constants; trace is deprecated
        traced = torch.jit.trace(m, (x,))
    kinds = [n.kind() for n in traced.graph.nodes()]
    assert "agentattn::agent_attention_fwd" in kinds and "agentattn::built_with_cuda" not in kinds
    torch.testing.assert_close(traced(x), m(x), rtol=0, atol=0)
    ep = torch.export.export(m, (x,))
    targets = [str(n.target) for n in ep.graph.nodes]
    assert "agentattn.agent_attention_fwd.default" in targets and not any("built_with_cuda" in t for t in targets)
    torch.testing.assert_close(ep.module()(x), m(x), rtol=0, atol=0)
