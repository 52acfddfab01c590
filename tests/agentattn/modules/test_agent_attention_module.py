"""``agentattn.AgentAttention`` against the reference Agent-DeiT / Agent-PVT modules (LeapLabTHU/Agent-Attention,
written out below after the original code): parameter contract, strict state_dict loading with equal outputs and
gradients, the PVT converter, hw override with bias interpolation, rectangular grids, fused/unfused parity
on the same instance (argument, attribute), state_dict round trip, errors.

Run: ``OMP_NUM_THREADS=1 python -m pytest -q tests/agentattn/modules/test_agent_attention_module.py``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import agentattn
from agentattn import AgentAttention, convert_pvt_state_dict

FUSED_OP = "agentattn.agent_attention_fwd"


# ---------------------------------------------------------------------------- the reference modules
class RefAgentDeiTAttention(nn.Module):
    """Agent-DeiT's AgentAttention (agent_deit.py) as the original writes it: a class token then a square
    window x window grid; per-batch ``.repeat`` of the biases as in the original. The only generalisation
    (for the rectangular test): ``window`` may be (h, w) and ``pool`` an (ah, aw) agent grid."""

    def __init__(
        self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0, agent_num=49, window=14, agent_grid=None
    ):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.agent_num = agent_num
        self.window = window
        wh, ww = (window, window) if isinstance(window, int) else window
        self.dwc = nn.Conv2d(in_channels=dim, out_channels=dim, kernel_size=(3, 3), padding=1, groups=dim)
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, wh, 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, ww))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, wh, 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, ww, agent_num))
        self.ac_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1))
        self.ca_bias = nn.Parameter(torch.zeros(1, num_heads, 1, agent_num))
        for p in (
            self.an_bias,
            self.na_bias,
            self.ah_bias,
            self.aw_bias,
            self.ha_bias,
            self.wa_bias,
            self.ac_bias,
            self.ca_bias,
        ):
            nn.init.trunc_normal_(p, std=0.02)
        self.softmax = nn.Softmax(dim=-1)
        pool_size = int(agent_num**0.5)
        self.pool = nn.AdaptiveAvgPool2d(output_size=agent_grid or (pool_size, pool_size))

    def forward(self, x):
        b, n, c = x.shape
        h, w = (int(n**0.5), int(n**0.5)) if isinstance(self.window, int) else self.window
        num_heads = self.num_heads
        head_dim = c // num_heads
        qkv = self.qkv(x).reshape(b, n, 3, c).permute(2, 0, 1, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        agent_tokens = self.pool(q[:, 1:, :].reshape(b, h, w, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        q = q.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        k = k.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        v = v.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        agent_tokens = agent_tokens.reshape(b, self.agent_num, num_heads, head_dim).permute(0, 2, 1, 3)

        position_bias1 = F.interpolate(self.an_bias, size=(h, w), mode="bilinear")
        position_bias1 = position_bias1.reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        position_bias2 = (self.ah_bias + self.aw_bias).reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        position_bias = position_bias1 + position_bias2
        position_bias = torch.cat([self.ac_bias.repeat(b, 1, 1, 1), position_bias], dim=-1)
        agent_attn = self.softmax((agent_tokens * self.scale) @ k.transpose(-2, -1) + position_bias)
        agent_attn = self.attn_drop(agent_attn)
        agent_v = agent_attn @ v

        agent_bias1 = F.interpolate(self.na_bias, size=(h, w), mode="bilinear")
        agent_bias1 = agent_bias1.reshape(1, num_heads, self.agent_num, -1).permute(0, 1, 3, 2).repeat(b, 1, 1, 1)
        agent_bias2 = (self.ha_bias + self.wa_bias).reshape(1, num_heads, -1, self.agent_num).repeat(b, 1, 1, 1)
        agent_bias = agent_bias1 + agent_bias2
        agent_bias = torch.cat([self.ca_bias.repeat(b, 1, 1, 1), agent_bias], dim=-2)
        q_attn = self.softmax((q * self.scale) @ agent_tokens.transpose(-2, -1) + agent_bias)
        q_attn = self.attn_drop(q_attn)
        x = q_attn @ agent_v

        x = x.transpose(1, 2).reshape(b, n, c)
        v_ = v[:, :, 1:, :].transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        x[:, 1:, :] = x[:, 1:, :] + self.dwc(v_).permute(0, 2, 3, 1).reshape(b, n - 1, c)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x


class RefAgentPVTAttention(nn.Module):
    """Agent-PVT's AgentAttention (agent_pvt.py), sr_ratio == 1: separate ``q`` and ``kv``, no class token,
    forward(x, H, W)."""

    def __init__(self, dim, num_patches, num_heads=8, qkv_bias=False, agent_num=49):
        super().__init__()
        self.dim = dim
        self.window_size = (int(num_patches**0.5), int(num_patches**0.5))
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.agent_num = agent_num
        self.dwc = nn.Conv2d(in_channels=dim, out_channels=dim, kernel_size=(3, 3), padding=1, groups=dim)
        ws = self.window_size
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, ws[0], 1))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, ws[1]))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, ws[0], 1, agent_num))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, ws[1], agent_num))
        for p in (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias):
            nn.init.trunc_normal_(p, std=0.02)
        pool_size = int(agent_num**0.5)
        self.pool = nn.AdaptiveAvgPool2d(output_size=(pool_size, pool_size))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, H, W):
        b, n, c = x.shape
        num_heads = self.num_heads
        head_dim = c // num_heads
        q = self.q(x)
        kv = self.kv(x).reshape(b, -1, 2, c).permute(2, 0, 1, 3)
        k, v = kv[0], kv[1]
        agent_tokens = self.pool(q.reshape(b, H, W, c).permute(0, 3, 1, 2)).reshape(b, c, -1).permute(0, 2, 1)
        q = q.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        k = k.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        v = v.reshape(b, n, num_heads, head_dim).permute(0, 2, 1, 3)
        agent_tokens = agent_tokens.reshape(b, self.agent_num, num_heads, head_dim).permute(0, 2, 1, 3)
        position_bias1 = F.interpolate(self.an_bias, size=self.window_size, mode="bilinear")
        position_bias1 = position_bias1.reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        position_bias2 = (self.ah_bias + self.aw_bias).reshape(1, num_heads, self.agent_num, -1).repeat(b, 1, 1, 1)
        agent_attn = self.softmax((agent_tokens * self.scale) @ k.transpose(-2, -1) + position_bias1 + position_bias2)
        agent_v = self.attn_drop(agent_attn) @ v
        agent_bias1 = F.interpolate(self.na_bias, size=self.window_size, mode="bilinear")
        agent_bias1 = agent_bias1.reshape(1, num_heads, self.agent_num, -1).permute(0, 1, 3, 2).repeat(b, 1, 1, 1)
        agent_bias2 = (self.ha_bias + self.wa_bias).reshape(1, num_heads, -1, self.agent_num).repeat(b, 1, 1, 1)
        q_attn = self.softmax((q * self.scale) @ agent_tokens.transpose(-2, -1) + agent_bias1 + agent_bias2)
        x = self.attn_drop(q_attn) @ agent_v
        x = x.transpose(1, 2).reshape(b, n, c)
        v = v.transpose(1, 2).reshape(b, H, W, c).permute(0, 3, 1, 2)
        x = x + self.dwc(v).permute(0, 2, 3, 1).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


# ------------------------------------------------------------------------------------------- helpers
def _randomise_(module, seed, bias_std=0.5):
    """Position biases large enough to matter (their init std 0.02 would hide a wrong layout)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("_bias") and p.dim() >= 4:
                p.copy_(bias_std * torch.randn(p.shape, generator=g))
    return module


