"""Triton kernels for the flow-patch embedding (forward and backward). Launchers live in ``triton.py``.

    out[b, :, i, j] = W2 · patch(x)[b, i, j] + bias + pos[:, i, j]

x (B, C, H, W) contiguous; W2 = weight viewed as (D, K), K = C·p·p, column k = (c, pi, pj) channel-major;
tokens are numbered tok = b·L + l, l = i·gw + j (L = gh·gw). The patch matrix ``cols`` (B·L x K) is never
stored: every kernel gathers its (BLOCK_M x BLOCK_K) tile straight from x with

    addr(tok, k) = ((b·C + c)·H + i·p + pi)·W + j·p + pj

Output layouts: map (B, D, gh, gw) -> out[(b·D + n)·L + l]; flatten (B, L, D) -> out[tok·D + n].
Accumulation is fp32; with ``LOWP`` the dot operands are cast to the input dtype (fp16/bf16 tensor
cores), else ``tl.dot`` runs in IEEE fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from agentattn.ops.triton_common import mm as _mm


@triton.jit
def _patch_offsets(tok, k, C, H, W, P: tl.constexpr, GW, L):
    """Element offsets into x of (token, patch column) pairs; tok (M,) int64, k (K,) -> (M, K)."""
    b = tok // L
    l = tok % L
    i = l // GW
    j = l % GW
    c = k // (P * P)
    r = k % (P * P)
    pi = r // P
    pj = r % P
    row = (b[:, None] * C + c[None, :]) * H + i[:, None] * P + pi[None, :]
    return row * W + j[:, None] * P + pj[None, :]


@triton.jit
def _out_offsets(tok, n, D, L, FLATTEN: tl.constexpr):
    """Offsets into the output (or its gradient) of (token, channel) pairs -> (M, N)."""
    if FLATTEN:
        return tok[:, None] * D + n[None, :]
    else:
        b = tok // L
        l = tok % L
        return (b[:, None] * D + n[None, :]) * L + l[:, None]


@triton.jit
def _fwd_kernel(
    X,
    WGT,
    BIAS,
    POS,
    OUT,
    NTOK,
    C,
    H,
    W,
    GW,
    L,
    D,
    K,
    P: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_POS: tl.constexpr,
    FLATTEN: tl.constexpr,
    LOWP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (token block, channel block): out tile = cols tile · W2ᵀ tile + bias + pos, one store."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    tok = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = tok < NTOK
    mask_n = n < D
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask_k = k < K
        a = tl.load(X + _patch_offsets(tok, k, C, H, W, P, GW, L), mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(WGT + n[None, :] * K + k[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc += _mm(a, w, X, LOWP)
    if HAS_BIAS:
        acc += tl.load(BIAS + n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_POS:
        l = tok % L
        acc += tl.load(POS + n[None, :] * L + l[:, None], mask=mask_m[:, None] & mask_n[None, :], other=0.0).to(
            tl.float32
        )
    tl.store(
        OUT + _out_offsets(tok, n, D, L, FLATTEN), acc.to(OUT.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :]
    )


@triton.jit
def _bwd_dweight_kernel(
    X,
    DOUT,
    DW_PART,
    NTOK,
    C,
    H,
    W,
    GW,
    L,
    D,
    K,
    TILES_PER_SPLIT,
    P: tl.constexpr,
    FLATTEN: tl.constexpr,
    LOWP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (channel block, column block, split): partial dW2 = dYᵀ · cols over the split's token
    range, written to DW_PART[split] (fp32 (SPLITS, D, K)); the launcher sums the splits in order."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    sp = tl.program_id(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_n = n < D
    mask_k = k < K
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    start = sp.to(tl.int64) * TILES_PER_SPLIT * BLOCK_M
    for t in range(0, TILES_PER_SPLIT):
        tok = start + t * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = tok < NTOK
        dy = tl.load(DOUT + _out_offsets(tok, n, D, L, FLATTEN), mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        a = tl.load(X + _patch_offsets(tok, k, C, H, W, P, GW, L), mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc += _mm(tl.trans(dy), a, X, LOWP)
    tl.store(
        DW_PART + sp.to(tl.int64) * D * K + n[:, None] * K + k[None, :], acc, mask=mask_n[:, None] & mask_k[None, :]
    )


@triton.jit
def _bwd_dx_kernel(
    DOUT,
    WGT,
    DX,
    NTOK,
    C,
    H,
    W,
    GW,
    L,
    D,
    K,
    P: tl.constexpr,
    FLATTEN: tl.constexpr,
    LOWP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (token block, column block): dcols tile = dY · W2 over all channels, scattered into dx
    (the patches do not overlap and cover x, so every element of dx is written exactly once)."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    tok = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_m = tok < NTOK
    mask_k = k < K
    acc = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for n0 in range(0, D, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        mask_n = n < D
        dy = tl.load(DOUT + _out_offsets(tok, n, D, L, FLATTEN), mask=mask_m[:, None] & mask_n[None, :], other=0.0)
        w = tl.load(WGT + n[:, None] * K + k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc += _mm(dy, w, DOUT, LOWP)
    tl.store(
        DX + _patch_offsets(tok, k, C, H, W, P, GW, L),
        acc.to(DX.dtype.element_ty),
        mask=mask_m[:, None] & mask_k[None, :],
    )
