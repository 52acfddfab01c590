"""Triton implementation of the flow-patch embedding: launchers and the ``torch.library`` custom ops.

Kernels are in ``triton_kernels.py``. Public entry: :func:`flow_patch_embed_triton` (differentiable).
Registered ops (so ``torch.compile(fullgraph=True)`` and ``torch.library.opcheck`` see them):

    agentattn_triton::flow_patch_embed_fwd(x, weight, bias?, pos?, patch_size, flatten) -> out
    agentattn_triton::flow_patch_embed_bwd(grad_out, x, weight, bias?, pos?, patch_size, flatten,
                                           need_dx, need_dweight) -> (dx, dweight, dbias, dpos)

The same contract as the C++ ops ``agentattn::flow_patch_embed_fwd/bwd``: gradients not asked for are
empty tensors. Inputs fp16, bf16 or fp32 (fp32 accumulation). Forward: one kernel (patch gather from x,
``tl.dot``, bias + pos epilogue, one store). Backward: dweight by a split-token kernel (fixed-order sum of
the fp32 partials, deterministic), dx by a kernel that scatters its tile straight into dx; dpos and dbias
are plain reductions of grad_out (``sum`` over the batch, then over positions).

Runs on CUDA tensors; with ``TRITON_INTERPRET=1`` (set before ``import triton``) also on CPU tensors,
which is how the CPU test suite checks it. Nothing here touches a GPU at import time.
"""

from __future__ import annotations

import os

import torch
import triton

from agentattn.ops.flow_patch_embed.triton_kernels import _bwd_dweight_kernel, _bwd_dx_kernel, _fwd_kernel

Tensor = torch.Tensor
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32)


def _lowp(x: Tensor) -> bool:
    return x.dtype in (torch.float16, torch.bfloat16) and not _INTERPRET


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a small number so that tests exercise several splits


