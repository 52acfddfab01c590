"""The CPU agent-attention op (``agentattn.agent_attention`` -> ``agentattn._C``) against the fp64 reference.

Covers: outputs and every gradient (q, k, v, agents, both biases) in fp64 and fp32 over awkward shapes and
bias broadcasts, with the CPU allocator junk-filling every new buffer (fp32 NaN, fp64 1.7e308) so that an
unwritten output element or a read of uninitialised scratch shows up; gradcheck; torch.library.opcheck;
torch.compile(fullgraph=True); the registered FLOP formula; non-contiguous inputs; what the forward saves
for backward; the ValueErrors; hypothesis-drawn shapes; backend selection and the reference fallback.

Run: ``OMP_NUM_THREADS=1 python -m pytest -q tests/agentattn/ops/test_agent_attention_cpu.py``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import agentattn
from agentattn import _ext
from agentattn.ops.agent_attention import op as aa_op
from agentattn.ops.agent_attention.naive import (
    agent_attention_ref,
    agent_attention_ref_stats,
    agent_attention_sdpa,
)

HAS_EXT = _ext.has_ext()
needs_ext = pytest.mark.skipif(not HAS_EXT, reason=f"agentattn._C not loaded ({_ext._load_error})")
EPS32 = torch.finfo(torch.float32).eps
GRAD_NAMES = ("q", "k", "v", "agents", "bias_agent", "bias_query")


# ------------------------------------------------------------------------------------------- helpers
def _junk_fill_flag():
    """c10's ``FLAGS_caffe2_cpu_allocator_do_junk_fill``: when set, every CPU allocation (``at::empty`` in
    the C++ kernel included) is filled with 0x7fedbeef, a NaN in fp32 and 1.7e308 in fp64."""
    lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so"))
    return ctypes.c_bool.in_dll(lib, "FLAGS_caffe2_cpu_allocator_do_junk_fill")


@pytest.fixture
def poisoned():
    flag = _junk_fill_flag()
    old = flag.value
    flag.value = True
    try:
        yield
    finally:
        flag.value = old


def _make(B, H, N, n, d, b1_shape, b2_shape, seed=0):
    """fp64 inputs; a bias shape of None means no bias. Biases are scaled to matter but not dominate."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, N, d), mk(B, H, N, d), mk(B, H, n, d)
    b1 = None if b1_shape is None else 0.7 * mk(*b1_shape)
    b2 = None if b2_shape is None else 0.7 * mk(*b2_shape)
    return [q, k, v, a, b1, b2]


def _run(fn, inputs, grad_out, dtype, **kw):
    """out and the gradient of every non-None input, all as fp64."""
    xs = [None if t is None else t.to(dtype).clone().requires_grad_() for t in inputs]
    out = fn(*xs, **kw)
    out.backward(grad_out.to(dtype))
    grads = [None if x is None else x.grad for x in xs]
    return out.detach(), grads


def _reference(inputs, grad_out, scale=None):
    return _run(agent_attention_ref, inputs, grad_out, torch.float64, scale=scale)


