"""NaN and infinity through ``agentattn.agent_attention`` on CPU: each input poisoned in turn (q, k, v, agents,
both biases, an all -inf bias row, grad_out) must give the reference composition's non-finite pattern in the
output and in all six gradients, and the same finite values elsewhere.

The shapes are chosen so that the C++ kernel's paths all run (agent-major layout n % 8 != 0, token-major
n % 8 == 0, the BLAS-tile path d % 8 != 0, the key-chunk merge at small B·H and large N, float64), at 1 and 3
threads, and a cross-attention shape (M != N). The kernel itself propagates every case (its exp and log keep
NaN): no check runs in Python, so the same holds in traced graphs (test_traced_graph_propagates_nan). Every
ISA path (generic, AVX2, AVX-512) and both layouts are poisoned in test_agent_attention_cpu_isa.py.

Run: ``OMP_NUM_THREADS=1 python -m pytest -q tests/agentattn/ops/test_agent_attention_nan.py``.
"""

from __future__ import annotations

import pytest
import torch

import agentattn
from agentattn.ops.agent_attention.naive import agent_attention_ref

SHAPES = [
    # B, H, N, M, n, d
    (2, 3, 197, 197, 49, 64),  # DeiT-T; n % 8 != 0: agent-major forward
    (2, 2, 50, 50, 16, 32),  # n % 8 == 0: token-major forward
    (1, 1, 300, 300, 7, 12),  # d % 8 != 0: BLAS-tile path
    (1, 2, 3136, 3136, 9, 32),  # B·H small, N large: keys split in chunks, then merged
    (2, 2, 64, 16, 9, 32),  # cross-attention / spatial reduction: M != N
]
POISONS = [
    "q_nan",
    "k_nan",
    "v_nan",
    "agents_nan",
    "bias_agent_nan",
    "bias_query_nan",
    "q_inf",
    "k_inf",
    "v_inf",
    "agents_inf",
    "bias_agent_row_neginf",
    "bias_query_row_neginf",
    "grad_out_nan",
    "grad_out_inf",
]
NAMES = ("out", "dq", "dk", "dv", "dagents", "dbias_agent", "dbias_query")
ARGS = ("q", "k", "v", "agents", "bias_agent", "bias_query")  # the op's tensor arguments, in order


def _shape_id(s):
    B, H, N, M, n, d = s
    return f"B{B}-H{H}-N{N}-M{M}-n{n}-d{d}"


