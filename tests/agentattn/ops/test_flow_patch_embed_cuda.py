"""GPU tests of the flow-patch embedding: the CUDA kernels (when built) and the Triton kernels against the
fp64 reference, output and every gradient, fp32 / fp16 / bf16 (low precision: error at most 2x the plain
PyTorch computation's error in that dtype), opcheck and torch.compile. Skipped without a GPU:
``python -m pytest -m cuda tests/agentattn/ops/test_flow_patch_embed_cuda.py`` on a GPU machine."""

import pytest
import torch

import agentattn
from agentattn.ops.flow_patch_embed.naive import flow_patch_embed_ref
from agentattn.ops.flow_patch_embed.op import _available, flow_patch_embed

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPES = [(64, 3, 28, 28, 7, 256), (8, 3, 56, 56, 4, 96), (2, 3, 224, 224, 16, 192), (3, 2, 12, 20, 2, 5)]


def _backends():
    return [b for b in ("cuda", "triton") if torch.cuda.is_available() and b in _available("cuda")]


def _run(backend, inputs, p, flatten, grad, dtype):
    xs = [None if t is None else t.to("cuda", dtype).requires_grad_() for t in inputs]
    if backend == "torch":
        out = flow_patch_embed_ref(*xs, p)
        out = out.flatten(2).transpose(1, 2) if flatten else out
    else:
        out = flow_patch_embed(*xs, p, flatten=flatten, backend=backend)
    out.backward(grad.to("cuda", dtype))
    return [out.detach().double().cpu()] + [None if t is None else t.grad.double().cpu() for t in xs]


@pytest.mark.parametrize("flatten", [False, True], ids=["map", "flat"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-C{}-{}x{}-p{}-D{}".format(*s))
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backends_match_reference(backend, shape, dtype, flatten):
    if backend not in _backends():
        pytest.skip(f"backend {backend} not available: {agentattn.backends()['cuda']}")
    B, C, H, W, p, D = shape
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    inputs = (mk(B, C, H, W), mk(D, C, p, p) * (C * p * p) ** -0.5, mk(D), mk(D, H // p, W // p))
    grad = mk(*((B, (H // p) * (W // p), D) if flatten else (B, D, H // p, W // p)))
    ref = [o.cpu() if o is not None else None for o in _run("torch", inputs, p, flatten, grad, torch.float64)]
    got = _run(backend, inputs, p, flatten, grad, dtype)
    plain = _run("torch", inputs, p, flatten, grad, dtype) if dtype != torch.float32 else None
    for i, name in enumerate(("out", "dx", "dweight", "dbias", "dpos")):
        r, x = ref[i], got[i]
        if dtype == torch.float32:
            torch.testing.assert_close(x, r, rtol=1e-4, atol=1e-4 * r.abs().max().item(), msg=name)
        else:
            err, base = (x - r).abs().max().item(), (plain[i] - r).abs().max().item()
            assert err <= 2 * base + 1e-3 * r.abs().max().item(), f"{name}: {err:.3g} vs plain {base:.3g}"


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_opcheck_and_compile(backend):
    if backend not in _backends():
        pytest.skip(f"backend {backend} not available")
    x = torch.randn(2, 3, 28, 28, device="cuda")
    w, b, q = (torch.randn(*s, device="cuda", requires_grad=True) for s in ((16, 3, 7, 7), (16,), (16, 4, 4)))
    if backend == "cuda":
        torch.library.opcheck(torch.ops.agentattn.flow_patch_embed_fwd.default, (x, w, b, q, 7, False))
    else:
        from agentattn.ops.flow_patch_embed import triton as tri

        torch.library.opcheck(tri._fwd_op, (x, w, b, q, 7, False))
    fn = torch.compile(lambda *a: flow_patch_embed(*a, 7, flatten=True, backend=backend), fullgraph=True)
    torch.testing.assert_close(fn(x, w, b, q), flow_patch_embed(x, w, b, q, 7, flatten=True, backend=backend))