def _grad_out(shape, seed=99):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _OpsCalled(TorchDispatchMode):
    """Records the names of the aten/custom ops that run below autograd."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


# cases: B, H, N, n, d, bias_agent shape, bias_query shape (None = no bias)
CASES = [
    (2, 3, 49, 9, 32, (1, 3, 9, 49), (1, 3, 49, 9)),  # 7x7 grid, biases shared over the batch
    (2, 2, 196, 16, 48, (1, 1, 16, 196), (2, 2, 196, 16)),  # d = 48; b1 shared by all, b2 full
    (2, 3, 197, 49, 64, (1, 3, 49, 197), (1, 3, 197, 49)),  # DeiT-T: 14x14 grid + class token
    (3, 1, 197, 16, 48, (3, 1, 16, 197), None),  # full bias_agent only
    (2, 2, 49, 49, 64, None, (2, 1, 49, 49)),  # n == N; b2 broadcast over heads
    (1, 2, 196, 9, 32, (2, 9, 196), (2, 1, 9)),  # 3-D biases; bias_query shared by all rows
    (1, 1, 3136, 49, 32, (1, 1, 49, 3136), (1, 1, 3136, 49)),  # Swin-T stage 1 token count (tiny B, H)
    (1, 2, 3136, 9, 32, None, None),  # Swin-T stage 1, n = 9, no biases
]


def _case_id(c):
    B, H, N, n, d, b1, b2 = c
    fmt = lambda s: "x".join(map(str, s)) if s else "none"  # noqa: E731
    return f"B{B}-H{H}-N{N}-n{n}-d{d}-b1_{fmt(b1)}-b2_{fmt(b2)}"


def _check_grad_shapes(grads, inputs):
    for name, g, x in zip(GRAD_NAMES, grads, inputs, strict=True):
        if x is None:
            assert g is None, name
        else:
            assert g is not None and g.shape == x.shape, f"d{name}: {None if g is None else g.shape} vs {x.shape}"


# ------------------------------------------------------------------------------------- the extension
def test_extension_is_built_unless_disabled():
    """A broken build must fail here rather than silently skip every fused test below."""
    if os.environ.get("AGENTATTN_DISABLE_EXT") == "1":
        pytest.skip("AGENTATTN_DISABLE_EXT=1")
    info = agentattn.backends()
    assert info["extension"] is True, info["extension_error"]
    assert info["cpu"] == ["cpp", "reference"]
    assert info["extension_error"] is None
    assert info["cuda"][-1] == "reference"
    assert isinstance(info["cuda_kernels_built"], bool) and isinstance(info["triton"], bool)


def test_junk_fill_poisons_new_allocations(poisoned):
    """The poisoning the numeric tests rely on is in force (else they could not see unwritten elements)."""
    assert torch.isnan(torch.empty(1000)).all()
    assert (torch.empty(1000, dtype=torch.float64) > 1e300).all()


def test_reference_matches_independent_formulas():
    """naive.py (the oracle below) against a per-(b, h) loop of plain softmaxes and two SDPA calls."""
    q, k, v, a, b1, b2 = _make(2, 2, 13, 5, 8, (1, 2, 5, 13), (2, 1, 13, 5), seed=3)
    s = 0.37
    want = torch.empty_like(q)
    for b in range(2):
        for h in range(2):
            p1 = torch.softmax(s * a[b, h] @ k[b, h].T + b1[0, h], dim=1)
            p2 = torch.softmax(s * q[b, h] @ a[b, h].T + b2[b, 0], dim=1)
            want[b, h] = p2 @ (p1 @ v[b, h])
    torch.testing.assert_close(agent_attention_ref(q, k, v, a, b1, b2, s), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(agent_attention_sdpa(q, k, v, a, b1, b2, s), want, rtol=1e-12, atol=1e-12)
    out, agent_v, lse1, lse2 = agent_attention_ref_stats(q, k, v, a, b1, b2, s)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse1, torch.logsumexp(s * a @ k.transpose(-2, -1) + b1, -1), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------ fused vs the fp64 reference
@needs_ext
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fp64_matches_reference(case, poisoned):
    B, H, N, n, d, b1s, b2s = case
    inputs = _make(*case)
    g = _grad_out((B, H, N, d))
    ref_out, ref_grads = _reference(inputs, g)
    out, grads = _run(agentattn.agent_attention, inputs, g, torch.float64, backend="cpp")
    assert out.dtype == torch.float64 and out.shape == (B, H, N, d)
    _check_grad_shapes(grads, inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-11)
    for name, x, y in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        if y is not None:
            torch.testing.assert_close(
                x, y, rtol=1e-9, atol=1e-10 * (1 + y.abs().max().item()), msg=lambda m: f"d{name}: {m}"
            )


def fp32_bound(plain: float) -> float:
    """The largest fp32 error (vs fp64, relative to the tensor's largest entry) the fused kernel may have,
    given the plain fp32 PyTorch composition's error on the same inputs: 3x that, the plain error taken as
    at least 2 eps (a lucky plain result must not push the bound below fp32 itself).

    Measured (torch 2.13, AMD EPYC Zen 4, every ISA path): fused out 2-5 eps, grads 2-8 eps; plain fp32
    composition 2-5 eps; the largest ratio 2.4 (dq at n = 9, from the flash-style backward, which rebuilds
    the probabilities from the log-sum-exp and takes D = rowsum(dO * O))."""
    return 3.0 * max(plain, 2 * EPS32)


@needs_ext
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fp32_matches_fp64_reference(case, poisoned):
    """fp32 error vs fp64, relative to each tensor's largest entry, within fp32_bound of the plain fp32
    composition's error on the same inputs."""
    B, H, N, n, d, b1s, b2s = case
    inputs = _make(*case, seed=1)
    g = _grad_out((B, H, N, d), seed=7)
    scale = 0.6 * d**-0.5  # a non-default scale
    ref_out, ref_grads = _reference(inputs, g, scale=scale)
    plain_out, plain_grads = _run(agent_attention_ref, inputs, g, torch.float32, scale=scale)
    out, grads = _run(agentattn.agent_attention, inputs, g, torch.float32, scale=scale, backend="cpp")
    assert out.dtype == torch.float32
    _check_grad_shapes(grads, inputs)
    for name, x, p, r in zip(
        ("out",) + GRAD_NAMES, [out] + grads, [plain_out] + plain_grads, [ref_out] + ref_grads, strict=True
    ):
        if r is None:
            continue
        assert torch.isfinite(x).all(), name
        top = r.abs().max().item()
        err = (x.double() - r).abs().max().item() / top
        plain = (p.double() - r).abs().max().item() / top
        assert err <= fp32_bound(plain), (
            f"{name}: {err / EPS32:.1f} eps vs plain fp32 composition {plain / EPS32:.1f} eps"
        )


@pytest.fixture
def three_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@needs_ext
@pytest.mark.parametrize(
    "case",
    [
        (3, 2, 197, 16, 48, (1, 1, 16, 197), (1, 2, 197, 16)),
        (2, 3, 300, 9, 32, (2, 1, 9, 300), (1, 1, 300, 9)),
        (1, 1, 3136, 49, 32, (1, 1, 49, 3136), (1, 1, 3136, 49)),
    ],
    ids=_case_id,
)
def test_multithreaded_matches_reference(case, three_threads, poisoned):
    """The parallel paths (tasks split over threads, per-thread partial sums of broadcast bias gradients,
    row blocks of one (b, h)) run only with more than one thread; the other tests use OMP_NUM_THREADS=1."""
    assert torch.get_num_threads() == 3
    B, H, N, n, d, _, _ = case
    inputs = _make(*case, seed=21)
    g = _grad_out((B, H, N, d), seed=22)
    ref_out, ref_grads = _reference(inputs, g)
    out, grads = _run(agentattn.agent_attention, inputs, g, torch.float64, backend="cpp")
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-11)
    for name, x, y in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        torch.testing.assert_close(
            x, y, rtol=1e-9, atol=1e-10 * (1 + y.abs().max().item()), msg=lambda m: f"d{name}: {m}"
        )


