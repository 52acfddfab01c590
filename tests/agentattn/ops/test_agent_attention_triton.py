"""Triton agent-attention kernels against the fp64 reference: outputs and every gradient.

On CPU run under the interpreter, in its own process: ``TRITON_INTERPRET=1 python -m pytest -m triton``
(scripts/test.sh does this). Shapes are small (the interpreter is slow) but awkward: N not a multiple of
the block, n not a power of two, d = 48, broadcast and full biases, no biases, several N splits.
"""

import os

import pytest
import torch

pytestmark = pytest.mark.triton

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip(
        "Triton tests need a GPU or TRITON_INTERPRET=1 (set before the process starts)", allow_module_level=True
    )

from agentattn.ops.agent_attention import triton as tri  # noqa: E402
from agentattn.ops.agent_attention.naive import agent_attention_ref, agent_attention_ref_stats  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

CASES = [
    # B, H, N, n, d, bias_agent shape (None: no bias), bias_query shape[, M keys/values (default N)]
    (2, 2, 77, 9, 48, (1, 2), (2, 2)),  # stage-1 bias broadcast over batch, stage-2 bias full
    (1, 3, 100, 16, 32, None, None),  # no biases, n a power of two
    (2, 1, 33, 5, 64, (2, 1), (1, 1)),  # full bias_agent, bias_query broadcast over batch and head
    (1, 1, 20, 3, 80, (1, 1), None),  # N below one block, d = 80
    (2, 2, 130, 9, 32, (1, 2), (1, 2), 17),  # fewer keys than queries (PVT spatial reduction)
    (1, 2, 12, 5, 32, (1, 2), None, 150),  # more keys than queries (cross-attention), several splits
]


def _id(c):
    B, H, N, n, d, b1, b2 = c[:7]
    lead = lambda b: "x".join(map(str, b)) if b else "none"  # noqa: E731
    m = f"-M{c[7]}" if len(c) > 7 else ""
    return f"B{B}-H{H}-N{N}{m}-n{n}-d{d}-b1{lead(b1)}-b2{lead(b2)}"


def _inputs(B, H, N, n, d, b1s, b2s, M=None, seed=0):
    M = N if M is None else M
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, M, d), mk(B, H, M, d), mk(B, H, n, d)
    b1 = None if b1s is None else 0.5 * mk(*b1s, n, M)
    b2 = None if b2s is None else 0.5 * mk(*b2s, N, n)
    return q, k, v, a, b1, b2


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_forward_stats_match_reference(case):
    B, H, N, n, d, b1s, b2s = case[:7]
    q, k, v, a, b1, b2 = _inputs(*case)
    s = d**-0.5
    ref = agent_attention_ref_stats(q, k, v, a, b1, b2, s)
    f = lambda t: None if t is None else t.float().to(DEVICE)  # noqa: E731
    # poison: outputs are freshly allocated; a NaN anywhere means an unwritten or bad element
    got = tri.forward(f(q), f(k), f(v), f(a), f(b1), f(b2), s)
    for name, x, y in zip(("out", "agent_v", "lse_agent", "lse_query"), got, ref, strict=True):
        assert x.dtype == torch.float32, name
        assert torch.isfinite(x).all(), name
        torch.testing.assert_close(x.double().cpu(), y, rtol=2e-5, atol=2e-5, msg=name)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_gradients_match_reference(case):
    inputs = _inputs(*case, seed=1)
    s = 0.3  # a non-default scale
    ref = [None if t is None else t.clone().requires_grad_() for t in inputs]
    got = [None if t is None else t.float().to(DEVICE).requires_grad_() for t in inputs]
    out_ref = agent_attention_ref(*ref, s)
    out = tri.agent_attention_triton(*got, s)
    grad = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out_ref.backward(grad)
    out.backward(grad.float().to(DEVICE))
    torch.testing.assert_close(out.detach().double().cpu(), out_ref.detach(), rtol=2e-5, atol=2e-5)
    for name, x, y in zip(("q", "k", "v", "agents", "bias_agent", "bias_query"), got, ref, strict=True):
        if y is None:
            continue
        assert x.grad is not None and x.grad.shape == y.shape, name
        torch.testing.assert_close(x.grad.double().cpu(), y.grad, rtol=1e-4, atol=2e-5, msg=f"d{name}")


def test_backward_op_returns_empty_bias_grads_without_biases():
    q, k, v, a, _, _ = _inputs(1, 1, 24, 4, 32, None, None)
    f = lambda t: t.float().to(DEVICE)  # noqa: E731
    q, k, v, a = f(q), f(k), f(v), f(a)
    out, va, l1, l2 = tri.forward(q, k, v, a, None, None, 0.2)
    grads = tri.backward(torch.ones_like(out), q, k, v, a, None, None, out, va, l1, l2, 0.2)
    assert grads[4].numel() == 0 and grads[5].numel() == 0


def test_split_plan_covers_every_tile():
    dev = torch.device("cpu")
    for tiles in range(1, 40):
        for bh in (1, 2, 3, 64):
            per, splits = tri._splits(tiles, bh, dev)
            assert per * splits >= tiles and per * (splits - 1) < tiles  # every split starts on a real tile


def test_opcheck_and_bad_inputs():
    q, k, v, a, b1, b2 = (None if t is None else t.float().to(DEVICE) for t in _inputs(1, 2, 19, 3, 32, (1, 1), (1, 2)))
    q, k, v, a, b1, b2 = (None if t is None else t.requires_grad_() for t in (q, k, v, a, b1, b2))
    torch.library.opcheck(tri._fwd_op, (q, k, v, a, b1, b2, 0.25))  # schema, fake, autograd, aot dispatch
    q, k, v, a, b1, b2 = (None if t is None else t.detach() for t in (q, k, v, a, b1, b2))
    with pytest.raises(ValueError, match="fp16, bf16 and fp32"):
        tri.forward(q.int(), k.int(), v.int(), a.int(), None, None, 0.1)
    with pytest.raises(ValueError, match="bias_query"):
        tri.forward(q, k, v, a, None, b2[..., :2].contiguous(), 0.1)