def _out_and_grads(module, x, *args, **kwargs):
    """Output, dL/dx and dL/dparam for L = <out, fixed random weights>."""
    module.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    out = module(x, *args, **kwargs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1234), dtype=out.dtype)
    (out * w).sum().backward()
    grads = {
        name.removeprefix("_orig_mod."): p.grad.detach().clone()  # (torch.compile wrapper prefix)
        for name, p in module.named_parameters()
        if p.grad is not None
    }
    grads["<x>"] = x.grad
    return out.detach(), grads


def _rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _assert_same(res_a, res_b, tol, what=""):
    out_a, g_a = res_a
    out_b, g_b = res_b
    assert _rel_err(out_a, out_b) <= tol, f"{what} out: {_rel_err(out_a, out_b):.3g}"
    assert set(g_a) == set(g_b), (sorted(g_a), sorted(g_b))
    for name in g_b:
        assert g_a[name].shape == g_b[name].shape, name
        err = _rel_err(g_a[name], g_b[name])
        assert err <= tol, f"{what} d{name}: relative error {err:.3g} > {tol}"


class _OpsCalled(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def _calls_fused(fn):
    with _OpsCalled() as rec:
        fn()
    return FUSED_OP in rec.names


needs_ext = pytest.mark.skipif(not agentattn.backends()["extension"], reason="agentattn._C not loaded")


# ---------------------------------------------------------------------------------- the contract
def test_parameter_names_and_shapes_match_the_spec():
    C, H, n, win = 48, 3, 16, 5
    m = AgentAttention(C, num_heads=H, qkv_bias=True, agent_num=n, window=win, num_prefix_tokens=1)
    want = {
        "qkv.weight": (3 * C, C),
        "qkv.bias": (3 * C,),
        "proj.weight": (C, C),
        "proj.bias": (C,),
        "dwc.weight": (C, 1, 3, 3),
        "dwc.bias": (C,),
        "an_bias": (H, n, 7, 7),
        "na_bias": (H, n, 7, 7),
        "ah_bias": (1, H, n, win, 1),
        "aw_bias": (1, H, n, 1, win),
        "ha_bias": (1, H, win, 1, n),
        "wa_bias": (1, H, 1, win, n),
        "ac_bias": (1, H, n, 1),
        "ca_bias": (1, H, 1, n),
    }
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == want
    ref = RefAgentDeiTAttention(C, num_heads=H, qkv_bias=True, agent_num=n, window=win)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == want
    grid = AgentAttention(C, num_heads=H, agent_num=n, window=(4, 6), num_prefix_tokens=0)
    shapes = {k: tuple(v.shape) for k, v in grid.state_dict().items()}
    assert "ac_bias" not in shapes and "ca_bias" not in shapes and "qkv.bias" not in shapes
    assert shapes["ah_bias"] == (1, H, n, 4, 1) and shapes["wa_bias"] == (1, H, 1, 6, n)


def test_biases_are_truncated_normal_std_002():
    m = AgentAttention(64, num_heads=4, agent_num=49, window=14, num_prefix_tokens=1)
    allb = torch.cat(
        [p.detach().flatten() for name, p in m.named_parameters() if name.endswith("_bias") and p.dim() >= 4]
    )
    assert allb.numel() > 10000
    assert 0.018 < allb.std().item() < 0.022 and allb.abs().max().item() <= 2.0
    assert abs(allb.mean().item()) < 2e-3


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize(
    "cfg",
    [
        dict(dim=64, num_heads=4, agent_num=16, window=6, qkv_bias=True),
        dict(dim=192, num_heads=3, agent_num=49, window=14),
    ],
    ids=["small", "deit-t"],
)
def test_reference_deit_state_dict_loads_strict_with_same_outputs_and_grads(cfg, fused):
    if fused and not agentattn.backends()["extension"]:
        pytest.skip("agentattn._C not loaded")
    torch.manual_seed(0)
    ref = _randomise_(RefAgentDeiTAttention(**cfg), seed=1)
    ours = AgentAttention(**cfg, num_prefix_tokens=1, fused=fused)
    ours.load_state_dict(ref.state_dict(), strict=True)
    N = 1 + cfg["window"] ** 2
    x = torch.randn(2, N, cfg["dim"], generator=torch.Generator().manual_seed(2))
    res_ref = _out_and_grads(ref, x)
    res = _out_and_grads(ours, x)
    assert res[0].shape == (2, N, cfg["dim"])
    _assert_same(res, res_ref, 1e-5, "fused" if fused else "unfused")
    assert _calls_fused(lambda: ours(x)) == fused


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_convert_pvt_state_dict(qkv_bias):
    torch.manual_seed(3)
    ref = _randomise_(RefAgentPVTAttention(32, num_patches=36, num_heads=2, qkv_bias=qkv_bias, agent_num=9), seed=4)
    ours = AgentAttention(32, num_heads=2, qkv_bias=qkv_bias, agent_num=9, window=(6, 6), num_prefix_tokens=0)
    # as a sub-module of a bigger model: keys under a prefix, other modules' keys ignored
    sd = {f"blocks.1.attn.{k}": v for k, v in ref.state_dict().items()}
    sd["blocks.1.norm1.weight"] = torch.ones(32)
    sd["blocks.0.attn.q.weight"] = torch.zeros(32, 32)
    converted = convert_pvt_state_dict(sd, prefix="blocks.1.attn.")
    ours.load_state_dict(converted, strict=True)
    torch.testing.assert_close(converted["qkv.weight"][:32], ref.q.weight.detach(), rtol=0, atol=0)
    x = torch.randn(2, 36, 32, generator=torch.Generator().manual_seed(5))
    res_ref = _out_and_grads(ref, x, 6, 6)
    res = _out_and_grads(ours, x)
    grads_ref = dict(res_ref[1])
    qg = grads_ref.pop("q.weight"), grads_ref.pop("kv.weight")
    grads_ref["qkv.weight"] = torch.cat(qg)
    if qkv_bias:
        grads_ref["qkv.bias"] = torch.cat([grads_ref.pop("q.bias"), grads_ref.pop("kv.bias")])
    _assert_same(res, (res_ref[0], grads_ref), 1e-5, "pvt")
    # without a prefix
    ours2 = AgentAttention(32, num_heads=2, qkv_bias=qkv_bias, agent_num=9, window=6)
    ours2.load_state_dict(convert_pvt_state_dict(ref.state_dict()), strict=True)
    torch.testing.assert_close(ours2(x), res[0], rtol=0, atol=0)


def test_convert_pvt_state_dict_errors():
    sd = RefAgentPVTAttention(16, num_patches=16, num_heads=2, agent_num=4).state_dict()
    with_sr = {**sd, "sr.weight": torch.zeros(1), "norm.weight": torch.zeros(1)}  # sr_ratio > 1: names kept
    assert convert_pvt_state_dict(with_sr).keys() == with_sr.keys()
    with pytest.raises(ValueError, match="found only one of 'q.weight' and 'kv.weight'"):
        convert_pvt_state_dict({k: v for k, v in sd.items() if k != "kv.weight"})
    with pytest.raises(ValueError, match="no q.weight/kv.weight found"):
        convert_pvt_state_dict({k: v for k, v in sd.items() if k not in ("q.weight", "kv.weight")})
    ours = AgentAttention(16, num_heads=2, agent_num=4, window=4).state_dict()  # already converted: unchanged
    assert convert_pvt_state_dict(ours).keys() == ours.keys()


# --------------------------------------------------------------------------------- other grids
def _expected_position_biases(m, h, w):
    """Independent formulation of the biases at an (h, w) grid: bilinear resize of the 7x7 block bias plus
    a bilinear resize of the full row+column bias grid (equal to the per-axis linear resize, since
    bilinear interpolation is separable and linear)."""
    H, n = m.num_heads, m.agent_num
    wh, ww = m.window
    an = F.interpolate(m.an_bias, size=(h, w), mode="bilinear")
    rc1 = (m.ah_bias + m.aw_bias).reshape(H, n, wh, ww)
    b1 = (an + F.interpolate(rc1, size=(h, w), mode="bilinear")).reshape(1, H, n, h * w)
    na = F.interpolate(m.na_bias, size=(h, w), mode="bilinear").reshape(H, n, h * w).transpose(-2, -1)
    rc2 = (m.ha_bias + m.wa_bias).reshape(H, wh, ww, n).permute(0, 3, 1, 2)
    b2 = na + F.interpolate(rc2, size=(h, w), mode="bilinear").reshape(H, n, h * w).transpose(-2, -1)
    b2 = b2.reshape(1, H, h * w, n)
    if m.num_prefix_tokens:
        b1 = torch.cat([m.ac_bias, b1], dim=-1)
        b2 = torch.cat([m.ca_bias, b2], dim=-2)
    return b1, b2


@pytest.mark.parametrize("hw", [(6, 5), (3, 4), (4, 4)])
def test_hw_override_interpolates_biases(hw):
    torch.manual_seed(6)
    m = _randomise_(AgentAttention(32, num_heads=2, agent_num=4, window=(4, 4), num_prefix_tokens=1), seed=7).eval()
    h, w = hw
    b1, b2 = m.position_biases(h, w)
    e1, e2 = _expected_position_biases(m, h, w)
    assert b1.shape == (1, 2, 4, 1 + h * w) and b2.shape == (1, 2, 1 + h * w, 4)  # never per batch
    torch.testing.assert_close(b1, e1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b2, e2, rtol=1e-6, atol=1e-6)
    # the module at hw == a module built for (h, w) whose row/column biases hold the interpolated values
    x = torch.randn(2, 1 + h * w, 32, generator=torch.Generator().manual_seed(8))
    out = m(x, hw=hw)
    built = AgentAttention(32, num_heads=2, agent_num=4, window=hw, num_prefix_tokens=1).eval()
    sd = m.state_dict()
    with torch.no_grad():
        sd["ah_bias"] = m._resize_1d(m.ah_bias, h, 3)
        sd["aw_bias"] = m._resize_1d(m.aw_bias, w, 4)
        sd["ha_bias"] = m._resize_1d(m.ha_bias, h, 2)
        sd["wa_bias"] = m._resize_1d(m.wa_bias, w, 3)
    built.load_state_dict(sd, strict=True)
    torch.testing.assert_close(out, built(x), rtol=1e-5, atol=1e-6)
    if hw == (4, 4):
        torch.testing.assert_close(out, m(x), rtol=0, atol=0)
    else:
        with pytest.raises(ValueError, match=r"pass hw=\(h, w\)"):
            m(x)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_rectangular_window_and_agent_grid_match_reference(fused):
    if fused and not agentattn.backends()["extension"]:
        pytest.skip("agentattn._C not loaded")
    torch.manual_seed(9)
    ref = _randomise_(RefAgentDeiTAttention(24, num_heads=2, agent_num=6, window=(3, 5), agent_grid=(2, 3)), seed=10)
    ours = AgentAttention(24, num_heads=2, agent_num=(2, 3), window=(3, 5), num_prefix_tokens=1, fused=fused)
    assert ours.agent_num == 6 and ours.agent_grid == (2, 3)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 16, 24, generator=torch.Generator().manual_seed(11))
    _assert_same(_out_and_grads(ours, x), _out_and_grads(ref, x), 1e-5, "rect")


