"""Fixtures for the tests against the authors' originals (tests/agentattn/test_convert_*.py).

``originals``: the attributed copies in tests/agentattn/originals/ (each file's header names its source repo,
path and commit), imported on first use. ``parity``: runs an original and ours on the same input in float64
and float32 and compares the output, the input's gradient and every parameter's gradient:

- float64: max |ours - original| <= 1e-12 · (1 + max |original|) per tensor;
- float32: ours against the float64 original at most 4x the float32 original's own error against it (plus
  a floor of 4 float32 ulps of the tensor's scale): the tolerance is fp32's own error, not a constant.
"""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ORIGINALS = Path(__file__).resolve().parent / "originals"
EPS32 = torch.finfo(torch.float32).eps


def _load_originals() -> SimpleNamespace:
    sys.path.insert(0, str(ORIGINALS))
    try:
        names = ("agent_deit", "agent_pvt", "agent_pvt_detection", "agent_swin", "agent_cswin", "agentsd", "timm_vit")
        return SimpleNamespace(**{n: importlib.import_module(n) for n in names})
    finally:
        sys.path.remove(str(ORIGINALS))


@pytest.fixture(scope="session")
def originals() -> SimpleNamespace:
    return _load_originals()


def randomise_biases_(module: torch.nn.Module, seed: int, std: float = 0.5) -> torch.nn.Module:
    """Position biases large enough to matter (their init std 0.02 would hide a wrong layout)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.rsplit(".", 1)[-1].endswith("_bias") and p.dim() >= 4:
                p.copy_(std * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return module


def run_with_grads(module, inputs, call, seed=1234):
    """Output, d<out, W>/dinput for every floating input and d<out, W>/dparam (W fixed random)."""
    module.zero_grad(set_to_none=True)
    xs = [x.detach().clone().requires_grad_() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs]
    out = call(module, *xs)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.dtype)
    (out * w).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in module.named_parameters() if p.grad is not None}
    for i, x in enumerate(xs):
        if torch.is_tensor(x) and x.requires_grad and x.grad is not None:
            grads[f"<input{i}>"] = x.grad
    return out.detach(), grads


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check_parity(original, ours, inputs, call_orig=None, call_ours=None, grad_map=None):
    """Compare ``ours`` with ``original`` (module docstring): outputs and all gradients, fp64 and fp32.
    ``grad_map`` turns the original's gradient dict into ours' names (e.g. the state-dict converter)."""
    call_orig = call_orig or (lambda m, *xs: m(*xs))
    call_ours = call_ours or call_orig
    grad_map = grad_map or (lambda g: g)
    res = {}
    for dtype in (torch.float64, torch.float32):
        cast = [x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs]
        o = copy.deepcopy(original).to(dtype)
        u = copy.deepcopy(ours).to(dtype)
        out_o, g_o = run_with_grads(o, cast, call_orig)
        out_u, g_u = run_with_grads(u, cast, call_ours)
        g_o = {k: v for k, v in grad_map(dict(g_o)).items()}
        res[dtype] = (out_o, g_o, out_u, g_u)
    out64, g64, ours64, gu64 = res[torch.float64]
    out32, g32, ours32, gu32 = res[torch.float32]
    assert set(gu64) == set(g64), f"gradients differ in names: ours {sorted(set(gu64) ^ set(g64))}"
    report = {}
    for name in ["<out>"] + sorted(g64):
        ref = out64 if name == "<out>" else g64[name]
        o64 = ours64 if name == "<out>" else gu64[name]
        o32 = ours32 if name == "<out>" else gu32[name]
        r32 = out32 if name == "<out>" else g32[name]
        assert o64.shape == ref.shape, name
        scale = 1.0 + ref.abs().max().item()
        e64 = _max_err(o64, ref)
        assert e64 <= 1e-12 * scale, f"{name}: fp64 error {e64:.3g} > 1e-12 * {scale:.3g}"
        e_ours, e_orig = _max_err(o32, ref), _max_err(r32, ref)
        bound = 4 * e_orig + 4 * EPS32 * scale
        assert e_ours <= bound, f"{name}: fp32 error {e_ours:.3g} > 4 x the original's fp32 error {e_orig:.3g} + floor"
        report[name] = (e64, e_ours, e_orig)
    return report


@pytest.fixture
def parity():
    return SimpleNamespace(check=check_parity, randomise=randomise_biases_, run=run_with_grads)