def test_torch_compile_fullgraph():
    q, k, v, a, b1, b2 = (None if t is None else t.float().to(DEVICE) for t in _inputs(1, 2, 21, 3, 32, (1, 2), None))
    fn = torch.compile(tri.agent_attention_triton, fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(q, k, v, a, b1, b2, 0.2), tri.agent_attention_triton(q, k, v, a, b1, b2, 0.2))


def test_fp16_tensor_core_path_within_twice_plain_torch_error(monkeypatch):
    """The fp16 dot path (operands cast to fp16, as on the GPU; forced on here under the interpreter):
    kernel error vs fp64 at most 2x the plain PyTorch fp16 composition's error (+ a small floor)."""
    monkeypatch.setattr(tri, "_lowp", lambda q: True)
    inputs = _inputs(1, 2, 50, 7, 48, (1, 2), (1, 2), seed=3)
    grad = torch.randn(1, 2, 50, 48, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def run(fn, dtype, device):
        xs = [t.to(device=device, dtype=dtype).clone().requires_grad_() for t in inputs]
        out = fn(*xs, 0.3)
        out.backward(grad.to(device=device, dtype=dtype))
        return [out.detach().double().cpu()] + [x.grad.double().cpu() for x in xs]

    ref = run(agent_attention_ref, torch.float64, "cpu")
    plain = run(agent_attention_ref, torch.float16, "cpu")
    got = run(tri.agent_attention_triton, torch.float16, DEVICE)
    names = ("out", "dq", "dk", "dv", "dagents", "dbias_agent", "dbias_query")
    for name, r, p, g in zip(names, ref, plain, got, strict=True):
        err, base = (g - r).abs().max().item(), (p - r).abs().max().item()
        assert err <= 2 * base + 1e-3 * r.abs().max().item(), f"{name}: {err:.3g} vs plain fp16 {base:.3g}"


POISONS = [
    "q_nan",
    "k_nan",
    "v_nan",
    "agents_nan",
    "bias_agent_nan",
    "bias_query_nan",
    "k_inf",
    "bias_agent_row_neginf",
    "bias_query_row_neginf",
    "bias_agent_tile_neginf",
    "grad_out_nan",
]


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("case", [(2, 2, 77, 9, 48, (1, 2), (2, 2)), (1, 2, 12, 5, 32, (1, 2), (1, 1), 150)], ids=_id)
def test_poisoned_input_gives_the_reference_pattern(case, poison):
    """Each input poisoned in turn: the output and all six gradients have the reference's NaN/inf pattern
    and its finite values elsewhere. ``bias_agent_tile_neginf`` masks the first 64 keys of a row (one whole
    key tile of a longer row: the online softmax must not turn exp(-inf - -inf) into NaN there)."""
    q, k, v, a, b1, b2 = _inputs(*case, seed=5)
    go = torch.randn(q.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = dict(q=q, k=k, v=v, agents=a, bias_agent=b1, bias_query=b2, grad_out=go)
    name, kind = poison.rsplit("_", 1)
    if kind == "neginf":
        name, what = name.rsplit("_", 1)
        x = t[name]
        x[0, -1, x.shape[2] // 2, : (64 if what == "tile" else x.shape[3])] = float("-inf")
    else:
        x = t[name]
        x[-1, -1, x.shape[2] // 2, 1] = float(kind)
    names = ("q", "k", "v", "agents", "bias_agent", "bias_query")

    def run(fn, dtype, device):
        xs = [t[nm].to(device=device, dtype=dtype).clone().requires_grad_() for nm in names]
        out = fn(*xs, 0.3)
        out.backward(t["grad_out"].to(device=device, dtype=dtype))
        return [out.detach().cpu()] + [x.grad.cpu() for x in xs]

    ref = run(agent_attention_ref, torch.float32, "cpu")
    ref64 = run(agent_attention_ref, torch.float64, "cpu")
    got = run(tri.agent_attention_triton, torch.float32, DEVICE)
    assert poison.endswith("tile_neginf") or any(not torch.isfinite(r).all() for r in ref)
    names = ("out", "dq", "dk", "dv", "dagents", "dbias_agent", "dbias_query")
    for nm, x, r, r64 in zip(names, got, ref, ref64, strict=True):
        assert torch.equal(torch.isnan(x), torch.isnan(r)), (
            f"{nm}: NaN at {int(torch.isnan(x).sum())}, reference at {int(torch.isnan(r).sum())}"
        )
        assert torch.equal(torch.isinf(x), torch.isinf(r)), f"{nm}: inf pattern differs"
        fin = torch.isfinite(x)
        if fin.any():
            torch.testing.assert_close(
                x[fin].double(), r64[fin], rtol=1e-4, atol=2e-5 * (1 + r64[fin].abs().max().item()), msg=nm
            )


def test_opcheck_with_keys_of_their_own_count():
    """The registered Triton op (schema, fake, autograd) with M != N."""
    ins = [None if t is None else t.float().to(DEVICE) for t in _inputs(1, 2, 19, 3, 32, (1, 1), (1, 2), M=40)]
    q, k, v, a, b1, b2 = (None if t is None else t.requires_grad_() for t in ins)
    torch.library.opcheck(tri._fwd_op, (q, k, v, a, b1, b2, 0.25))