def test_rectangular_pure_grid_transposed_is_not_the_same():
    """(3, 5) and (5, 3) grids are different layouts (a module that ignored the grid shape would agree)."""
    torch.manual_seed(12)
    a = _randomise_(AgentAttention(16, num_heads=2, agent_num=4, window=(3, 5)), seed=13)
    x = torch.randn(1, 15, 16, generator=torch.Generator().manual_seed(14))
    assert not torch.allclose(a(x), a(x, hw=(5, 3)), atol=1e-4)


# ---------------------------------------------------------------------------------- fused switch
@needs_ext
def test_fused_switch_on_the_same_instance():
    """``fused`` flips the fast path on one instance (the parity tests' switch); no environment is read
    per call (AGENTATTN_BACKEND=reference, read once, is the global way to the reference)."""
    torch.manual_seed(15)
    m = _randomise_(AgentAttention(32, num_heads=2, agent_num=9, window=(5, 4), num_prefix_tokens=1), seed=16)
    x = torch.randn(2, 21, 32, generator=torch.Generator().manual_seed(17))
    assert m.fused is True and m.use_fused
    assert _calls_fused(lambda: m(x))
    res_default = _out_and_grads(m, x)
    m.fused = False
    assert not _calls_fused(lambda: m(x))
    res_unfused = _out_and_grads(m, x)
    m.fused = True
    res_fused = _out_and_grads(m, x)
    _assert_same(res_fused, res_unfused, 1e-5, "fused vs unfused")
    _assert_same(res_default, res_fused, 0.0, "default vs fused")
    m.fused = None  # None means the default, fused
    assert m.use_fused and _calls_fused(lambda: m(x))
    assert AgentAttention(32, num_heads=2, agent_num=9, window=(5, 4), fused=False).use_fused is False