# float32 forward paths: two score layouts (token-major: agents padded to 8 in the lanes, the default when
# n % 8 == 0; agent-major: tokens in the lanes, K/Q tiles packed transposed, the default otherwise), batch
# groups sharing the bias tiles (biases with batch dim 1), key chunks + merge (few slices), 1 and 3 threads.
FWD_PATH_CASES = [
    (5, 3, 200, 9, 32, (1, 3, 9, 200), (1, 3, 200, 9)),  # shared biases: batch groups, 5 not a multiple
    (4, 2, 197, 49, 64, (1, 1, 49, 197), (1, 2, 197, 49)),  # b1 shared by all heads too
    (3, 2, 130, 25, 32, (3, 2, 25, 130), (1, 2, 130, 25)),  # full b1: one slice per task
    (2, 2, 301, 16, 40, None, (1, 2, 301, 16)),  # n % 8 == 0; d = 40 (32 + 8 lanes)
    (1, 1, 3136, 9, 32, (1, 1, 9, 3136), None),  # one slice: key chunks on threads, merged
    (2, 1, 77, 3, 24, (1, 1, 3, 77), (2, 1, 77, 3)),  # n < 8; N not a multiple of 8
]


@needs_ext
@pytest.mark.parametrize("layout", ["token", "agent"])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("case", FWD_PATH_CASES, ids=_case_id)
def test_fp32_forward_paths_match_reference(case, threads, layout, poisoned):
    """out, V_A and both log-sum-exp statistics of every float32 forward path against the fp64 reference,
    within fp32_bound of the plain fp32 composition (the layout forced through _cpu_set_options, the
    switch AGENTATTN_CPU_FWD_LAYOUT sets once per process; the ISA paths: test_agent_attention_cpu_isa.py)."""
    before = torch.ops.agentattn._cpu_set_options("", layout, "")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        B, H, N, n, d, _, _ = case
        inputs = _make(*case, seed=31)
        scale = d**-0.5
        ref = agent_attention_ref_stats(*inputs, scale)
        x32 = [None if t is None else t.float().contiguous() for t in inputs]
        plain = agent_attention_ref_stats(*x32, scale)
        got = torch.ops.agentattn.agent_attention_fwd(*x32, scale)
    finally:
        torch.set_num_threads(old)
        torch.ops.agentattn._cpu_set_options("", before[1].split("=")[1], "")
    for name, x, r, p in zip(("out", "agent_v", "lse_agent", "lse_query"), got, ref, plain, strict=True):
        assert x.dtype == torch.float32 and x.shape == r.shape, name
        top = r.abs().max().item()
        err = (x.double() - r).abs().max().item() / top
        base = (p.double() - r).abs().max().item() / top
        assert err <= fp32_bound(base), (
            f"{name}: {err / EPS32:.1f} eps, plain {base / EPS32:.1f} eps ({layout}, {threads} threads)"
        )


