"""``agentattn.agent_attention`` with keys and values of their own token count (k, v: (B, H, M, d), M != N), as
PVT's spatial reduction (M = N / sr²) and cross-attention (e.g. 77 text tokens) need, and with a stage-2 scale
of its own (``scale_query``, AgentSD): outputs and all six gradients against the fp64 reference, on every CPU
backend; the FLOP formula and the fake kernel for M != N.

The Triton and (emulated) CUDA kernels are checked for M != N in test_agent_attention_triton.py and
test_agent_attention_cuda_emu.py.
Run: ``OMP_NUM_THREADS=1 python -m pytest -q tests/agentattn/ops/test_agent_attention_kv_tokens.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import agentattn
from agentattn.ops.agent_attention import op
from agentattn.ops.agent_attention.naive import agent_attention_ref

CASES = [
    # B, H, N, M, n, d, bias_agent lead, bias_query lead
    (2, 2, 196, 4, 49, 32, (1, 2), (1, 2)),  # PVT stage 1 at sr_ratio 8 (14x14 -> 2x2 keys)
    (2, 3, 3136, 49, 9, 32, (1, 3), (1, 3)),  # PVT-S stage 1: 56x56 queries, 7x7 keys
    (1, 2, 1024, 77, 16, 40, None, (1, 2)),  # cross-attention to 77 text tokens (SD-like)
    (2, 1, 10, 300, 7, 12, (2, 1), None),  # more keys than queries, d % 8 != 0
]
NAMES = ("q", "k", "v", "agents", "bias_agent", "bias_query")


def _id(c):
    B, H, N, M, n, d, b1, b2 = c
    lead = lambda b: "x".join(map(str, b)) if b else "none"  # noqa: E731
    return f"B{B}-H{H}-N{N}-M{M}-n{n}-d{d}-b1{lead(b1)}-b2{lead(b2)}"


def _inputs(B, H, N, M, n, d, b1s, b2s, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, M, d), mk(B, H, M, d), mk(B, H, n, d)
    b1 = None if b1s is None else 0.5 * mk(*b1s, n, M)
    b2 = None if b2s is None else 0.5 * mk(*b2s, N, n)
    return [q, k, v, a, b1, b2], mk(B, H, N, d)


def _run(ins, go, **kw):
    xs = [None if t is None else t.clone().requires_grad_() for t in ins]
    out = agentattn.agent_attention(*xs, **kw)
    out.backward(go)
    return [out.detach()] + [None if x is None else x.grad for x in xs]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_keys_of_their_own_count_match_reference(case, dtype, backend):
    ins, go = _inputs(*case)
    ref = [out for out in _run(ins, go, scale=0.3, backend="reference")]
    got = _run([None if t is None else t.to(dtype) for t in ins], go.to(dtype), scale=0.3, backend=backend)
    assert got[0].shape == ins[0].shape
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for name, x, r in zip(("out",) + NAMES, got, ref, strict=True):
        if r is None:
            assert x is None, name
            continue
        assert x.shape == r.shape, name
        torch.testing.assert_close(x.double(), r, rtol=0, atol=tol * (1 + r.abs().max().item()), msg=name)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_scale_query_is_the_stage2_scale(backend):
    """scale_query = s2 gives softmax(s2 Q Aᵀ + B2) softmax(s A Kᵀ + B1) V (AgentSD's two scales)."""
    ins, go = _inputs(2, 2, 64, 64, 9, 32, (1, 2), None)
    s, s2 = 32**-0.5, (32**-0.5) ** 0.3
    xs = [None if t is None else t.clone().requires_grad_() for t in ins]
    q, k, v, a, b1, _ = xs
    p1 = ((a * s) @ k.transpose(-2, -1) + b1).softmax(-1)
    want = ((q * s2) @ a.transpose(-2, -1)).softmax(-1) @ (p1 @ v)
    want.backward(go)
    got = _run(
        [t.float() if t is not None else None for t in ins], go.float(), scale=s, scale_query=s2, backend=backend
    )
    torch.testing.assert_close(got[0].double(), want.detach(), rtol=0, atol=2e-6)
    for name, x, r in zip(NAMES, got[1:], xs, strict=True):
        if r is not None:
            torch.testing.assert_close(
                x.double(), r.grad, rtol=0, atol=2e-5 * (1 + r.grad.abs().max().item()), msg=name
            )


def test_flop_formula_counts_both_token_counts():
    """4·B·H·n·d·(M + N) forward (8·B·H·N·n·d for M = N), backward twice that, through the registered
    formula on the compiled op (fake tensors: the C++ CPU kernel itself takes M = N only)."""
    if "cpp" not in agentattn.backends()["cpu"]:
        pytest.skip("agentattn._C not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    B, H, N, M, n, d = 2, 3, 196, 49, 16, 32
    assert op.flops((B, H, N, d), (B, H, N, d), (B, H, n, d)) == 8 * B * H * N * n * d
    with FakeTensorMode():
        q, go = torch.randn(B, H, N, d), torch.randn(B, H, N, d)
        k, v = torch.randn(B, H, M, d), torch.randn(B, H, M, d)
        a = torch.randn(B, H, n, d)
        with FlopCounterMode(display=False) as fc:
            out, va, l1, l2 = torch.ops.agentattn.agent_attention_fwd(q, k, v, a, None, None, 0.2)
            assert out.shape == (B, H, N, d) and va.shape == (B, H, n, d) and l1.shape == (B, H, n)
            grads = torch.ops.agentattn.agent_attention_bwd(go, q, k, v, a, None, None, out, va, l1, l2, 0.2)
            assert grads[1].shape == (B, H, M, d) and grads[2].shape == (B, H, M, d)
    assert fc.get_total_flops() == 3 * 4 * B * H * n * d * (M + N)


def test_mismatched_keys_and_values_are_refused():
    ins, _ = _inputs(1, 2, 20, 10, 4, 8, None, None)
    q, k, v, a = ins[:4]
    with pytest.raises(ValueError, match=r"v must have k's shape \(B, H, M, d\) = \(1, 2, 10, 8\), got \(1, 2, 11,"):
        agentattn.agent_attention(q, k, torch.randn(1, 2, 11, 8, dtype=q.dtype), a)
    with pytest.raises(ValueError, match=r"bias_agent must be broadcastable to .*\(1, 2, 4, 10\)"):
        agentattn.agent_attention(q, k, v, a, bias_agent=torch.zeros(1, 2, 4, 20, dtype=q.dtype))


def test_zero_keys_give_zero_output():
    """M = 0 (no keys): the reference's empty softmax gives V_A = 0, so the output is 0; no kernel runs."""
    ins, _ = _inputs(1, 2, 5, 0, 3, 4, None, None)
    assert torch.equal(agentattn.agent_attention(*ins[:4]), torch.zeros(1, 2, 5, 4, dtype=torch.float64))
    assert torch.equal(agentattn.agent_attention(*ins[:4]), agent_attention_ref(*ins[:4]))
