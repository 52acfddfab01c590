"""The CUDA kernels of csrc/cuda/agent_attention.cu, run on the CPU through a thread-level emulation of
CUDA (tests/agentattn/ops/cuda_emu/stub/emu.h: one std::thread per CUDA thread, std::barrier for
__syncthreads, a per-warp barrier for __shfl_xor_sync), fp32 instantiation, against the fp64 reference.

This checks the kernels' indexing, masking, split-N reductions and backward maths without a GPU; it does
not check real-GPU behaviour (timing-dependent races, launch limits, fp16/bf16 conversions): the GPU suite
test_agent_attention_cuda.py does that. Shared memory and every output start as NaN (poisoned).
Also: keys/values with their own token count (M != N), and each input poisoned with NaN/inf in turn (the
reference composition's non-finite pattern in the output and all gradients).
"""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from agentattn.ops.agent_attention.naive import agent_attention_ref, agent_attention_ref_stats

ROOT = Path(__file__).resolve().parents[3]
EMU = Path(__file__).resolve().parent / "cuda_emu"

CASES = [
    # B, H, N, n, d, bias_agent lead dims, bias_query lead dims, SMs (sets the number of splits)[, M]
    (2, 2, 77, 9, 48, (1, 2), (2, 2), 4),
    (1, 3, 100, 16, 32, None, None, 4),
    (2, 1, 33, 5, 64, (2, 1), (1, 1), 1),
    (1, 1, 70, 40, 80, (1, 1), None, 8),
    (1, 2, 20, 3, 128, None, (1, 1), 4),  # N below one tile, d = 128
    (2, 2, 130, 9, 32, (1, 2), (2, 2), 4, 17),  # fewer keys than queries (PVT spatial reduction)
    (1, 2, 12, 5, 32, (1, 2), (1, 1), 4, 150),  # more keys than queries (cross-attention), key splits
]
GRAD_NAMES = ("q", "k", "v", "agents", "bias_agent", "bias_query")


def _case_id(c):
    m = f"-M{c[8]}" if len(c) > 8 else ""
    return f"B{c[0]}-H{c[1]}-N{c[2]}{m}-n{c[3]}-d{c[4]}-sms{c[7]}"


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    src = (ROOT / "csrc/cuda/agent_attention.cu").read_text()
    src = src.replace("extern __shared__ float smem[];", "float* smem = emu_smem();")
    src = re.sub(r"(\w+(?:<\w+>)?)<<<(.*?)>>>\((.*?)\);", r"emu_launch(\1, \2, \3);", src)
    assert "<<<" not in src and "__shared__" not in src, "emulation rewrite missed a launch or shared array"
    d = tmp_path_factory.mktemp("cuda_emu")
    (d / "agent_attention_emu.cpp").write_text(src)
    so = d / "agent_attention_emu.so"
    cmd = [
        "g++",
        "-std=c++20",
        "-O1",
        "-fPIC",
        "-shared",
        "-pthread",
        f"-I{EMU / 'stub'}",
        f"-I{ROOT / 'csrc'}",
        "-include",
        str(EMU / "stub" / "emu.h"),
        str(d / "agent_attention_emu.cpp"),
        str(EMU / "emu_api.cpp"),
        "-o",
        str(so),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return ctypes.CDLL(str(so))


def _ptr(t):
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


def _strides(b):
    if b is None:
        return ctypes.c_long(0), ctypes.c_long(0)
    Bb, Hb, r, c = b.shape
    return ctypes.c_long(Hb * r * c if Bb != 1 else 0), ctypes.c_long(r * c if Hb != 1 else 0)


def _inputs(case, seed=0):
    B, H, N, n, d, b1s, b2s, sms = case[:8]
    M = case[8] if len(case) > 8 else N
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, M, d), mk(B, H, M, d), mk(B, H, n, d)
    b1 = None if b1s is None else 0.5 * mk(*b1s, n, M)
    b2 = None if b2s is None else 0.5 * mk(*b2s, N, n)
    return [q, k, v, a, b1, b2], mk(B, H, N, d)