@needs_ext
def test_low_precision_inputs_run_through_fp32():
    q, k, v, a, b1, b2 = _make(2, 2, 30, 4, 16, (1, 2, 4, 30), None, seed=5)
    ref = agent_attention_ref(q, k, v, a, b1, b2)
    for dt, tol in ((torch.bfloat16, 3e-2), (torch.float16, 4e-3)):
        xs = [t.to(dt).requires_grad_() for t in (q, k, v, a, b1)]
        out = agentattn.agent_attention(*xs, None, backend="cpp")
        assert out.dtype == dt
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
        out.sum().backward()
        assert all(x.grad is not None and x.grad.dtype == dt for x in xs)


@needs_ext
def test_noncontiguous_inputs_and_grad(poisoned):
    """q, k, v as head-split views of (B, N, 3, H, d), agents a strided slice, biases transposed views,
    a broadcast (stride-0) output gradient."""
    B, H, N, n, d = 2, 3, 50, 6, 16
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(B, N, 3, H, d, generator=gen, dtype=torch.float64)
    a_big = torch.randn(B, H, 2 * n, d + 3, generator=gen, dtype=torch.float64)
    b1_t = torch.randn(1, H, N, n, generator=gen, dtype=torch.float64)  # bias_agent = b1_t.transpose(-2, -1)
    b2_t = torch.randn(H, n, N, generator=gen, dtype=torch.float64)  # bias_query = b2_t.transpose(-2, -1)
    g_row = torch.randn(1, 1, N, d, generator=gen, dtype=torch.float64)

    def build(dtype):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (qkv, a_big, b1_t, b2_t)]
        x, ab, t1, t2 = leaves
        q, k, v = (x[:, :, i].permute(0, 2, 1, 3) for i in range(3))
        args = (q, k, v, ab[:, :, ::2, 1 : d + 1], t1.transpose(-2, -1), t2.transpose(-2, -1))
        assert not any(t.is_contiguous() for t in args)
        return leaves, args

    leaves_r, args_r = build(torch.float64)
    out_r = agent_attention_ref(*args_r)
    out_r.backward(g_row.expand(B, H, N, d))
    leaves, args = build(torch.float64)
    out = agentattn.agent_attention(*args, backend="cpp")
    out.backward(g_row.expand(B, H, N, d))
    torch.testing.assert_close(out, out_r.detach(), rtol=1e-10, atol=1e-10)
    for name, x, y in zip(("qkv", "agents", "bias_agent", "bias_query"), leaves, leaves_r, strict=True):
        torch.testing.assert_close(
            x.grad, y.grad, rtol=1e-10, atol=1e-10 * y.grad.abs().max().item(), msg=lambda m: f"d{name}: {m}"
        )
    # float32: within fp32_bound of the plain fp32 composition's error on the same strided inputs
    leaves_p, args_p = build(torch.float32)
    out_p = agent_attention_ref(*args_p)
    out_p.backward(g_row.float().expand(B, H, N, d))
    leaves, args = build(torch.float32)
    out = agentattn.agent_attention(*args, backend="cpp")
    out.backward(g_row.float().expand(B, H, N, d))
    got = [("out", out.detach(), out_p.detach(), out_r.detach())] + [
        (f"d{name}", x.grad, p.grad, y.grad)
        for name, x, p, y in zip(("qkv", "agents", "bias_agent", "bias_query"), leaves, leaves_p, leaves_r, strict=True)
    ]
    for name, x, p, r in got:
        top = r.abs().max().item()
        err = (x.double() - r).abs().max().item() / top
        plain = (p.double() - r).abs().max().item() / top
        assert err <= fp32_bound(plain), f"{name}: {err / EPS32:.1f} eps, plain fp32 {plain / EPS32:.1f} eps"


@needs_ext
def test_only_some_inputs_require_grad():
    q, k, v, a, b1, b2 = _make(1, 2, 20, 4, 8, (1, 2, 4, 20), (1, 2, 20, 4), seed=12)
    qr = q.clone().requires_grad_()
    b2r = b2.clone().requires_grad_()
    agentattn.agent_attention(qr, k, v, a, b1, b2r, backend="cpp").sum().backward()
    q2, b22 = q.clone().requires_grad_(), b2.clone().requires_grad_()
    agent_attention_ref(q2, k, v, a, b1, b22).sum().backward()
    torch.testing.assert_close(qr.grad, q2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b2r.grad, b22.grad, rtol=1e-10, atol=1e-12)


@needs_ext
def test_empty_token_dimension_gives_zero_agent_grad(poisoned):
    """N = 0: the output is empty and every gradient is zero (the agents' gradient included)."""
    q, k, v, a, b1, b2 = _make(1, 2, 0, 3, 4, (1, 2, 3, 0), (1, 2, 0, 3))
    xs = [t.clone().requires_grad_() for t in (q, k, v, a, b1, b2)]
    out = agentattn.agent_attention(*xs)
    assert out.shape == (1, 2, 0, 4)
    out.sum().backward()
    assert xs[3].grad is not None and torch.equal(xs[3].grad, torch.zeros_like(a))