@needs_ext
def test_attention_dropout_in_training_runs_the_reference_path():
    m = AgentAttention(16, num_heads=2, agent_num=4, window=4, attn_drop=0.5, fused=True)
    x = torch.randn(2, 16, 16)
    m.train()
    assert not _calls_fused(lambda: m(x))
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, m(x))  # dropout is applied
    m.eval()
    assert _calls_fused(lambda: m(x))


@needs_ext
def test_module_saves_no_per_batch_score_or_bias_tensor():
    """No (B, H, N, n) tensor is kept for backward by the fused module (the unfused one keeps several:
    checked too, so that the detector can fail). n > head_dim so a score matrix outsizes q, k and v."""
    B, C, H, n, win = 3, 16, 2, 16, 6
    m = AgentAttention(C, num_heads=H, agent_num=n, window=win, num_prefix_tokens=1)
    x = torch.randn(B, 1 + win * win, C, requires_grad=True)
    score = B * H * (1 + win * win) * n

    def biggest_saved(fused):
        m.fused = fused
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            out = m(x)
        out.sum().backward()
        return max(sizes)

    assert biggest_saved(False) >= score
    assert biggest_saved(True) < score


@needs_ext
def test_module_under_bf16_autocast():
    """Under CPU autocast the projections run in bf16; the op takes bf16 q/k/v/agents with fp32 biases."""
    torch.manual_seed(23)
    m = _randomise_(AgentAttention(32, num_heads=2, agent_num=4, window=4, num_prefix_tokens=1), seed=24)
    x = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(25))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        m.fused = False
        y_ref = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@needs_ext