def _emu_run(lib, case, ins, grad, s):
    """The emulated kernels in fp32 on ``ins`` (q, k, v, agents, bias_agent, bias_query; fp64 or fp32):
    (out, agent_v, lse_agent, lse_query), the six gradients (None for an absent bias) and the split counts."""
    B, H, N, n, d, _, _, sms = case[:8]
    M = ins[1].shape[2]
    f32 = [None if t is None else t.float().contiguous() for t in ins]
    nan = lambda *shape: torch.full(shape, float("nan"))  # noqa: E731
    out, va, l1, l2 = nan(B, H, N, d), nan(B, H, n, d), nan(B, H, n), nan(B, H, N)
    splits = (ctypes.c_int * 2)()
    common = [
        B,
        H,
        N,
        M,
        n,
        d,
        ctypes.c_float(s),
        sms,
        *map(_ptr, f32[:5]),
        *_strides(f32[4]),
        _ptr(f32[5]),
        *_strides(f32[5]),
    ]
    assert lib.emu_forward(*common, _ptr(out), _ptr(va), _ptr(l1), _ptr(l2), splits) == 0
    dq, dk, dv, da = nan(B, H, N, d), nan(B, H, M, d), nan(B, H, M, d), nan(B, H, n, d)

    def bias_grad(b):
        if b is None:
            return None, 0
        atomic = b.shape[0] != B or b.shape[1] != H
        return (torch.zeros(b.shape) if atomic else nan(*b.shape)), int(atomic)

    (db1, at1), (db2, at2) = bias_grad(f32[4]), bias_grad(f32[5])
    grad32 = grad.float().contiguous()  # kept alive: ctypes gets only its data pointer
    rc = lib.emu_backward(
        *common,
        _ptr(out),
        _ptr(va),
        _ptr(l1),
        _ptr(l2),
        _ptr(grad32),
        _ptr(dq),
        _ptr(dk),
        _ptr(dv),
        _ptr(da),
        _ptr(db1),
        at1,
        _ptr(db2),
        at2,
    )
    assert rc == 0
    return (out, va, l1, l2), (dq, dk, dv, da, db1, db2), (splits[0], splits[1])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_emulated_cuda_kernels_match_reference(lib, case):
    N, sms = case[2], case[7]
    ins, grad = _inputs(case)
    s = 0.3
    stats, grads, splits = _emu_run(lib, case, ins, grad, s)
    M = ins[1].shape[2]
    assert splits[0] > 1 and splits[1] > 1 or sms == 1 or min(N, M) <= 32  # the split paths are exercised
    for name, x, y in zip(
        ("out", "agent_v", "lse_agent", "lse_query"), stats, agent_attention_ref_stats(*ins, s), strict=True
    ):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5, msg=name)
    xs = [None if t is None else t.clone().requires_grad_() for t in ins]
    agent_attention_ref(*xs, s).backward(grad)
    for name, x, y in zip(GRAD_NAMES, grads, xs, strict=True):
        if y is not None:
            torch.testing.assert_close(x.double(), y.grad, rtol=1e-4, atol=2e-5, msg=f"d{name}")


POISONS = [
    "q_nan",
    "k_nan",
    "v_nan",
    "agents_nan",
    "bias_agent_nan",
    "bias_query_nan",
    "k_inf",
    "agents_inf",
    "bias_agent_row_neginf",
    "bias_query_row_neginf",
    "bias_agent_tile_neginf",
    "grad_out_nan",
]


POISON_CASES = [  # small (the emulation runs a thread per CUDA thread), several key tiles and splits each
    (1, 1, 70, 5, 16, (1, 1), (1, 1), 2),
    (1, 1, 12, 5, 16, (1, 1), (1, 1), 2, 90),  # M != N
]


@pytest.mark.parametrize("poison", POISONS)
@pytest.mark.parametrize("case", POISON_CASES, ids=_case_id)
def test_emulated_cuda_kernels_poisoned_input_gives_the_reference_pattern(lib, case, poison):
    """Each input poisoned in turn: the output and the six gradients have the reference's NaN/inf pattern
    (fp32 reference) and its values elsewhere. ``bias_agent_tile_neginf`` masks the first 40 keys of one
    agent row (more than a key tile: a tile of all -inf scores must add 0, not NaN)."""
    ins, grad = _inputs(case, seed=3)
    t = dict(zip(GRAD_NAMES, ins, strict=True), grad_out=grad)
    name, kind = poison.rsplit("_", 1)
    if kind == "neginf":
        name, what = name.rsplit("_", 1)
        x = t[name]
        x[0, -1, x.shape[2] // 2, : (40 if what == "tile" else x.shape[3])] = float("-inf")
    else:
        x = t[name]
        x[-1, -1, x.shape[2] // 2, 1] = float(kind)
    ins, grad = [t[nm] for nm in GRAD_NAMES], t["grad_out"]
    s = 0.3
    (out, *_), grads, _ = _emu_run(lib, case, ins, grad, s)

    def ref(dtype):
        xs = [x.to(dtype).clone().requires_grad_() for x in ins]
        o = agent_attention_ref(*xs, s)
        o.backward(grad.to(dtype))
        return [o.detach()] + [x.grad for x in xs]

    r32, r64 = ref(torch.float32), ref(torch.float64)
    for nm, x, r, r6 in zip(("out",) + tuple("d" + g for g in GRAD_NAMES), [out, *grads], r32, r64, strict=True):
        assert torch.equal(torch.isnan(x), torch.isnan(r)), (
            f"{nm}: NaN at {int(torch.isnan(x).sum())}, reference at {int(torch.isnan(r).sum())}"
        )
        assert torch.equal(torch.isinf(x), torch.isinf(r)), f"{nm}: inf pattern differs"
        fin = torch.isfinite(x)
        if fin.any():
            torch.testing.assert_close(
                x[fin].double(), r6[fin], rtol=1e-4, atol=2e-5 * (1 + r6[fin].abs().max().item()), msg=nm
            )