_N0_OP_CHECK = """
import ctypes, os, torch, agentattn
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so"))
ctypes.c_bool.in_dll(lib, "FLAGS_caffe2_cpu_allocator_do_junk_fill").value = True
q = torch.randn(1, 1, 0, 4, dtype=torch.float64)
a = torch.randn(1, 1, 3, 4, dtype=torch.float64)
out, agent_v, l1, l2 = torch.ops.agentattn.agent_attention_fwd(q, q, q, a, None, None, 0.5)
assert out.shape == (1, 1, 0, 4) and torch.equal(agent_v, torch.zeros_like(a)), agent_v
g = torch.ops.agentattn.agent_attention_bwd(torch.zeros_like(out), q, q, q, a, None, None, out, agent_v, l1, l2, 0.5)
assert torch.equal(g[3], torch.zeros_like(a)), g[3]
print("OK")
"""


@needs_ext
def test_raw_op_with_no_tokens():
    # in a subprocess: this once crashed the interpreter (SIGFPE in the stage-1 chunking)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _N0_OP_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), f"rc={res.returncode}: {res.stderr[-1500:]}"


@needs_ext
def test_broadcast_bias_gradients_are_reproducible_with_threads():
    # per-thread partial sums of a broadcast bias gradient must be combined in a fixed order (they were
    # not under dynamic scheduling: ESAAT's determinism test then failed at random with 2 threads)
    q, k, v, a, b1, b2 = _make(6, 2, 49, 9, 16, (1, 2, 9, 49), (1, 1, 49, 9), seed=11)
    xs = [t.requires_grad_() for t in (q, k, v, a, b1, b2)]
    g = torch.randn_like(q)
    old = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        runs = []
        for _ in range(8):
            out = agentattn.agent_attention(*xs, backend="cpp")
            runs.append([out, *torch.autograd.grad(out, xs, g)])
    finally:
        torch.set_num_threads(old)
    for r in runs[1:]:
        for name, x0, x1 in zip(("out", "q", "k", "v", "agents", "bias_agent", "bias_query"), runs[0], r, strict=True):
            assert torch.equal(x0, x1), f"{name} differs between identical calls"


# ----------------------------------------------------------------------------------- autograd checks
@needs_ext
@pytest.mark.parametrize(
    "b1s,b2s",
    [((1, 2, 3, 7), (2, 1, 7, 3)), (None, None), ((3, 7), (1, 1, 7, 1))],
    ids=["broadcast", "none", "low-rank-broadcast"],
)
def test_gradcheck_fp64(b1s, b2s):
    inputs = _make(2, 2, 7, 3, 5, b1s, b2s, seed=4)
    xs = tuple(None if t is None else t.requires_grad_() for t in inputs)
    fn = lambda *t: agentattn.agent_attention(*t, scale=0.8, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-7, rtol=1e-5)


@needs_ext
@pytest.mark.parametrize(
    "dtype,biases", [(torch.float32, True), (torch.float64, False)], ids=["fp32-biases", "fp64-no-bias"]
)
def test_opcheck(dtype, biases):
    q, k, v, a, b1, b2 = _make(2, 2, 11, 3, 8, (1, 2, 3, 11) if biases else None, (2, 2, 11, 3) if biases else None)
    args = [None if t is None else t.to(dtype).requires_grad_() for t in (q, k, v, a, b1, b2)]
    # the dynamic-shape AOT check (seconds) once; schema, autograd registration and fake tensors for both
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    utils += ("test_aot_dispatch_dynamic",) if biases else ()
    torch.library.opcheck(torch.ops.agentattn.agent_attention_fwd.default, (*args, 0.3), test_utils=utils)
    with torch.no_grad():
        out, agent_v, l1, l2 = torch.ops.agentattn.agent_attention_fwd(*args, 0.3)
    plain = [None if t is None else t.detach() for t in args]
    torch.library.opcheck(
        torch.ops.agentattn.agent_attention_bwd.default,
        (torch.ones_like(out), *plain, out, agent_v, l1, l2, 0.3),
        test_utils=utils,
    )


@needs_ext
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    inputs = _make(2, 3, 29, 4, 16, (1, 3, 4, 29), (1, 1, 29, 4), seed=6)
    g = _grad_out((2, 3, 29, 16))
    fn = torch.compile(agentattn.agent_attention, fullgraph=True, backend=backend)
    out_c, grads_c = _run(fn, inputs, g, torch.float32)
    out_e, grads_e = _run(agentattn.agent_attention, inputs, g, torch.float32)
    torch.testing.assert_close(out_c, out_e)
    for name, x, y in zip(GRAD_NAMES, grads_c, grads_e, strict=True):
        torch.testing.assert_close(x, y, msg=lambda m: f"d{name}: {m}")


