"""The CUDA kernels of csrc/cuda/flow_patch_embed.cu, run on the CPU through the thread-level CUDA
emulation the agent-attention tests use (tests/agentattn/ops/cuda_emu/stub/emu.h: one std::thread per
CUDA thread, std::barrier for __syncthreads), fp32 instantiation, against the fp64 reference.

This checks the kernels' indexing (patch gather, both output layouts, the dx scatter), masking of partial
tiles, the split-token dweight reduction and the dpos/dbias reductions without a GPU; it does not check
real-GPU behaviour (races that depend on timing, launch limits, fp16/bf16 conversions): the GPU suite
test_flow_patch_embed_cuda.py does that. Shared memory and every output start as NaN (poisoned).
"""

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from agentattn.ops.flow_patch_embed.naive import flow_patch_embed_ref

ROOT = Path(__file__).resolve().parents[3]
STUB = Path(__file__).resolve().parent / "cuda_emu" / "stub"

API = r"""
// C entry points over the emulated launchers, called from the test through ctypes (fp32 only).
#include "cuda/flow_patch_embed.h"
using agentattn::cuda_fpe::FlowPatchParams;

static FlowPatchParams make(int B, int C, int H, int W, int p, int D, int flatten, const float* x, const float* w,
                            const float* bias, const float* pos) {
  FlowPatchParams q;
  q.B = B; q.C = C; q.H = H; q.W = W; q.p = p; q.D = D; q.gw = W / p; q.L = (H / p) * (W / p); q.K = C * p * p;
  q.flatten = flatten != 0; q.x = x; q.weight = w; q.bias = bias; q.pos = pos;
  return q;
}

extern "C" int emu_forward(int B, int C, int H, int W, int p, int D, int flatten, const float* x, const float* w,
                           const float* bias, const float* pos, float* out) {
  FlowPatchParams q = make(B, C, H, W, p, D, flatten, x, w, bias, pos);
  q.out = out;
  return agentattn::cuda_fpe::launch_forward(q, nullptr);
}

extern "C" int emu_backward(int B, int C, int H, int W, int p, int D, int flatten, const float* x, const float* w,
                            const float* bias, const float* pos, const float* dout, float* dx, float* dw, float* db,
                            float* dpos, int num_sms, float* work, int* splits) {
  FlowPatchParams q = make(B, C, H, W, p, D, flatten, x, w, bias, pos);
  q.grad_out = dout; q.dx = dx; q.dweight = dw; q.dbias = db; q.dpos = dpos;
  agentattn::cuda_fpe::plan_splits(q, num_sms);
  q.work = work;
  *splits = q.splits;
  return agentattn::cuda_fpe::launch_backward(q, nullptr);
}

extern "C" long emu_workspace(int B, int C, int H, int W, int p, int D, int num_sms) {
  FlowPatchParams q = make(B, C, H, W, p, D, 0, nullptr, nullptr, nullptr, nullptr);
  agentattn::cuda_fpe::plan_splits(q, num_sms);
  return agentattn::cuda_fpe::workspace_floats(q);
}
"""

CASES = [
    # B, C, H, W, p, D, bias, pos, SMs (sets the number of dweight splits)
    (2, 3, 28, 28, 7, 24, True, True, 4),  # K = 147: three reduction chunks + a partial one
    (1, 2, 40, 36, 4, 70, False, True, 2),  # 90 tokens (2 row tiles), D = 70 (2 col tiles), K = 32
    (3, 3, 8, 12, 2, 5, True, False, 8),  # rectangular, K = 12, tokens 72
    (1, 1, 6, 6, 1, 3, False, False, 1),  # p = 1
]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    src = (ROOT / "csrc/cuda/flow_patch_embed.cu").read_text()
    src = src.replace("extern __shared__ float smem[];", "float* smem = emu_smem();")
    src = re.sub(r"(\w+(?:<[\w, ]+>)?)<<<(.*?)>>>\((.*?)\);", r"emu_launch(\1, \2, \3);", src)
    assert "<<<" not in src and "__shared__" not in src, "emulation rewrite missed a launch or shared array"
    d = tmp_path_factory.mktemp("cuda_emu_fpe")
    (d / "fpe_emu.cpp").write_text(src)
    (d / "fpe_api.cpp").write_text(API)
    so = d / "fpe_emu.so"
    cmd = [
        "g++",
        "-std=c++20",
        "-O1",
        "-fPIC",
        "-shared",
        "-pthread",
        f"-I{STUB}",
        f"-I{ROOT / 'csrc'}",
        "-include",
        str(STUB / "emu.h"),
        str(d / "fpe_emu.cpp"),
        str(d / "fpe_api.cpp"),
        "-o",
        str(so),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return ctypes.CDLL(str(so))


def _ptr(t):
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


@pytest.mark.parametrize("flatten", [0, 1], ids=["map", "flat"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-C{c[1]}-{c[2]}x{c[3]}-p{c[4]}-D{c[5]}-sms{c[8]}")
def test_emulated_cuda_kernels_match_reference(lib, case, flatten):
    B, C, H, W, p, D, has_b, has_q, sms = case
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, w = mk(B, C, H, W), mk(D, C, p, p) * 0.2
    b = mk(D) if has_b else None
    q = mk(D, H // p, W // p) if has_q else None
    f32 = [None if t is None else t.float().contiguous() for t in (x, w, b, q)]
    L = (H // p) * (W // p)
    oshape = (B, L, D) if flatten else (B, D, H // p, W // p)
    nan = lambda *s: torch.full(s, float("nan"))  # noqa: E731
    out = nan(*oshape)
    geo = [B, C, H, W, p, D, flatten]
    assert lib.emu_forward(*geo, *map(_ptr, f32), _ptr(out)) == 0
    xs = [None if t is None else t.clone().requires_grad_() for t in (x, w, b, q)]
    ref = flow_patch_embed_ref(*xs, p)
    ref = ref.flatten(2).transpose(1, 2) if flatten else ref
    torch.testing.assert_close(out.double(), ref.detach(), rtol=1e-5, atol=1e-5, msg="out")

    grad = mk(*oshape)
    ref.backward(grad)
    dx, dw = nan(B, C, H, W), nan(D, C, p, p)
    db = nan(D) if has_b else None
    dq = nan(D, H // p, W // p) if has_q else None
    work = nan(lib.emu_workspace(B, C, H, W, p, D, sms))
    splits = ctypes.c_int(0)
    grad32 = grad.float()  # kept alive: ctypes gets only its data pointer
    rc = lib.emu_backward(
        *geo,
        *map(_ptr, f32),
        _ptr(grad32),
        _ptr(dx),
        _ptr(dw),
        _ptr(db),
        _ptr(dq),
        sms,
        _ptr(work),
        ctypes.byref(splits),
    )
    assert rc == 0
    assert splits.value > 1 or sms == 1 or B * L <= 64  # the split-token dweight path is exercised
    for name, got, t in zip(("x", "weight", "bias", "pos"), (dx, dw, db, dq), xs, strict=True):
        if t is not None:
            torch.testing.assert_close(got.double(), t.grad, rtol=1e-4, atol=2e-5, msg=f"d{name}")
