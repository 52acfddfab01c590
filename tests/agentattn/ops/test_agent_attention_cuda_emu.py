"""The CUDA kernels of csrc/cuda/agent_attention.cu, run on the CPU through a thread-level emulation of
CUDA (tests/agentattn/ops/cuda_emu/stub/emu.h: one std::thread per CUDA thread, std::barrier for
__syncthreads, a per-warp barrier for __shfl_xor_sync), fp32 instantiation, against the fp64 reference.

This checks the kernels' indexing, masking, split-N reductions and backward maths without a GPU; it does
not check real-GPU behaviour (timing-dependent races, launch limits, fp16/bf16 conversions): the GPU suite
test_agent_attention_cuda.py does that. Shared memory and every output start as NaN (poisoned).
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
    # B, H, N, n, d, bias_agent lead dims, bias_query lead dims, SMs (sets the number of N splits)
    (2, 2, 77, 9, 48, (1, 2), (2, 2), 4),
    (1, 3, 100, 16, 32, None, None, 4),
    (2, 1, 33, 5, 64, (2, 1), (1, 1), 1),
    (1, 1, 70, 40, 80, (1, 1), None, 8),
    (1, 2, 20, 3, 128, None, (1, 1), 4),  # N below one tile, d = 128
]


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
    cmd = ["g++", "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", f"-I{EMU / 'stub'}", f"-I{ROOT / 'csrc'}",
           "-include", str(EMU / "stub" / "emu.h"), str(d / "agent_attention_emu.cpp"), str(EMU / "emu_api.cpp"),
           "-o", str(so)]
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


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-H{c[1]}-N{c[2]}-n{c[3]}-d{c[4]}-sms{c[7]}")
def test_emulated_cuda_kernels_match_reference(lib, case):
    B, H, N, n, d, b1s, b2s, sms = case
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, N, d), mk(B, H, N, d), mk(B, H, n, d)
    b1 = None if b1s is None else 0.5 * mk(*b1s, n, N)
    b2 = None if b2s is None else 0.5 * mk(*b2s, N, n)
    s = 0.3
    f32 = [None if t is None else t.float().contiguous() for t in (q, k, v, a, b1, b2)]
    nan = lambda *shape: torch.full(shape, float("nan"))  # noqa: E731
    out, va, l1, l2 = nan(B, H, N, d), nan(B, H, n, d), nan(B, H, n), nan(B, H, N)
    splits = (ctypes.c_int * 2)()
    common = [B, H, N, n, d, ctypes.c_float(s), sms, *map(_ptr, f32[:5]), *_strides(f32[4]), _ptr(f32[5]),
              *_strides(f32[5])]
    assert lib.emu_forward(*common, _ptr(out), _ptr(va), _ptr(l1), _ptr(l2), splits) == 0
    assert splits[0] > 1 and splits[1] > 1 or sms == 1 or N <= 32  # the split-N path is exercised
    for name, x, y in zip(("out", "agent_v", "lse_agent", "lse_query"), (out, va, l1, l2),
                          agent_attention_ref_stats(q, k, v, a, b1, b2, s), strict=True):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5, msg=name)

    xs = [None if t is None else t.clone().requires_grad_() for t in (q, k, v, a, b1, b2)]
    grad = mk(B, H, N, d)
    agent_attention_ref(*xs, s).backward(grad)
    dq, dk, dv, da = nan(B, H, N, d), nan(B, H, N, d), nan(B, H, N, d), nan(B, H, n, d)

    def bias_grad(b):
        if b is None:
            return None, 0
        atomic = b.shape[0] != B or b.shape[1] != H
        return (torch.zeros(b.shape) if atomic else nan(*b.shape)), int(atomic)

    (db1, at1), (db2, at2) = bias_grad(f32[4]), bias_grad(f32[5])
    grad32 = grad.float()  # kept alive: ctypes gets only its data pointer
    rc = lib.emu_backward(*common, _ptr(out), _ptr(va), _ptr(l1), _ptr(l2), _ptr(grad32), _ptr(dq), _ptr(dk),
                          _ptr(dv), _ptr(da), _ptr(db1), at1, _ptr(db2), at2)
    assert rc == 0
    for name, x, y in zip(("q", "k", "v", "agents", "bias_agent", "bias_query"), (dq, dk, dv, da, db1, db2), xs,
                          strict=True):
        if y is not None:
            torch.testing.assert_close(x.double(), y.grad, rtol=1e-4, atol=2e-5, msg=f"d{name}")
