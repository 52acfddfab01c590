"""Triton kernels for Agent Attention (forward and backward). Launchers live in ``triton.py``.

Per (batch b, head h) with scale s, agents A (n x d), keys/values K, V (M x d) and queries Q (N x d):

    stage 1  S1 = s A Kᵀ + B1 (n x M), P1 = softmax over M, V_A = P1 V        (flash-decoding split over M)
    stage 2  S2 = s Q Aᵀ + B2 (N x n), P2 = softmax over n, O = P2 V_A        (one pass per query row block)

Non-finite values follow the reference composition: a NaN score makes its softmax row NaN (exp(NaN) enters
the row sum), a row of -inf scores gives NaN (0/0), and a tile whose scores are all -inf so far (masked keys
of a longer row) contributes exactly 0: the online softmax subtracts 0 instead of a -inf running max there,
so that no exp(-inf - -inf) = NaN appears where the reference is finite.

Shapes inside the kernels: n is padded to BLOCK_A (>= 16, power of two), d to BLOCK_D; padding is masked.
Scratch tensors of partial results are stored padded ((BH, SPLITS, BLOCK_A[, BLOCK_D]) fp32, contiguous),
so they need no masks. Biases are contiguous (Bb, Hb, rows, cols); their batch/head strides are 0 when
broadcast. Accumulation is always fp32; with ``LOWP`` the dot operands are cast to the input dtype
(fp16/bf16 tensor cores), else ``tl.dot`` runs in IEEE fp32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from agentattn.ops.triton_common import mm as _mm


# ------------------------------------------------------------------------------------------ forward
@triton.jit
def _stage1_fwd_split(
    A,
    K,
    V,
    B1,
    M_PART,
    L_PART,
    ACC_PART,
    scale,
    H,
    M,
    n,
    D,
    b1_sb,
    b1_sh,
    TILES_PER_SPLIT,
    SPLITS,
    HAS_B1: tl.constexpr,
    LOWP: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (split, bh): online softmax of the n agent rows over its range of the M keys; writes the
    partial row max, row sum and unnormalised P1 V accumulator of that split."""
    sp = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_a = tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    mask_a = offs_a < n
    mask_d = offs_d < D
    a = (
        tl.load(
            A + bh * n * D + offs_a[:, None] * D + offs_d[None, :], mask=mask_a[:, None] & mask_d[None, :], other=0.0
        ).to(tl.float32)
        * scale
    )
    m_i = tl.full([BLOCK_A], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_A], tl.float32)
    acc = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
    kv = bh * M * D
    start = sp * TILES_PER_SPLIT * BLOCK_N
    for t in range(0, TILES_PER_SPLIT):
        offs_n = start + t * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < M
        mask_nd = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + kv + offs_n[:, None] * D + offs_d[None, :], mask=mask_nd, other=0.0)
        s = _mm(a, tl.trans(k), K, LOWP)
        if HAS_B1:
            s += tl.load(
                B1 + b * b1_sb + h * b1_sh + offs_a[:, None] * M + offs_n[None, :],
                mask=mask_a[:, None] & mask_n[None, :],
                other=0.0,
            ).to(tl.float32)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: p = 0, not NaN
        alpha = tl.exp(m_i - m_use)
        p = tl.exp(s - m_use[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + kv + offs_n[:, None] * D + offs_d[None, :], mask=mask_nd, other=0.0)
        acc = acc * alpha[:, None] + _mm(p, v, V, LOWP)
        m_i = m_new
    row = (bh * SPLITS + sp) * BLOCK_A + offs_a
    tl.store(M_PART + row, m_i)
    tl.store(L_PART + row, l_i)
    tl.store(ACC_PART + row[:, None] * BLOCK_D + offs_d[None, :], acc)


@triton.jit
def _stage1_fwd_reduce(
    M_PART,
    L_PART,
    ACC_PART,
    VA,
    LSE1,
    n,
    D,
    SPLITS,
    BLOCK_A: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program bh: combines the SPLITS partial softmax states into V_A (n x d) and lse1 (n)."""
    bh = tl.program_id(0).to(tl.int64)
    offs_a = tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_A], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_A], tl.float32)
    acc = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
    for sp in range(0, SPLITS):
        row = (bh * SPLITS + sp) * BLOCK_A + offs_a
        m_s = tl.load(M_PART + row)
        l_s = tl.load(L_PART + row)
        acc_s = tl.load(ACC_PART + row[:, None] * BLOCK_D + offs_d[None, :])
        m_new = tl.maximum(m, m_s)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # splits of all -inf so far weigh 0, not NaN
        c_old = tl.exp(m - m_use)
        c_new = tl.exp(m_s - m_use)
        l = l * c_old + l_s * c_new
        acc = acc * c_old[:, None] + acc_s * c_new[:, None]
        m = m_new
    mask_a = offs_a < n
    va = acc / l[:, None]
    tl.store(
        VA + bh * n * D + offs_a[:, None] * D + offs_d[None, :],
        va.to(VA.dtype.element_ty),
        mask=mask_a[:, None] & (offs_d[None, :] < D),
    )
    tl.store(LSE1 + bh * n + offs_a, m + tl.log(l), mask=mask_a)


@triton.jit
def _stage2_fwd(
    Q,
    A,
    VA,
    B2,
    O,
    LSE2,
    scale,
    H,
    N,
    n,
    D,
    b2_sb,
    b2_sh,
    HAS_B2: tl.constexpr,
    LOWP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (row block, bh): BLOCK_M query rows against all n agents; A and V_A stay in registers."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_a = tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_a = offs_a < n
    mask_d = offs_d < D
    mask_ad = mask_a[:, None] & mask_d[None, :]
    a = tl.load(A + bh * n * D + offs_a[:, None] * D + offs_d[None, :], mask=mask_ad, other=0.0)
    va = tl.load(VA + bh * n * D + offs_a[:, None] * D + offs_d[None, :], mask=mask_ad, other=0.0)
    mask_md = mask_m[:, None] & mask_d[None, :]
    q = tl.load(Q + bh * N * D + offs_m[:, None] * D + offs_d[None, :], mask=mask_md, other=0.0)
    s = _mm(q.to(tl.float32) * scale, tl.trans(a), Q, LOWP)
    if HAS_B2:
        s += tl.load(
            B2 + b * b2_sb + h * b2_sh + offs_m[:, None] * n + offs_a[None, :],
            mask=mask_m[:, None] & mask_a[None, :],
            other=0.0,
        ).to(tl.float32)
    s = tl.where(mask_a[None, :], s, float("-inf"))
    m = tl.max(s, 1)
    p = tl.exp(s - m[:, None])
    l = tl.sum(p, 1)
    p = p / l[:, None]
    o = _mm(p, va, Q, LOWP)
    tl.store(O + bh * N * D + offs_m[:, None] * D + offs_d[None, :], o.to(O.dtype.element_ty), mask=mask_md)
    tl.store(LSE2 + bh * N + offs_m, m + tl.log(l), mask=mask_m)


# ----------------------------------------------------------------------------------------- backward
@triton.jit
def _stage2_bwd(
    Q,
    A,
    VA,
    B2,
    O,
    DO,
    LSE2,
    DQ,
    DB2,
    DA_PART,
    DVA_PART,
    scale,
    H,
    N,
    n,
    D,
    b2_sb,
    b2_sh,
    TILES_PER_SPLIT,
    SPLITS,
    HAS_B2: tl.constexpr,
    B2_ATOMIC: tl.constexpr,
    LOWP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (split, bh) over TILES_PER_SPLIT query row blocks: P2 recomputed from lse2;
    dS2 = P2 (dO V_Aᵀ - rowsum(dO O)); writes dQ, dB2 (atomic fp32 add when the bias is broadcast) and
    the split's partial dA = s dS2ᵀ Q and dV_A = P2ᵀ dO."""
    sp = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_a = tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    mask_a = offs_a < n
    mask_d = offs_d < D
    mask_ad = mask_a[:, None] & mask_d[None, :]
    a = tl.load(A + bh * n * D + offs_a[:, None] * D + offs_d[None, :], mask=mask_ad, other=0.0).to(tl.float32)
    va = tl.load(VA + bh * n * D + offs_a[:, None] * D + offs_d[None, :], mask=mask_ad, other=0.0).to(tl.float32)
    da = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
    dva = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
    base = bh * N * D
    for t in range(0, TILES_PER_SPLIT):
        offs_m = (sp * TILES_PER_SPLIT + t) * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        mask_md = mask_m[:, None] & mask_d[None, :]
        mask_ma = mask_m[:, None] & mask_a[None, :]
        ptrs = base + offs_m[:, None] * D + offs_d[None, :]
        q = tl.load(Q + ptrs, mask=mask_md, other=0.0).to(tl.float32)
        do = tl.load(DO + ptrs, mask=mask_md, other=0.0).to(tl.float32)
        o = tl.load(O + ptrs, mask=mask_md, other=0.0).to(tl.float32)
        s = _mm(q * scale, tl.trans(a), Q, LOWP)
        boffs = b * b2_sb + h * b2_sh + offs_m[:, None] * n + offs_a[None, :]
        if HAS_B2:
            s += tl.load(B2 + boffs, mask=mask_ma, other=0.0).to(tl.float32)
        lse = tl.load(LSE2 + bh * N + offs_m, mask=mask_m, other=0.0)
        p = tl.where(mask_ma, tl.exp(s - lse[:, None]), 0.0)
        dp = _mm(do, tl.trans(va), Q, LOWP)
        di = tl.sum(do * o, 1)
        ds = p * (dp - di[:, None])
        dq = _mm(ds, a, Q, LOWP) * scale
        tl.store(DQ + ptrs, dq.to(DQ.dtype.element_ty), mask=mask_md)
        da += _mm(tl.trans(ds), q, Q, LOWP) * scale
        dva += _mm(tl.trans(p), do, Q, LOWP)
        if HAS_B2:
            if B2_ATOMIC:
                tl.atomic_add(DB2 + boffs, ds, mask=mask_ma)
            else:
                tl.store(DB2 + boffs, ds.to(DB2.dtype.element_ty), mask=mask_ma)
    row = (bh * SPLITS + sp) * BLOCK_A + offs_a
    tl.store(DA_PART + row[:, None] * BLOCK_D + offs_d[None, :], da)
    tl.store(DVA_PART + row[:, None] * BLOCK_D + offs_d[None, :], dva)


@triton.jit
def _stage1_bwd(
    A,
    K,
    V,
    VA,
    B1,
    LSE1,
    DVA,
    DK,
    DV,
    DB1,
    DA_PART,
    scale,
    H,
    M,
    n,
    D,
    b1_sb,
    b1_sh,
    TILES_PER_SPLIT,
    SPLITS,
    HAS_B1: tl.constexpr,
    B1_ATOMIC: tl.constexpr,
    LOWP: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (split, bh) over TILES_PER_SPLIT key blocks, upstream gradient dV_A (fp32, padded
    (BH, BLOCK_A, BLOCK_D)): P1 recomputed from lse1; dV = P1ᵀ dV_A, dS1 = P1 (dV_A Vᵀ - rowsum(dV_A V_A)),
    dK = s dS1ᵀ A, dB1; partial dA = s dS1 K of the split."""
    sp = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    offs_a = tl.arange(0, BLOCK_A)
    offs_d = tl.arange(0, BLOCK_D)
    mask_a = offs_a < n
    mask_d = offs_d < D
    mask_ad = mask_a[:, None] & mask_d[None, :]
    a = tl.load(A + bh * n * D + offs_a[:, None] * D + offs_d[None, :], mask=mask_ad, other=0.0).to(tl.float32)
    va = tl.load(VA + bh * n * D + offs_a[:, None] * D + offs_d[None, :], mask=mask_ad, other=0.0).to(tl.float32)
    dva = tl.load(DVA + (bh * BLOCK_A + offs_a[:, None]) * BLOCK_D + offs_d[None, :])
    d1 = tl.sum(dva * va, 1)
    lse = tl.load(LSE1 + bh * n + offs_a, mask=mask_a, other=0.0)
    da = tl.zeros([BLOCK_A, BLOCK_D], tl.float32)
    base = bh * M * D
    for t in range(0, TILES_PER_SPLIT):
        offs_n = (sp * TILES_PER_SPLIT + t) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < M
        mask_nd = mask_n[:, None] & mask_d[None, :]
        mask_an = mask_a[:, None] & mask_n[None, :]
        ptrs = base + offs_n[:, None] * D + offs_d[None, :]
        k = tl.load(K + ptrs, mask=mask_nd, other=0.0).to(tl.float32)
        v = tl.load(V + ptrs, mask=mask_nd, other=0.0).to(tl.float32)
        s = _mm(a * scale, tl.trans(k), K, LOWP)
        boffs = b * b1_sb + h * b1_sh + offs_a[:, None] * M + offs_n[None, :]
        if HAS_B1:
            s += tl.load(B1 + boffs, mask=mask_an, other=0.0).to(tl.float32)
        p = tl.where(mask_an, tl.exp(s - lse[:, None]), 0.0)
        dv = _mm(tl.trans(p), dva, K, LOWP)
        tl.store(DV + ptrs, dv.to(DV.dtype.element_ty), mask=mask_nd)
        dp = _mm(dva, tl.trans(v), K, LOWP)
        ds = p * (dp - d1[:, None])
        dk = _mm(tl.trans(ds), a, K, LOWP) * scale
        tl.store(DK + ptrs, dk.to(DK.dtype.element_ty), mask=mask_nd)
        da += _mm(ds, k, K, LOWP) * scale
        if HAS_B1:
            if B1_ATOMIC:
                tl.atomic_add(DB1 + boffs, ds, mask=mask_an)
            else:
                tl.store(DB1 + boffs, ds.to(DB1.dtype.element_ty), mask=mask_an)
    row = (bh * SPLITS + sp) * BLOCK_A + offs_a
    tl.store(DA_PART + row[:, None] * BLOCK_D + offs_d[None, :], da)