def test_module_compiles_fullgraph():
    torch._dynamo.reset()
    m = _randomise_(AgentAttention(16, num_heads=2, agent_num=4, window=(3, 4), num_prefix_tokens=1), seed=18)
    x = torch.randn(2, 13, 16, generator=torch.Generator().manual_seed(19))
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    _assert_same(_out_and_grads(compiled, x), _out_and_grads(m, x), 1e-6, "compiled")


# ------------------------------------------------------------------------------------ round trip
def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(20)
    m = _randomise_(
        AgentAttention(24, num_heads=3, qkv_bias=True, agent_num=(2, 2), window=(4, 3), num_prefix_tokens=1), seed=21
    ).eval()
    x = torch.randn(2, 13, 24, generator=torch.Generator().manual_seed(22))
    path = tmp_path / "attn.pt"
    torch.save(m.state_dict(), path)
    torch.manual_seed(99)  # a fresh module starts from other weights
    fresh = AgentAttention(24, num_heads=3, qkv_bias=True, agent_num=(2, 2), window=(4, 3), num_prefix_tokens=1).eval()
    assert not torch.allclose(fresh(x), m(x))
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    torch.testing.assert_close(fresh(x), m(x), rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(m, buf)  # whole-module pickling and deepcopy keep the configuration too
    buf.seek(0)
    whole = torch.load(buf, weights_only=False)
    torch.testing.assert_close(whole(x), m(x), rtol=0, atol=0)
    torch.testing.assert_close(copy.deepcopy(m)(x), m(x), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- errors
def test_module_errors():
    with pytest.raises(ValueError, match="dim=30 must be divisible by num_heads=4"):
        AgentAttention(30, num_heads=4)
    with pytest.raises(ValueError, match=r"agent_num=12 is not a perfect square; pass an explicit agent grid"):
        AgentAttention(32, num_heads=2, agent_num=12)
    with pytest.raises(ValueError, match=r"window must be a positive int or an \(h, w\) pair"):
        AgentAttention(32, num_heads=2, agent_num=4, window=(2, 3, 4))
    m = AgentAttention(32, num_heads=2, agent_num=4, window=(3, 4), num_prefix_tokens=1)
    with pytest.raises(ValueError, match=r"x must be \(B, tokens, C=32\), got \(2, 13, 16\)"):
        m(torch.randn(2, 13, 16))
    with pytest.raises(ValueError, match=r"x must be \(B, tokens, C=32\), got \(13, 32\)"):
        m(torch.randn(13, 32))
    with pytest.raises(
        ValueError,
        match=r"x has 12 tokens: num_prefix_tokens=1 plus no grid of the window's shape "
        r"\(3, 4\) or a square; pass hw",
    ):
        m(torch.randn(2, 12, 32))
    with pytest.raises(ValueError, match=r"x has 12 tokens but the layout needs .* = 1 \+ 3\*4 = 13; pass hw"):
        m(torch.randn(2, 12, 32), hw=(3, 4))