def test_backend_query_is_marked_constant_for_dynamo_without_importing_it():
    """op.py marks its availability query the way torch.compiler.assume_constant_result does, and importing
    agentattn does not import torch._dynamo (seconds of start-up)."""

    def probe():
        return 1

    assert torch.compiler.assume_constant_result(probe) is probe
    marks = {k: v for k, v in vars(probe).items()}
    assert marks and all(getattr(aa_op._available, k, None) == v for k, v in marks.items()), marks
    res = subprocess.run(
        [sys.executable, "-c", "import sys, agentattn; print('torch._dynamo' in sys.modules)"],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.stdout.strip() == "False", res.stdout + res.stderr


@needs_ext
def test_torch_compile_inductor_forward():  # ~4 s with a cold inductor cache (2-core Zen 4, loaded)
    torch._dynamo.reset()
    q, k, v, a, b1, b2 = (None if t is None else t.float() for t in _make(2, 3, 49, 9, 32, (1, 3, 9, 49), None))
    fn = torch.compile(agentattn.agent_attention, fullgraph=True, backend="inductor")
    with torch.no_grad():
        torch.testing.assert_close(fn(q, k, v, a, b1, b2), agentattn.agent_attention(q, k, v, a, b1, b2))


@needs_ext
def test_compiled_graph_calls_the_fused_op():
    """The fullgraph trace keeps the custom op (it is not decomposed into the reference composition)."""
    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm

    q, k, v, a, b1, b2 = (None if t is None else t.float() for t in _make(1, 2, 10, 3, 8, (1, 2, 3, 10), None))
    torch.compile(agentattn.agent_attention, fullgraph=True, backend=capture)(q, k, v, a, b1, b2)
    assert len(graphs) == 1
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert any("agentattn.agent_attention_fwd" in t for t in targets), targets


@needs_ext
def test_flop_counter_uses_registered_formula():
    B, H, N, n, d = 2, 3, 40, 9, 16
    q, k, v, a, b1, b2 = (
        None if t is None else t.float().requires_grad_() for t in _make(B, H, N, n, d, (1, 3, 9, 40), None)
    )
    with FlopCounterMode(display=False) as fc:
        out = agentattn.agent_attention(q, k, v, a, b1, b2, backend="cpp")
        out.backward(torch.ones_like(out))
    counts = {str(op): c for op, c in fc.get_flop_counts()["Global"].items()}
    fwd = 8 * B * H * N * n * d
    assert counts.get("agentattn.agent_attention_fwd") == fwd, counts
    assert counts.get("agentattn.agent_attention_bwd") == 2 * fwd, counts
    assert fc.get_total_flops() == 3 * fwd
    with FlopCounterMode(display=False) as fc_ref:  # the reference path counts its four matmuls the same way
        agentattn.agent_attention(q, k, v, a, b1, b2, backend="reference")
    assert fc_ref.get_total_flops() == fwd


@needs_ext
def test_forward_saves_no_score_sized_tensor():
    """Nothing of B·H·N·n elements is kept for backward (the reference composition keeps several; the
    detector is checked on it so that this test can fail)."""
    B, H, N, n, d = 3, 2, 64, 16, 4  # n > d: a score matrix outsizes q, k, v and out
    inputs = _make(B, H, N, n, d, (1, H, n, N), (1, H, N, n))
    xs = [t.float().requires_grad_() for t in inputs]

    def saved_sizes(fn):
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(*xs)
        out.sum().backward()
        return sizes

    score = B * H * N * n
    ref_sizes = saved_sizes(agent_attention_ref)
    assert max(ref_sizes) >= score  # the detector sees the reference's probability matrices
    fused_sizes = saved_sizes(lambda *t: agentattn.agent_attention(*t, backend="cpp"))
    assert fused_sizes, "no tensors saved at all: the hook did not see the fused op's saved tensors"
    assert max(fused_sizes) < score, sorted(fused_sizes)
    # inputs, out, agent_v and the two log-sum-exp vectors, the biases at their (1, H, ...) size
    assert sum(fused_sizes) <= 5 * B * H * N * d + B * H * n * d + B * H * (N + n) + 2 * H * N * n


# -------------------------------------------------------------------------------------------- errors
def _valid(B=2, H=3, N=16, n=4, d=8):
    return _make(B, H, N, n, d, (1, H, n, N), (1, H, N, n))


def _with(i, value):
    def mod(args):
        args = list(args)
        args[i] = value(args) if callable(value) else value
        return args

    return mod


ERROR_CASES = [
    ("q-rank", _with(0, lambda a: a[0][0]), r"q must be 4-D \(B, H, N, d\), got shape \(3, 16, 8\)"),
    ("k-shape", _with(1, lambda a: a[1][..., :4]), r"k must be \(B, H, M, d\) = \(2, 3, M, 8\) .*got \(2, 3, 16, 4\)"),
    ("v-shape", _with(2, lambda a: a[2][:, :, :15]), r"v must have k's shape .*\(2, 3, 16, 8\), got \(2, 3, 15, 8\)"),
    ("agents-rank", _with(3, lambda a: a[3][0]), r"agents must be 4-D \(B, H, n, d\), got shape \(3, 4, 8\)"),
    (
        "agents-d",
        _with(3, lambda a: a[3][..., :6]),
        r"agents must be \(B, H, n, d\) = \(2, 3, n, 8\), got \(2, 3, 4, 6\)",
    ),
    ("agents-B", _with(3, lambda a: a[3][:1]), r"agents must be \(B, H, n, d\) = \(2, 3, n, 8\), got \(1, 3, 4, 8\)"),
    ("agents-empty", _with(3, lambda a: a[3][:, :, :0]), r"agents must hold at least one agent token"),
    ("d-zero", lambda a: [t[..., :0] for t in a[:4]] + [None, None], r"need a head dim d >= 1, got d = 0"),
    ("k-dtype", _with(1, lambda a: a[1].float()), r"k dtype torch.float32 differs from q dtype torch.float64"),
    ("int-dtype", lambda a: [t.int() for t in a[:4]] + [None, None], r"q must be a floating-point tensor.*torch.int32"),
    ("v-device", _with(2, lambda a: a[2].to("meta")), r"v is on meta but q is on cpu"),
    (
        "bias_agent-shape",
        _with(4, lambda a: a[4][:, :, :3]),
        r"bias_agent must be broadcastable to \(B, H, rows, cols\) = \(2, 3, 4, 16\), got \(1, 3, 3, 16\)",
    ),
    (
        "bias_agent-swapped",
        _with(4, lambda a: a[5]),
        r"bias_agent must be broadcastable to \(B, H, rows, cols\) = \(2, 3, 4, 16\), got \(1, 3, 16, 4\)",
    ),
    (
        "bias_query-rank",
        _with(5, lambda a: a[5][None]),
        r"bias_query must be broadcastable to \(2, 3, 16, 4\), got 5-D",
    ),
    ("bias_query-device", _with(5, lambda a: a[5].to("meta")), r"bias_query is on meta but q is on cpu"),
    ("bias_agent-dtype", _with(4, lambda a: a[4].long()), r"bias_agent must be floating point, got torch.int64"),
]


@pytest.mark.parametrize("name,mod,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_bad_input_raises_value_error(name, mod, match):
    args = mod(_valid())
    with pytest.raises(ValueError, match=match):
        agentattn.agent_attention(*args)


def test_bad_types_and_backend_names():
    args = _valid()
    with pytest.raises(TypeError, match="k must be a torch.Tensor, got list"):
        agentattn.agent_attention(args[0], [1.0], *args[2:])
    with pytest.raises(TypeError, match="bias_query must be a torch.Tensor or None, got float"):
        agentattn.agent_attention(*args[:5], 0.5)
    with pytest.raises(ValueError, match=r"backend must be one of .*'reference'.*got 'fast'"):
        agentattn.agent_attention(*args, backend="fast")
    with pytest.raises(ValueError, match=r"backend 'cuda' is not available for cpu tensors here; available: \["):
        agentattn.agent_attention(*args, backend="cuda")


# ------------------------------------------------------------------------------------ hypothesis
_BIAS_KINDS = ["none", "1,1", "1,H", "B,1", "B,H", "rows-bcast"]


def _bias_shape(kind, B, H, rows, cols):
    return {
        "none": None,
        "1,1": (1, 1, rows, cols),
        "1,H": (1, H, rows, cols),
        "B,1": (B, 1, rows, cols),
        "B,H": (B, H, rows, cols),
        "rows-bcast": (H, 1, cols),
    }[kind]


@needs_ext
@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 3),
    N=st.integers(1, 150),
    n=st.integers(1, 20),
    d=st.integers(1, 40),
    k1=st.sampled_from(_BIAS_KINDS),
    k2=st.sampled_from(_BIAS_KINDS),
    scale=st.floats(0.05, 2.0),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes_fp64(B, H, N, n, d, k1, k2, scale, seed):
    inputs = _make(B, H, N, n, d, _bias_shape(k1, B, H, n, N), _bias_shape(k2, B, H, N, n), seed=seed)
    g = _grad_out((B, H, N, d), seed=seed + 1)
    ref_out, ref_grads = _reference(inputs, g, scale=scale)
    out, grads = _run(agentattn.agent_attention, inputs, g, torch.float64, scale=scale, backend="cpp")
    _check_grad_shapes(grads, inputs)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-10)
    for name, x, y in zip(GRAD_NAMES, grads, ref_grads, strict=True):
        if y is not None:
            torch.testing.assert_close(
                x, y, rtol=1e-8, atol=1e-10 * (1 + y.abs().max().item()), msg=lambda m: f"d{name}: {m}"
            )


