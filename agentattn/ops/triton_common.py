"""Triton device functions shared by the ops' kernels (imported only where triton is installed)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mm(a, b, REF, LOWP: tl.constexpr):
    """a @ b with fp32 accumulation; operands in REF's element type when LOWP (fp16/bf16 inputs)."""
    if LOWP:
        return tl.dot(a.to(REF.dtype.element_ty), b.to(REF.dtype.element_ty))
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
