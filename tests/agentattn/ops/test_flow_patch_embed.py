"""flow_patch_embed: the fused C++ CPU op against the fp64 reference (output and every gradient), on the
awkward HTNet/ViT sizes (28x28 p=7, 56x56 p=4, 224x224 p=16), rectangular inputs, p = 1, every bias/pos
combination, both output layouts; NaN-poisoned allocations, gradcheck, opcheck, torch.compile, the FLOP
formula and the input errors."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import agentattn
from agentattn.ops.flow_patch_embed.naive import flow_patch_embed_ref, flow_patch_embed_unfold
from agentattn.ops.flow_patch_embed.op import flow_patch_embed

needs_ext = pytest.mark.skipif(not agentattn.backends()["extension"], reason="agentattn._C not built")

SHAPES = [
    # B, C, H, W, p, D
    (2, 3, 28, 28, 7, 16),  # HTNet as released: 4x4 tokens
    (2, 2, 56, 56, 4, 24),  # 14x14 tokens
    (1, 3, 224, 224, 16, 12),  # ViT: 14x14 tokens, K = 768
    (3, 2, 12, 20, 4, 5),  # rectangular grid, tiles span images
    (2, 1, 5, 3, 1, 7),  # p = 1 (a per-pixel linear map)
    (3, 3, 64, 64, 2, 8),  # 3 x 1024 tokens: several tiles, last one partial (K = 12: direct loops)
    (3, 3, 48, 80, 4, 6),  # K = 48 (BLAS path), 240 tokens per image: tiles end mid-image
]
COMBOS = [(True, True), (True, False), (False, True), (False, False)]


def _sid(s):
    B, C, H, W, p, D = s
    return f"B{B}-C{C}-{H}x{W}-p{p}-D{D}"


def _inputs(B, C, H, W, p, D, bias=True, pos=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    return (mk(B, C, H, W), mk(D, C, p, p) * 0.2, mk(D) if bias else None, mk(D, H // p, W // p) if pos else None)


def _ref(x, w, b, q, p, flatten):
    out = flow_patch_embed_ref(x, w, b, q, p)
    return out.flatten(2).transpose(1, 2) if flatten else out


def _run(fn, inputs, p, flatten, grad):
    xs = [None if t is None else t.clone().requires_grad_() for t in inputs]
    out = fn(*xs, p, flatten)
    out.backward(grad.to(out.dtype))
    return [out.detach()] + [None if t is None else t.grad for t in xs]


@needs_ext
@pytest.mark.parametrize("flatten", [False, True], ids=["map", "flat"])
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: f"bias{int(c[0])}-pos{int(c[1])}")
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_fused_matches_reference(shape, combo, flatten, dtype):
    B, C, H, W, p, D = shape
    inputs = _inputs(*shape, *combo, seed=1)
    grad = torch.randn(
        (B, (H // p) * (W // p), D) if flatten else (B, D, H // p, W // p),
        generator=torch.Generator().manual_seed(2),
        dtype=torch.float64,
    )
    ref = _run(_ref, inputs, p, flatten, grad)
    cast = [None if t is None else t.to(dtype) for t in inputs]
    got = _run(lambda *a: flow_patch_embed(*a, backend="cpp"), cast, p, flatten, grad)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for name, x, y in zip(("out", "dx", "dweight", "dbias", "dpos"), got, ref, strict=True):
        if y is None:
            assert x is None, name
            continue
        assert x.dtype == dtype and x.shape == y.shape, name
        torch.testing.assert_close(x.double(), y, **tol, msg=name)


@needs_ext
@pytest.mark.parametrize("flatten", [False, True], ids=["map", "flat"])
def test_poisoned_allocations_are_all_written(flatten):
    """With deterministic algorithms on, torch fills every fresh allocation (including the op's own
    at::empty outputs) with NaN: any element the kernel does not write stays NaN."""
    inputs = _inputs(3, 2, 12, 20, 4, 5)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.isnan(torch.empty(8, dtype=torch.float64)).all()  # the poison is on
        out, dx, dw, db, dq = _run(
            lambda *a: flow_patch_embed(*a, backend="cpp"),
            inputs,
            4,
            flatten,
            torch.randn(3, 15, 5) if flatten else torch.randn(3, 5, 3, 5),
        )
    finally:
        torch.use_deterministic_algorithms(prev)
    for name, t in (("out", out), ("dx", dx), ("dw", dw), ("db", db), ("dpos", dq)):
        assert torch.isfinite(t).all(), name


@needs_ext
def test_backward_op_skips_gradients_not_asked_for():
    x, w, b, q = _inputs(2, 3, 28, 28, 7, 16)
    g = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    dx, dw, db, dq = torch.ops.agentattn.flow_patch_embed_bwd(g, x, w, None, None, 7, False, False, True)
    assert dx.numel() == 0 and db.numel() == 0 and dq.numel() == 0 and dw.shape == w.shape
    # through autograd: x without grad (the usual first layer) gets none, the parameters do
    w.requires_grad_()
    flow_patch_embed(x, w, b, q, 7).sum().backward()
    assert x.grad is None and w.grad is not None


@needs_ext
@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_does_not_change_results(threads):
    inputs = _inputs(3, 3, 64, 64, 2, 8, seed=3)
    grad = torch.randn(3, 8, 32, 32, dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(lambda *a: flow_patch_embed(*a, backend="cpp"), inputs, 2, False, grad)
        torch.set_num_threads(threads)
        many = _run(lambda *a: flow_patch_embed(*a, backend="cpp"), inputs, 2, False, grad)
    finally:
        torch.set_num_threads(old)
    for x, y in zip(one, many, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)


@needs_ext
@pytest.mark.parametrize("flatten", [False, True], ids=["map", "flat"])
def test_gradcheck(flatten):
    x, w, b, q = (t.requires_grad_() for t in _inputs(2, 2, 6, 8, 2, 3))
    assert torch.autograd.gradcheck(
        lambda *a: flow_patch_embed(*a, patch_size=2, flatten=flatten, backend="cpp"), (x, w, b, q)
    )


@needs_ext
@pytest.mark.parametrize("combo", [(True, True), (False, False)], ids=["bias-pos", "none"])
@pytest.mark.parametrize("flatten", [False, True], ids=["map", "flat"])
def test_opcheck(combo, flatten):
    x, w, b, q = (None if t is None else t.float().requires_grad_() for t in _inputs(2, 3, 8, 12, 4, 5, *combo))
    torch.library.opcheck(torch.ops.agentattn.flow_patch_embed_fwd.default, (x, w, b, q, 4, flatten))
    g = torch.randn((2, 6, 5) if flatten else (2, 5, 2, 3))
    args = [None if t is None else t.detach() for t in (x, w, b, q)]
    torch.library.opcheck(
        torch.ops.agentattn.flow_patch_embed_bwd.default,
        (g, *args, 4, flatten, True, flatten),
        test_utils=("test_schema", "test_faketensor"),
    )


@needs_ext
def test_torch_compile_fullgraph_forward_and_backward():
    x, w, b, q = _inputs(2, 3, 28, 28, 7, 16, dtype=torch.float32)
    fn = torch.compile(lambda *a: flow_patch_embed(*a, 7, flatten=True), fullgraph=True, backend="aot_eager")
    grad = torch.randn(2, 16, 16)
    got = _run(lambda *a: fn(*a[:4]), (x, w, b, q), 7, True, grad)
    ref = _run(_ref, (x, w, b, q), 7, True, grad)
    for name, g_, r in zip(("out", "dx", "dw", "db", "dpos"), got, ref, strict=True):
        torch.testing.assert_close(g_, r, rtol=2e-5, atol=2e-5, msg=name)


@needs_ext
def test_flop_formula():
    x, w, b, q = _inputs(2, 3, 28, 28, 7, 16, dtype=torch.float32)
    w.requires_grad_()
    fwd = 2 * 2 * 16 * 16 * 3 * 7 * 7
    with FlopCounterMode(display=False) as fc:
        flow_patch_embed(x, w, b, q, 7).sum().backward()
    counts = fc.get_flop_counts()["Global"]
    assert counts[torch.ops.agentattn.flow_patch_embed_fwd] == fwd
    assert counts[torch.ops.agentattn.flow_patch_embed_bwd] == fwd  # dweight only: x needs no grad


def test_reference_formulations_agree():
    x, w, b, q = _inputs(2, 3, 28, 28, 7, 16)
    torch.testing.assert_close(flow_patch_embed_unfold(x, w, b, q, 7), flow_patch_embed_ref(x, w, b, q, 7))
    torch.testing.assert_close(
        flow_patch_embed(x, w, b, q, 7, flatten=True, backend="reference"),
        flow_patch_embed_ref(x, w, b, q, 7).flatten(2).transpose(1, 2),
    )


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_run_in_fp32_on_cpu(dtype):
    inputs = _inputs(2, 3, 28, 28, 7, 16)
    lo = [t.to(dtype) for t in inputs]
    out = flow_patch_embed(*lo, 7, backend="cpp")
    assert out.dtype == dtype
    plain = flow_patch_embed_ref(*lo, 7).double()  # what torch does in that dtype
    ref = flow_patch_embed_ref(*inputs, 7)
    assert (out.double() - ref).abs().max() <= 2 * (plain - ref).abs().max() + 1e-3


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(x=(2, 3, 30, 28)), r"\(H, W\) = \(30, 28\) is not divisible by patch_size 7"),
        (dict(x=(2, 3, 28, 27)), r"\(28, 27\) is not divisible by patch_size 7"),
        (dict(x=(3, 28, 28)), r"x must be 4-D \(B, C, H, W\), got shape \(3, 28, 28\)"),
        (dict(w=(16, 2, 7, 7)), r"weight must be \(D, C, p, p\) = \(D, 3, 7, 7\), got \(16, 2, 7, 7\)"),
        (dict(w=(16, 3, 7, 6)), r"weight must be \(D, C, p, p\) = \(D, 3, 7, 7\), got \(16, 3, 7, 6\)"),
        (dict(b=(15,)), r"bias must be \(D,\) = \(16,\), got \(15,\)"),
        (dict(q=(16, 4, 5)), r"pos must be \(D, H/p, W/p\) = \(16, 4, 4\), got \(16, 4, 5\)"),
        (dict(q=(1, 16, 4, 4)), r"pos must be \(D, H/p, W/p\) = \(16, 4, 4\), got \(1, 16, 4, 4\)"),
        (dict(p=0), r"patch_size must be >= 1, got 0"),
    ],
)
def test_errors_name_argument_expected_and_actual(args, match):
    shapes = dict(x=(2, 3, 28, 28), w=(16, 3, 7, 7), b=(16,), q=(16, 4, 4), p=7) | args
    x, w, b, q = (torch.zeros(shapes[k]) for k in "xwbq")
    with pytest.raises(ValueError, match=match):
        flow_patch_embed(x, w, b, q, shapes["p"])


def test_dtype_and_backend_errors():
    x, w, b, q = _inputs(2, 3, 28, 28, 7, 16, dtype=torch.float32)
    with pytest.raises(ValueError, match="pos dtype torch.float64 differs from x dtype torch.float32"):
        flow_patch_embed(x, w, b, q.double(), 7)
    with pytest.raises(ValueError, match="x must be floating point"):
        flow_patch_embed(x.int(), w.int(), None, None, 7)
    with pytest.raises(ValueError, match="backend must be one of"):
        flow_patch_embed(x, w, b, q, 7, backend="fast")
    with pytest.raises(TypeError, match="bias must be a torch.Tensor or None"):
        flow_patch_embed(x, w, 1.0, q, 7)


@needs_ext
def test_non_contiguous_inputs_and_empty_batch():
    x, w, b, q = _inputs(2, 3, 28, 28, 7, 16)
    xs = x.to(memory_format=torch.channels_last)
    ws = w.transpose(2, 3).contiguous().transpose(2, 3)  # same values, non-contiguous strides
    assert not xs.is_contiguous() and not ws.is_contiguous()
    torch.testing.assert_close(flow_patch_embed(xs, ws, b, q, 7, backend="cpp"), flow_patch_embed_ref(x, w, b, q, 7))
    w.requires_grad_()
    out = flow_patch_embed(x[:0], w, b, q, 7, backend="cpp")
    assert out.shape == (0, 16, 4, 4)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))
