"""Portability of the compiled extension, proven without an old CPU: a disassembly of agentattn._C.

Only the per-ISA kernel translation units (csrc/cpu/aa_kernels_avx2.cpp, aa_kernels_avx512.cpp) may
contain AVX instructions, and each only its own: every function whose code uses a VEX- or EVEX-encoded
vector instruction must belong to the ``agentattn::cpu::avx2::`` or ``agentattn::cpu::avx512::``
namespace (the kernels' inline namespaces), and the AVX2 kernels must use no AVX-512 (zmm registers,
mask registers, xmm16-31/ymm16-31). Everything else (the dispatcher, the generic kernels, the BLAS path,
the flow-patch embedding, any library code the linker kept) must run on a baseline x86-64 CPU. This also
catches the linker choosing an AVX-compiled copy of an inline function shared with baseline code.

Run: ``python -m pytest -q tests/agentattn/ops/test_cpu_isa_objects.py`` (needs objdump, binutils).
"""

from __future__ import annotations

import collections
import platform
import re
import shutil
import subprocess

import pytest

from agentattn import _ext

pytestmark = [
    pytest.mark.skipif(not _ext.has_ext(), reason=f"agentattn._C not loaded ({_ext._load_error})"),
    pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 builds only"),
]

FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
EVEX_ONLY = re.compile(r"%zmm|%[xy]mm(1[6-9]|2\d|3[01])\b|%k[0-7]\b")


def classify(disassembly: str) -> dict:
    """{function: set of 'avx' / 'avx512'} for every function that uses VEX/EVEX vector instructions."""
    out = collections.defaultdict(set)
    fn = None
    for line in disassembly.splitlines():
        m = FUNC.match(line)
        if m:
            fn = m.group(1)
            continue
        parts = line.split("\t")
        if fn is None or len(parts) < 2:
            continue
        ins = parts[-1].strip()
        mnemonic = ins.split(" ", 1)[0]
        vex = "%ymm" in ins or (mnemonic.startswith("v") and "%xmm" in ins)
        if EVEX_ONLY.search(ins):
            out[fn].add("avx512")
        elif vex:
            out[fn].add("avx")
    return out


def violations(kinds: dict) -> list[str]:
    bad = []
    for fn, k in sorted(kinds.items()):
        if "::avx512::" in fn:
            continue
        if "::avx2::" in fn:
            if "avx512" in k:
                bad.append(f"AVX-512 in an AVX2 kernel: {fn}")
            continue
        bad.append(f"{'/'.join(sorted(k))} outside the per-ISA kernels: {fn}")
    return bad


def test_classifier_on_canned_disassembly():
    """The parser sees each kind of instruction (so that the real check below can fail)."""
    canned = "\n".join(
        [
            "0000000000001000 <agentattn::cpu::base::merge(float*)>:",
            "    1000:\tmovss  (%rdi),%xmm0",
            "    1004:\taddps  %xmm1,%xmm0",
            "0000000000001100 <agentattn::cpu::avx2::(anonymous namespace)::tile()>:",
            "    1100:\tvfmadd231ps %ymm1,%ymm2,%ymm3",
            "0000000000001200 <agentattn::cpu::avx2::(anonymous namespace)::bad()>:",
            "    1200:\tvaddps %ymm17,%ymm2,%ymm3",
            "0000000000001300 <std::vector<float>::resize(unsigned long)>:",
            "    1300:\tvmovss (%rdi),%xmm0",
            "0000000000001400 <agentattn::cpu::avx512::(anonymous namespace)::tile()>:",
            "    1400:\tvfmadd231ps (%rax){1to16},%zmm1,%zmm2",
            "    1404:\tkmovw  %k1,%eax",
        ]
    )
    kinds = classify(canned)
    assert kinds == {
        "agentattn::cpu::avx2::(anonymous namespace)::tile()": {"avx"},
        "agentattn::cpu::avx2::(anonymous namespace)::bad()": {"avx512"},
        "std::vector<float>::resize(unsigned long)": {"avx"},
        "agentattn::cpu::avx512::(anonymous namespace)::tile()": {"avx512"},
    }
    assert violations(kinds) == [
        "AVX-512 in an AVX2 kernel: agentattn::cpu::avx2::(anonymous namespace)::bad()",
        "avx outside the per-ISA kernels: std::vector<float>::resize(unsigned long)",
    ]


def test_only_the_isa_kernels_use_avx():
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is needed to check the extension's instruction sets: apt-get install binutils")
    so = _ext._load().__file__
    dis = subprocess.run(
        [objdump, "-d", "--no-show-raw-insn", "-C", so], capture_output=True, text=True, check=True
    ).stdout
    kinds = classify(dis)
    assert violations(kinds) == []
    # and the kernels are there: both ISA levels compiled in, with their widest registers
    assert any("::avx2::" in f for f in kinds), "no AVX2 kernel code in the extension"
    assert any("::avx512::" in f and "avx512" in k for f, k in kinds.items()), "no AVX-512 kernel code"