# ----------------------------------------------------------------------------- backends and fallback
def _ops(fn):
    with _OpsCalled() as rec:
        fn()
    return rec.names


@needs_ext
def test_backend_choice_argument_and_env(monkeypatch):
    args = [None if t is None else t.float() for t in _valid()]
    fused = "agentattn.agent_attention_fwd"
    monkeypatch.delenv("AGENTATTN_BACKEND", raising=False)
    monkeypatch.setattr(_ext, "_SWITCHES", {})  # environment switches are read once: forget them here
    assert fused in _ops(lambda: agentattn.agent_attention(*args))
    assert fused not in _ops(lambda: agentattn.agent_attention(*args, backend="reference"))
    monkeypatch.setenv("AGENTATTN_BACKEND", "reference")
    assert fused in _ops(lambda: agentattn.agent_attention(*args))  # read at first use, not per call
    _ext.reread_switches()
    assert fused not in _ops(lambda: agentattn.agent_attention(*args))
    assert fused in _ops(lambda: agentattn.agent_attention(*args, backend="cpp"))  # the argument wins
    monkeypatch.setenv("AGENTATTN_BACKEND", "nonsense")
    _ext.reread_switches()
    with pytest.raises(ValueError, match="backend must be one of"):
        agentattn.agent_attention(*args)