def _inputs(B, H, N, M, n, d, poison, dtype):
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    t = dict(
        q=mk(B, H, N, d),
        k=mk(B, H, M, d),
        v=mk(B, H, M, d),
        agents=mk(B, H, n, d),
        bias_agent=0.1 * mk(1, H, n, M),
        bias_query=0.1 * mk(1, H, N, n),
        grad_out=mk(B, H, N, d),
    )
    t = {k: x.to(dtype) for k, x in t.items()}
    name, kind = poison.rsplit("_", 1)
    if kind == "neginf":  # a whole score row masked: softmax of all -inf is NaN (0/0) in the reference
        name = name[: -len("_row")]
        t[name][0, H - 1, t[name].shape[2] // 2, :] = float("-inf")
    else:
        x = t[name]
        x[x.shape[0] - 1, x.shape[1] - 1, x.shape[2] // 2, min(1, x.shape[3] - 1)] = float(kind)
    return t


def _run(t, backend):
    xs = [t[k].clone().requires_grad_() for k in ARGS]
    out = agentattn.agent_attention(*xs, backend=backend)
    out.backward(t["grad_out"])
    return [out.detach()] + [x.grad for x in xs]


@pytest.fixture(params=[1, 3], ids=lambda t: f"threads{t}")
def threads(request):
    prev = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(prev)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_poisoned_input_gives_the_reference_pattern(shape, poison, dtype, threads):
    if "cpp" not in agentattn.backends()["cpu"]:
        pytest.skip("agentattn._C not built")
    check_poisoned(shape, poison, dtype)


def check_poisoned(shape, poison, dtype):
    """The C++ kernel's outputs and gradients against the reference's for one poisoned input: the same NaN
    and inf entries, the same values elsewhere (within the dtype's tolerance against float64)."""
    t = _inputs(*shape, poison, dtype)
    ref = _run(t, "reference")
    got = _run(t, "cpp")
    ref64 = _run({k: x.double() for k, x in t.items()}, "reference")
    assert any(not torch.isfinite(r).all() for r in ref), "the poison must reach the reference's results"
    for name, x, r, r64 in zip(NAMES, got, ref, ref64, strict=True):
        if poison.startswith("grad_out_inf"):
            # inf - inf in the softmax backward: which entries end as NaN and which as +-inf depends on the
            # order of the sums (the reference itself differs from its float64 run); non-finite must match
            assert torch.equal(torch.isfinite(x), torch.isfinite(r)), f"{name}: finite pattern differs"
        else:
            assert torch.equal(torch.isnan(x), torch.isnan(r)), (
                f"{name}: NaN at {int(torch.isnan(x).sum())} entries, reference at {int(torch.isnan(r).sum())}"
            )
            assert torch.equal(torch.isinf(x), torch.isinf(r)), f"{name}: inf pattern differs"
            assert torch.equal(x[torch.isinf(x)], r[torch.isinf(r)]), f"{name}: sign of inf differs"
        fin = torch.isfinite(x) & torch.isfinite(r64)
        if fin.any():
            tol = (1e-10 if dtype == torch.float64 else 1e-4) * (1 + r64[fin].abs().max().item())
            torch.testing.assert_close(x[fin].double(), r64[fin], rtol=0, atol=tol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_poisoned_half_inputs_propagate(dtype):
    """fp16/bf16 on CPU run the float32 kernel: a NaN in an agent or a bias row must still reach every
    output row of its (batch, head) as in the reference."""
    for poison in ("agents_nan", "bias_agent_nan", "bias_query_row_neginf"):
        t = _inputs(2, 2, 50, 50, 16, 32, poison, dtype)
        out = agentattn.agent_attention(*(t[k] for k in ARGS))
        ref = agent_attention_ref(*(t[k].float() for k in ARGS))
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out).any(), poison


def test_cpu_calls_never_detour_to_the_reference(monkeypatch):
    """Finite or not, self- or cross-attention: a CPU call on the C++ backend runs the kernel alone."""
    if "cpp" not in agentattn.backends()["cpu"]:
        pytest.skip("agentattn._C not built")
    from agentattn.ops.agent_attention import op

    def fail(*a, **k):
        raise AssertionError("the reference composition ran")

    monkeypatch.setattr(op, "agent_attention_ref", fail)
    for shape, poison in (((2, 2, 50, 50, 16, 32), "k_nan"), ((2, 2, 64, 16, 9, 32), "agents_inf")):
        t = _inputs(*shape, poison, torch.float32)
        out = agentattn.agent_attention(*(t[k] for k in ARGS))
        assert not torch.isfinite(out).all()
        out = agentattn.agent_attention(*(torch.nan_to_num(t[k], posinf=1.0) for k in ARGS))
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("poison", ["k_nan", "agents_nan", "bias_agent_row_neginf"])
def test_traced_graph_propagates_nan(poison):
    """A graph traced on finite inputs (torch.jit.trace; torch.export records the same op call) gives the
    reference's NaN pattern on poisoned ones: nothing data-dependent was left out of the graph."""
    if "cpp" not in agentattn.backends()["cpu"]:
        pytest.skip("agentattn._C not built")
    t = _inputs(2, 2, 50, 50, 16, 32, poison, torch.float32)
    finite = [torch.nan_to_num(t[k], neginf=0.0) for k in ARGS]
    traced = torch.jit.trace(lambda *xs: agentattn.agent_attention(*xs, backend="cpp"), finite)
    out = traced(*(t[k] for k in ARGS))
    ref = agent_attention_ref(*(t[k] for k in ARGS))
    assert torch.isnan(ref).any() and torch.equal(torch.isnan(out), torch.isnan(ref))


def test_nan_in_every_key_of_a_head_is_caught():
    """A NaN in one channel of every key (as a NaN in k's projection weights gives) reaches the output as in
    the reference, on the float32 kernel too."""
    for shape in SHAPES[:4]:
        t = _inputs(*shape, "q_nan", torch.float32)
        t["q"] = torch.nan_to_num(t["q"])
        t["k"][0, 0, :, 1] = float("nan")
        out = agentattn.agent_attention(*(t[k] for k in ARGS))
        ref = agent_attention_ref(*(t[k] for k in ARGS))
        assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out[0, 0]).all(), shape
