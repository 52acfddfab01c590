"""Flow-patch embedding as a registered PyTorch op: input checks, backend dispatch, and the Python side of
the ``torch.library`` registration (fake tensors, autograd, FLOP formula).

    tokens[b, :, i, j] = W · x[b, :, i·p:(i+1)·p, j·p:(j+1)·p] + bias + pos[:, i, j]

The schema and the CPU (and, in CUDA builds, CUDA) kernels come from C++ (``csrc/``):
``agentattn::flow_patch_embed_fwd(x, weight, bias?, pos?, patch_size, flatten) -> out`` and
``agentattn::flow_patch_embed_bwd(grad_out, x, weight, bias?, pos?, patch_size, flatten, need_dx,
need_dweight) -> (dx, dweight, dbias, dpos)`` (gradients not asked for are empty tensors). The forward
keeps no state: the backward re-gathers the patches from x. Without the compiled extension every call
runs the reference in ``naive.py`` (one warning per process).
"""

from __future__ import annotations

import torch

from agentattn import _ext
from agentattn.ops.flow_patch_embed.naive import flow_patch_embed_ref

Tensor = torch.Tensor

BACKENDS = _ext.BACKEND_CHOICES
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------- checks
def check_inputs(x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, patch_size: int) -> None:
    """Raise a ``ValueError`` naming the argument, the expected and the actual shape/dtype/device."""
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("pos", pos)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor{' or None' if name in ('bias', 'pos') else ''}, got {type(t).__name__}"
            )
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    p = int(patch_size)
    if p < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if H % p or W % p:
        raise ValueError(
            f"x spatial size (H, W) = ({H}, {W}) is not divisible by patch_size {p}; resize or pad the "
            f"input to a multiple of {p} (e.g. ({-(-H // p) * p}, {-(-W // p) * p}))"
        )
    if weight.dim() != 4 or tuple(weight.shape[1:]) != (C, p, p):
        raise ValueError(f"weight must be (D, C, p, p) = (D, {C}, {p}, {p}), got {tuple(weight.shape)}")
    D = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"bias must be (D,) = ({D},), got {tuple(bias.shape)}")
    if pos is not None and tuple(pos.shape) != (D, H // p, W // p):
        raise ValueError(f"pos must be (D, H/p, W/p) = ({D}, {H // p}, {W // p}), got {tuple(pos.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x must be floating point (fp16, bf16, fp32, fp64), got {x.dtype}")
    for name, t in (("weight", weight), ("bias", bias), ("pos", pos)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from x dtype {x.dtype}; cast them to one dtype")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}; move them to one device")


# ------------------------------------------------------------------------------------------- dispatch
_AVAIL: dict = {}  # device type -> available backends, first = default (constant per process)


def _available(device_type: str) -> list:
    """Backends for ``device_type``, cached: a CUDA build made before this op existed has agent-attention
    CUDA kernels but not these, so 'cuda' is listed only when this op has a CUDA kernel. The cache keeps
    ``torch.compile`` from tracing into the extension queries."""
    if device_type not in _AVAIL:
        if device_type == "cpu":
            built = _ext.has_ext() and hasattr(torch.ops.agentattn, "flow_patch_embed_fwd")  # not a stale _C
            _AVAIL[device_type] = (["cpp"] if built else []) + ["reference"]
        elif device_type == "cuda":
            avail = _ext.device_backends("cuda")
            has = _ext.has_ext() and torch._C._dispatch_has_kernel_for_dispatch_key(
                "agentattn::flow_patch_embed_fwd", "CUDA"
            )
            _AVAIL[device_type] = [b for b in avail if b != "cuda" or has]
        else:
            _AVAIL[device_type] = ["reference"]
    return _AVAIL[device_type]


def resolve_backend(device: torch.device, backend: str | None) -> str:
    """The backend a call on ``device`` uses: the argument, else ``AGENTATTN_BACKEND`` (CPU) /
    ``AGENTATTN_CUDA_BACKEND`` (CUDA), else the first available (``agentattn.backends()``)."""
    return _ext.choose_backend("flow_patch_embed", device.type, backend, _available(device.type))


def flow_patch_embed(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    pos: Tensor | None = None,
    patch_size: int | None = None,
    flatten: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Patch projection + bias + absolute position embedding in one op.

    Args:
        x: (B, C, H, W), H and W divisible by the patch size p.
        weight: (D, C, p, p), laid out like ``nn.Conv2d(C, D, p, stride=p).weight``.
        bias: (D,) or None.
        pos: (D, H/p, W/p) or None (LAPE: one D-vector per patch position).
        patch_size: p (default: ``weight.shape[-1]``).
        flatten: return (B, N, D) tokens, N = (H/p)·(W/p) in row-major (i, j) order, instead of the map.
        backend: 'auto' (default), 'cpp', 'cuda', 'triton' or 'reference'.
            Under ``torch.func.vmap`` 'auto' runs the reference composition (PyTorch's own batching
            rules; the compiled ops have none).
    Returns:
        (B, D, H/p, W/p), or (B, N, D) when ``flatten``; differentiable w.r.t. x, weight, bias and pos.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    p = int(weight.shape[-1] if patch_size is None else patch_size)
    check_inputs(x, weight, bias, pos, p)
    flatten = bool(flatten)
    be = resolve_backend(x.device, backend)
    if be == "cuda" and x.dtype == torch.float64:
        be = "reference"  # the CUDA kernels take fp16/bf16/fp32
    if backend is None and _ext.under_vmap(x, weight, bias, pos):
        be = "reference"  # under torch.func.vmap (e.g. mer's folds trained together): PyTorch's batching rules
    if be == "triton":
        from agentattn.ops.flow_patch_embed import triton as tri

        return tri.flow_patch_embed_triton(x, weight, bias, pos, p, flatten)
    if be == "reference":
        out = flow_patch_embed_ref(x, weight, bias, pos, p)
        return out.flatten(2).transpose(1, 2) if flatten else out
    # compiled C++/CUDA op; the CPU kernel computes in fp32/fp64, so half types go through fp32 there
    low = x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16)
    cast = (lambda t: None if t is None else t.float()) if low else (lambda t: t)
    out = torch.ops.agentattn.flow_patch_embed_fwd(cast(x), cast(weight), cast(bias), cast(pos), p, flatten)
    return out.to(x.dtype) if low else out


# ------------------------------------------------------------------------------ torch.library (Python)
def flops_forward(x_shape, w_shape) -> int:
    """2·B·N·D·K multiply-add FLOPs of the projection (N = tokens per image, K = C·p·p); the bias and
    position additions (B·N·D each) are not counted, as torch counts convolutions."""
    B, C, H, W = x_shape
    D, _, p, _ = w_shape
    return 2 * B * (H // p) * (W // p) * D * C * p * p


def _register() -> None:
    """Fake, autograd and FLOP formula for the C++ ops (only when the extension is loaded)."""
    if not _ext.has_ext() or not hasattr(torch.ops.agentattn, "flow_patch_embed_fwd"):
        return
    from torch.utils.flop_counter import register_flop_formula

    _available("cpu")  # fill the cache outside any torch.compile trace
    fwd = "agentattn::flow_patch_embed_fwd"
    bwd = "agentattn::flow_patch_embed_bwd"

    @torch.library.register_fake(fwd)
    def _fwd_fake(x, weight, bias, pos, patch_size, flatten):
        B, _, H, W = x.shape
        D, p = weight.shape[0], patch_size
        shape = (B, (H // p) * (W // p), D) if flatten else (B, D, H // p, W // p)
        return x.new_empty(shape)

    @torch.library.register_fake(bwd)
    def _bwd_fake(grad_out, x, weight, bias, pos, patch_size, flatten, need_dx, need_dweight):
        return (
            torch.empty_like(x) if need_dx else x.new_empty((0,)),
            torch.empty_like(weight) if need_dweight else x.new_empty((0,)),
            torch.empty_like(bias) if bias is not None else x.new_empty((0,)),
            torch.empty_like(pos) if pos is not None else x.new_empty((0,)),
        )

    def setup_context(ctx, inputs, output):
        x, weight, bias, pos, patch_size, flatten = inputs
        ctx.save_for_backward(x, weight)  # no forward state: the backward re-gathers patches from x
        ctx.has_bias, ctx.has_pos = bias is not None, pos is not None
        ctx.patch_size, ctx.flatten = patch_size, flatten

    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        D = weight.shape[0]
        # bias/pos are passed only for their shapes (the kernels never read them)
        b = x.new_empty((D,)) if ctx.has_bias else None
        q = x.new_empty((D, x.shape[2] // ctx.patch_size, x.shape[3] // ctx.patch_size)) if ctx.has_pos else None
        dx, dw, db, dp = torch.ops.agentattn.flow_patch_embed_bwd(
            grad_out.contiguous(), x, weight, b, q, ctx.patch_size, ctx.flatten, bool(need[0]), bool(need[1])
        )
        return (
            dx if need[0] else None,
            dw if need[1] else None,
            db if ctx.has_bias and need[2] else None,
            dp if ctx.has_pos and need[3] else None,
            None,
            None,
        )

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)

    @register_flop_formula(torch.ops.agentattn.flow_patch_embed_fwd)
    def _fwd_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        return flops_forward(x_shape, w_shape)

    # backward: one product of the forward's size per gradient asked for (dx: dY·W, dweight: dYᵀ·cols)
    @register_flop_formula(torch.ops.agentattn.flow_patch_embed_bwd)
    def _bwd_flops(
        g_shape,
        x_shape,
        w_shape,
        b_shape,
        p_shape,
        patch_size,
        flatten,
        need_dx,
        need_dweight,
        *args,
        out_shape=None,
        **kwargs,
    ) -> int:
        return (int(need_dx) + int(need_dweight)) * flops_forward(x_shape, w_shape)


_register()