def _blocks(D: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_M tokens, BLOCK_N channels, BLOCK_K patch columns)."""
    bn = min(128, max(16, triton.next_power_of_2(D)))
    bk = min(64, max(16, triton.next_power_of_2(K)))
    return 64, bn, bk


def _check(x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, p: int) -> None:
    if x.device.type != "cuda" and not _INTERPRET:
        raise ValueError(
            f"the Triton backend needs CUDA tensors (got {x.device}); set TRITON_INTERPRET=1 "
            "before importing triton to run it on CPU for testing"
        )
    if x.dtype not in _SUPPORTED:
        raise ValueError(f"the Triton backend supports fp16, bf16 and fp32, got {x.dtype}")
    from agentattn.ops.flow_patch_embed.op import check_inputs

    check_inputs(x, weight, bias, pos, p)


def _geometry(x: Tensor, weight: Tensor, p: int) -> tuple:
    B, C, H, W = x.shape
    D = weight.shape[0]
    gh, gw = H // p, W // p
    return B, C, H, W, D, gh, gw, gh * gw, C * p * p


def forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, patch_size: int, flatten: bool
) -> Tensor:
    """Launch the forward kernel. Returns (B, D, H/p, W/p), or (B, L, D) when ``flatten``."""
    p = int(patch_size)
    _check(x, weight, bias, pos, p)
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    pos = None if pos is None else pos.contiguous()
    B, C, H, W, D, gh, gw, L, K = _geometry(x, weight, p)
    out = x.new_empty((B, L, D) if flatten else (B, D, gh, gw))
    ntok = B * L
    if out.numel() == 0:
        return out
    BM, BN, BK = _blocks(D, K)
    _fwd_kernel[(triton.cdiv(ntok, BM), triton.cdiv(D, BN))](
        x,
        weight,
        bias if bias is not None else x,
        pos if pos is not None else x,
        out,
        ntok,
        C,
        H,
        W,
        gw,
        L,
        D,
        K,
        P=p,
        HAS_BIAS=bias is not None,
        HAS_POS=pos is not None,
        FLATTEN=bool(flatten),
        LOWP=_lowp(x),
        BLOCK_M=BM,
        BLOCK_N=BN,
        BLOCK_K=BK,
        num_warps=4,
    )
    return out


def backward(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor | None,
    patch_size: int,
    flatten: bool,
    need_dx: bool,
    need_dweight: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the backward kernels. Returns (dx, dweight, dbias, dpos); a gradient not asked for (or of
    an absent bias/pos) is an empty tensor."""
    p = int(patch_size)
    _check(x, weight, bias, pos, p)
    x, weight, grad_out = x.contiguous(), weight.contiguous(), grad_out.contiguous()
    B, C, H, W, D, gh, gw, L, K = _geometry(x, weight, p)
    ntok = B * L
    BM, BN, BK = _blocks(D, K)
    lowp = _lowp(x)
    empty = lambda: x.new_empty((0,))  # noqa: E731  (distinct empties: outputs may not alias)
    dx = empty()
    if need_dx:
        dx = torch.empty_like(x)
        if dx.numel():
            _bwd_dx_kernel[(triton.cdiv(ntok, BM), triton.cdiv(K, BK))](
                grad_out,
                weight,
                dx,
                ntok,
                C,
                H,
                W,
                gw,
                L,
                D,
                K,
                P=p,
                FLATTEN=bool(flatten),
                LOWP=lowp,
                BLOCK_M=BM,
                BLOCK_N=BN,
                BLOCK_K=BK,
                num_warps=4,
            )
    dw = empty()
    if need_dweight:
        tiles = triton.cdiv(ntok, BM)
        grid_nk = triton.cdiv(D, BN) * triton.cdiv(K, BK)
        want = max(1, -(-2 * _num_sms(x.device) // grid_nk))  # about two programs per SM
        per = -(-tiles // max(1, min(tiles, want)))
        splits = -(-tiles // per) if tiles else 1
        part = torch.zeros((splits, D, K), device=x.device, dtype=torch.float32)
        if tiles:
            _bwd_dweight_kernel[(triton.cdiv(D, BN), triton.cdiv(K, BK), splits)](
                x,
                grad_out,
                part,
                ntok,
                C,
                H,
                W,
                gw,
                L,
                D,
                K,
                per,
                P=p,
                FLATTEN=bool(flatten),
                LOWP=lowp,
                BLOCK_M=BM,
                BLOCK_N=BN,
                BLOCK_K=BK,
                num_warps=4,
            )
        dw = part.sum(0).reshape(weight.shape).to(x.dtype)
    dpos = empty()
    dbias = empty()
    if bias is not None or pos is not None:
        g = grad_out.float()
        dp = g.sum(0).transpose(0, 1).reshape(D, gh, gw) if flatten else g.sum(0)  # (D, gh, gw) fp32
        if pos is not None:
            dpos = dp.to(x.dtype)
        if bias is not None:
            dbias = dp.sum((1, 2)).to(x.dtype)
    return dx, dw, dbias, dpos


# ------------------------------------------------------------------------------------- custom ops
@torch.library.custom_op("agentattn_triton::flow_patch_embed_fwd", mutates_args=())
def _fwd_op(
    x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, patch_size: int, flatten: bool
) -> Tensor:
    return forward(x, weight, bias, pos, patch_size, flatten)


@_fwd_op.register_fake
def _(x, weight, bias, pos, patch_size, flatten):
    B, _, H, W = x.shape
    D, p = weight.shape[0], patch_size
    return x.new_empty((B, (H // p) * (W // p), D) if flatten else (B, D, H // p, W // p))


@torch.library.custom_op("agentattn_triton::flow_patch_embed_bwd", mutates_args=())
def _bwd_op(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    pos: Tensor | None,
    patch_size: int,
    flatten: bool,
    need_dx: bool,
    need_dweight: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return backward(grad_out, x, weight, bias, pos, patch_size, flatten, need_dx, need_dweight)


@_bwd_op.register_fake
def _(grad_out, x, weight, bias, pos, patch_size, flatten, need_dx, need_dweight):
    return (
        torch.empty_like(x) if need_dx else x.new_empty((0,)),
        torch.empty_like(weight) if need_dweight else x.new_empty((0,)),
        torch.empty_like(bias) if bias is not None else x.new_empty((0,)),
        torch.empty_like(pos) if pos is not None else x.new_empty((0,)),
    )


def _setup_context(ctx, inputs, output):
    x, weight, bias, pos, patch_size, flatten = inputs
    ctx.save_for_backward(x, weight, bias, pos)  # bias/pos only for their shapes; no forward state
    ctx.patch_size, ctx.flatten = patch_size, flatten


def _backward(ctx, grad_out):
    x, weight, bias, pos = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dw, db, dp = _bwd_op(
        grad_out.contiguous(), x, weight, bias, pos, ctx.patch_size, ctx.flatten, bool(need[0]), bool(need[1])
    )
    return (
        dx if need[0] else None,
        dw if need[1] else None,
        db if bias is not None and need[2] else None,
        dp if pos is not None and need[3] else None,
        None,
        None,
    )


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def flow_patch_embed_triton(
    x: Tensor, weight: Tensor, bias: Tensor | None, pos: Tensor | None, patch_size: int, flatten: bool = False
) -> Tensor:
    """Flow-patch embedding on the Triton kernels, differentiable.

    x (B, C, H, W); weight (D, C, p, p); bias (D) or None; pos (D, H/p, W/p) or None.
    Returns (B, D, H/p, W/p), or (B, N, D) when ``flatten``. float64 inputs run on the reference.
    """
    if x.dtype == torch.float64:
        from agentattn.ops.flow_patch_embed.naive import flow_patch_embed_ref

        out = flow_patch_embed_ref(x, weight, bias, pos, patch_size)
        return out.flatten(2).transpose(1, 2) if flatten else out
    return _fwd_op(x, weight, bias, pos, int(patch_size), bool(flatten))