def test_fallback_without_extension_warns_once(monkeypatch):
    """In-process: the extension marked unavailable -> backends() says so, calls run the reference with one
    RuntimeWarning per process, and asking for 'cpp' is a clear error."""
    monkeypatch.setattr(_ext, "_C", None)
    monkeypatch.setattr(_ext, "_load_error", "ImportError: pretend it failed")
    monkeypatch.setattr(_ext, "_warned", False)
    monkeypatch.delenv("AGENTATTN_BACKEND", raising=False)
    monkeypatch.setattr(_ext, "_SWITCHES", {})
    info = agentattn.backends()
    assert info["cpu"] == ["reference"] and info["extension"] is False
    assert info["extension_error"] == "ImportError: pretend it failed"
    q, k, v, a, b1, b2 = _valid()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = agentattn.agent_attention(q, k, v, a, b1, b2)
        out2 = agentattn.agent_attention(q, k, v, a, None, b2)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "pretend it failed" in msgs[0] and "reference" in msgs[0], msgs
    torch.testing.assert_close(out1, agent_attention_ref(q, k, v, a, b1, b2), rtol=0, atol=0)
    torch.testing.assert_close(out2, agent_attention_ref(q, k, v, a, None, b2), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"backend 'cpp' is not available for cpu tensors.*available: \['reference'\]"):
        agentattn.agent_attention(q, k, v, a, backend="cpp")


def test_disable_ext_env_in_fresh_process():
    """AGENTATTN_DISABLE_EXT=1 in a new interpreter: the package imports without loading _C, backends()
    reports why, the op and the module run on the reference, and the warning comes once."""
    code = textwrap.dedent("""
        import warnings, torch
        warnings.simplefilter("always")
        import agentattn
        from agentattn.ops.agent_attention.naive import agent_attention_ref
        info = agentattn.backends()
        assert info["extension"] is False and info["cpu"] == ["reference"], info
        assert "AGENTATTN_DISABLE_EXT" in info["extension_error"], info
        assert not hasattr(torch.ops.agentattn, "agent_attention_fwd")
        q, k, v = torch.randn(3, 2, 2, 10, 8).unbind(0)
        a = torch.randn(2, 2, 4, 8)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = agentattn.agent_attention(q, k, v, a)
            agentattn.agent_attention(q, k, v, a)
            m = agentattn.AgentAttention(16, num_heads=2, agent_num=4, window=3, num_prefix_tokens=1)
            m(torch.randn(2, 10, 16)).sum().backward()
        rw = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
        assert len(rw) == 1 and "not available" in rw[0], rw
        assert torch.equal(out, agent_attention_ref(q, k, v, a))
        print("OK")
    """)
    env = dict(os.environ, AGENTATTN_DISABLE_EXT="1", OMP_NUM_THREADS="1")
    env.pop("AGENTATTN_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr
