"""GPU suite for the agent-attention CUDA and Triton kernels (skipped without an NVIDIA GPU).

Run by ``bash scripts/gpu_check.sh`` on a GPU machine. Every kernel output and gradient is compared with
the fp64 reference; in fp16/bf16 the kernel's error must be at most 2x (plus a small floor) the error of
the plain PyTorch composition computed in the same dtype (flash-attention's rule). fp32 is held to a
fixed tight tolerance (the kernels accumulate in fp32 with IEEE products).
"""

import pytest
import torch

import agentattn
from agentattn.ops.agent_attention.naive import agent_attention_ref

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


def _backends():
    avail = agentattn.backends()["cuda"]
    return [
        pytest.param(b, marks=pytest.mark.skipif(b not in avail, reason=f"{b} backend not built/installed"))
        for b in ("cuda", "triton")
    ]


BACKENDS = _backends()
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [
    # B, H, N, n, d, bias_agent lead dims, bias_query lead dims
    (2, 3, 197, 49, 64, (1, 3), (1, 3)),  # DeiT-T-like, biases shared over the batch
    (1, 2, 3136, 9, 32, (1, 2), (1, 2)),  # Swin stage-1-like, small B*H: many N splits
    (2, 2, 49, 16, 48, None, None),  # no biases, d = 48
    (1, 2, 100, 5, 80, (1, 1), (1, 2)),  # n = 5, d = 80, biases broadcast over batch and head
    (2, 1, 333, 64, 96, (2, 1), (2, 1)),  # full biases (written without atomics), d = 96
    (1, 1, 77, 81, 128, None, (1, 1)),  # n = 81 (> 64), d = 128
]


def _id(s):
    B, H, N, n, d, b1, b2 = s
    lead = lambda b: "x".join(map(str, b)) if b else "none"  # noqa: E731
    return f"B{B}-H{H}-N{N}-n{n}-d{d}-b1{lead(b1)}-b2{lead(b2)}"


def _inputs(shape, seed=0, M=None):
    """fp64 CUDA inputs for ``shape`` (B, H, N, n, d, bias leads); k and v with M tokens (default N)."""
    B, H, N, n, d, b1s, b2s = shape
    M = N if M is None else M
    g = torch.Generator(device="cuda").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float64)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, M, d), mk(B, H, M, d), mk(B, H, n, d)
    b1 = None if b1s is None else 0.5 * mk(*b1s, n, M)
    b2 = None if b2s is None else 0.5 * mk(*b2s, N, n)
    return [q, k, v, a, b1, b2]


def _run(fn, inputs, dtype, grad):
    # a copy: ``t.to(dtype)`` is ``t`` itself when the dtype already matches (the fp64 reference run), and
    # marking the caller's tensor as requiring grad would make every later ``.to(...)`` a non-leaf (no .grad)
    xs = [None if t is None else t.detach().to(dtype, copy=True).requires_grad_() for t in inputs]
    out = fn(*xs)
    out.backward(grad.to(dtype))
    return [out.detach().double()] + [None if x is None else x.grad.double() for x in xs]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_matches_fp64_reference(shape, dtype, backend):
    inputs = _inputs(shape)
    d = shape[4]
    grad = torch.randn(shape[0], shape[1], shape[2], d, device="cuda", dtype=torch.float64)
    ref = _run(lambda *x: agent_attention_ref(*x, d**-0.5), inputs, torch.float64, grad)
    plain = _run(lambda *x: agent_attention_ref(*x, d**-0.5), inputs, dtype, grad)
    got = _run(lambda *x: agentattn.agent_attention(*x, backend=backend), inputs, dtype, grad)
    names = ["out", "dq", "dk", "dv", "dagents", "dbias_agent", "dbias_query"]
    for name, r, p, g in zip(names, ref, plain, got, strict=True):
        if r is None:
            continue
        assert torch.isfinite(g).all(), name
        err = (g - r).abs().max().item()
        if dtype == torch.float32:
            bound = 1e-4 * max(1.0, r.abs().max().item())
        else:
            bound = 2 * (p - r).abs().max().item() + 1e-3 * r.abs().max().item()
        assert err <= bound, f"{name}: |kernel - fp64| = {err:.3g} > {bound:.3g} ({backend}, {dtype})"


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    inputs = [None if t is None else t.float() for t in _inputs((1, 2, 70, 7, 32, (1, 2), (1, 1)))]
    if backend == "cuda":
        op = torch.ops.agentattn.agent_attention_fwd.default
    else:
        from agentattn.ops.agent_attention import triton as tri

        op = tri._fwd_op
    args = [None if t is None else t.requires_grad_() for t in inputs] + [0.2]
    torch.library.opcheck(op, tuple(args))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    q, k, v, a, b1, b2 = (None if t is None else t.half() for t in _inputs((2, 2, 150, 9, 64, (1, 2), None)))
    fn = lambda *x: agentattn.agent_attention(*x, backend=backend)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, a, b1, b2), fn(q, k, v, a, b1, b2), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_score_tensor_saved_for_backward(backend):
    """Only O(N·d) tensors are saved: no (B, H, N, n) tensor lives between forward and backward."""
    B, H, N, n, d = 2, 2, 4096, 64, 64
    q, k, v, a, _, _ = _inputs((B, H, N, n, d, None, None))
    xs = [t.half().requires_grad_() for t in (q, k, v, a)]
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        agentattn.agent_attention(*xs, backend=backend)
    assert (B, H, N, n) not in shapes and (B, H, n, N) not in shapes, shapes


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_device_index_and_stream(backend):
    """Launches go to the current stream of the inputs' device."""
    inputs = [None if t is None else t.float() for t in _inputs((1, 1, 64, 4, 32, None, None))]
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = agentattn.agent_attention(*inputs[:4], backend=backend)
    s.synchronize()
    ref = agent_attention_ref(*inputs[:4])
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,M", [(196, 4), (3136, 49), (64, 77), (10, 300)], ids=lambda v: str(v))
def test_keys_of_their_own_count(N, M, backend):
    """k, v (B, H, M, d) with M != N (PVT's spatial reduction, cross-attention), fp32, outputs and gradients."""
    B, H, n, d = 2, 2, 9, 32
    g = torch.Generator(device="cuda").manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g, device="cuda", dtype=torch.float64)  # noqa: E731
    inputs = [
        mk(B, H, N, d),
        mk(B, H, M, d),
        mk(B, H, M, d),
        mk(B, H, n, d),
        0.5 * mk(1, H, n, M),
        0.5 * mk(1, H, N, n),
    ]
    grad = mk(B, H, N, d)
    ref = _run(lambda *x: agent_attention_ref(*x, 0.3), inputs, torch.float64, grad)
    got = _run(lambda *x: agentattn.agent_attention(*x, scale=0.3, backend=backend), inputs, torch.float32, grad)
    for name, r, x in zip(["out", "dq", "dk", "dv", "dagents", "dbias_agent", "dbias_query"], ref, got, strict=True):
        assert x.shape == r.shape, name
        assert (x - r).abs().max().item() <= 1e-4 * max(1.0, r.abs().max().item()), name


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("N,M", [(300, 300), (64, 150), (300, 17)], ids=lambda v: str(v))
def test_poisoned_input_gives_the_reference_pattern(N, M, poison, backend):
    """Each input poisoned in turn (fp32): the output and all six gradients have the NaN/inf pattern of the
    reference composition; ``bias_agent_tile_neginf`` masks 100 leading keys of a row (whole key tiles, all
    of a row's keys when M < 100). Self-attention, more keys than queries (cross-attention, several key
    splits), fewer keys than queries (PVT's spatial reduction)."""
    B, H, n, d = 2, 2, 9, 32
    inputs = _inputs((B, H, N, n, d, (1, 2), (1, 2)), seed=3, M=M)
    grad = torch.randn(B, H, N, d, device="cuda", dtype=torch.float64)
    t = dict(zip(("q", "k", "v", "agents", "bias_agent", "bias_query"), inputs, strict=True), grad_out=grad)
    name, kind = poison.rsplit("_", 1)
    if kind == "neginf":
        name, what = name.rsplit("_", 1)
        t[name][0, -1, t[name].shape[2] // 2, : (100 if what == "tile" else t[name].shape[3])] = float("-inf")
    else:
        t[name][-1, -1, t[name].shape[2] // 2, 1] = float(kind)
    ins = [t[k] for k in ("q", "k", "v", "agents", "bias_agent", "bias_query")]
    ref = _run(agent_attention_ref, ins, torch.float32, t["grad_out"])
    ref64 = _run(agent_attention_ref, ins, torch.float64, t["grad_out"])
    got = _run(lambda *x: agentattn.agent_attention(*x, backend=backend), ins, torch.float32, t["grad_out"])
    partial_mask = poison == "bias_agent_tile_neginf" and M > 100  # masks some keys only: finite results
    assert partial_mask or any(not torch.isfinite(r).all() for r in ref), "the poison must reach the reference"
    names = ["out", "dq", "dk", "dv", "dagents", "dbias_agent", "dbias_query"]
    for nm, x, r, r64 in zip(names, got, ref, ref64, strict=True):
        assert torch.equal(torch.isnan(x), torch.isnan(r)), f"{nm}: NaN pattern differs ({backend}, {poison})"
        assert torch.equal(torch.isinf(x), torch.isinf(r)), f"{nm}: inf pattern differs ({backend}, {poison})"
        fin = torch.isfinite(x)
        if fin.any():  # and the reference's values elsewhere
            torch.testing.assert_close(
                x[fin],
                r64[fin],
                rtol=1e-4,
                atol=2e-5 * (1 + r64[fin].abs().max().item()),
                msg=lambda m, nm=nm: f"{nm} ({backend}, {poison}): {m}",
            )
