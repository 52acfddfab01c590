"""Triton flow-patch-embedding kernels against the fp64 reference: output and every gradient.

On CPU run under the interpreter, in its own process: ``TRITON_INTERPRET=1 python -m pytest -m triton``
(scripts/test.sh does this). Shapes are small (the interpreter is slow) but awkward: K = C·p·p not a
multiple of the block (147, 12, 48), D not a power of two, token counts that leave partial blocks,
rectangular inputs, several dweight splits, both output layouts, every bias/pos combination.
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

from agentattn.ops.flow_patch_embed import triton as tri  # noqa: E402
from agentattn.ops.flow_patch_embed.naive import flow_patch_embed_ref  # noqa: E402

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

CASES = [
    # B, C, H, W, p, D, bias, pos
    (2, 3, 28, 28, 7, 24, True, True),  # HTNet 28/7: K = 147, 4x4 tokens
    (1, 2, 56, 56, 4, 20, False, True),  # 56/4: K = 32, 196 tokens (partial last block)
    (3, 3, 8, 12, 2, 5, True, False),  # rectangular, K = 12, D = 5
    (1, 3, 32, 48, 16, 8, False, False),  # ViT-like K = 768 (12 K blocks), 2x3 tokens
]


def _id(c):
    B, C, H, W, p, D, b, q = c
    return f"B{B}-C{C}-{H}x{W}-p{p}-D{D}-bias{int(b)}-pos{int(q)}"


def _inputs(B, C, H, W, p, D, bias, pos, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return mk(B, C, H, W), mk(D, C, p, p) * 0.2, mk(D) if bias else None, mk(D, H // p, W // p) if pos else None


@pytest.mark.parametrize("flatten", [False, True], ids=["map", "flat"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_output_and_gradients_match_reference(case, flatten):
    B, C, H, W, p, D, *_ = case
    inputs = _inputs(*case, seed=1)
    ref = [None if t is None else t.clone().requires_grad_() for t in inputs]
    got = [None if t is None else t.float().to(DEVICE).requires_grad_() for t in inputs]
    out_ref = flow_patch_embed_ref(*ref, p)
    out_ref = out_ref.flatten(2).transpose(1, 2) if flatten else out_ref
    out = tri.flow_patch_embed_triton(*got, p, flatten)
    assert out.dtype == torch.float32 and out.shape == out_ref.shape
    grad = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out_ref.backward(grad)
    out.backward(grad.float().to(DEVICE))
    torch.testing.assert_close(out.detach().double().cpu(), out_ref.detach(), rtol=2e-5, atol=2e-5)
    for name, x, y in zip(("x", "weight", "bias", "pos"), got, ref, strict=True):
        if y is None:
            continue
        assert x.grad is not None and x.grad.shape == y.shape, name
        torch.testing.assert_close(x.grad.double().cpu(), y.grad, rtol=1e-4, atol=2e-5, msg=f"d{name}")


def test_backward_op_returns_empties_for_gradients_not_asked_for():
    x, w, b, q = (t.float().to(DEVICE) for t in _inputs(2, 3, 28, 28, 7, 24, True, True))
    out = tri.forward(x, w, b, q, 7, False)
    dx, dw, db, dq = tri.backward(torch.ones_like(out), x, w, None, None, 7, False, False, True)
    assert dx.numel() == 0 and db.numel() == 0 and dq.numel() == 0 and dw.shape == w.shape


def test_opcheck_and_bad_inputs():
    x, w, b, q = (t.float().to(DEVICE).requires_grad_() for t in _inputs(2, 2, 8, 12, 4, 5, True, True))
    torch.library.opcheck(tri._fwd_op, (x, w, b, q, 4, False))  # schema, fake, autograd, aot dispatch
    torch.library.opcheck(tri._fwd_op, (x, w, None, q, 4, True))
    x, w = x.detach(), w.detach()
    with pytest.raises(ValueError, match="fp16, bf16 and fp32"):
        tri.forward(x.int(), w.int(), None, None, 4, False)
    with pytest.raises(ValueError, match=r"not divisible by patch_size 4"):
        tri.forward(x[..., :10], w, None, None, 4, False)


def test_torch_compile_fullgraph():
    x, w, b, q = (t.float().to(DEVICE) for t in _inputs(2, 3, 8, 12, 2, 5, True, True))
    fn = torch.compile(tri.flow_patch_embed_triton, fullgraph=True, backend="eager")
    torch.testing.assert_close(fn(x, w, b, q, 2, True), tri.flow_patch_embed_triton(x, w, b, q, 2, True))


def test_fp16_tensor_core_path_within_twice_plain_torch_error(monkeypatch):
    """The fp16 dot path (operands cast to fp16, as on the GPU; forced on here under the interpreter):
    error vs fp64 at most 2x the plain PyTorch fp16 computation's error (+ a small floor)."""
    monkeypatch.setattr(tri, "_lowp", lambda x: True)
    inputs = _inputs(2, 3, 28, 28, 7, 24, True, True, seed=3)
    grad = torch.randn(2, 24, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def run(fn, dtype, device):
        xs = [t.to(device=device, dtype=dtype).clone().requires_grad_() for t in inputs]
        out = fn(*xs, 7)
        out.backward(grad.to(device=device, dtype=dtype))
        return [out.detach().double().cpu()] + [t.grad.double().cpu() for t in xs]

    ref = run(flow_patch_embed_ref, torch.float64, "cpu")
    plain = run(flow_patch_embed_ref, torch.float16, "cpu")
    got = run(lambda *a: tri.flow_patch_embed_triton(*a, False), torch.float16, DEVICE)
    for name, r, p, g in zip(("out", "dx", "dweight", "dbias", "dpos"), ref, plain, got, strict=True):
        err, base = (g - r).abs().max().item(), (p - r).abs().max().item()
        assert err <= 2 * base + 1e-3 * r.abs().max().item(), f"{name}: {err:.3g} vs plain fp16 {base:.3g}"
