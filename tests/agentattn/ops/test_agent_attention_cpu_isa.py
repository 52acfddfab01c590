"""The C++ CPU kernel's instruction-set paths against the fp64 reference, and how the ISA is chosen.

The float32 tile kernels are compiled once per ISA level (generic: 4 lanes, no intrinsics; avx2: 8 lanes;
avx512: 16 lanes) and chosen at run time from the CPU's features, or by ``AGENTATTN_CPU_ISA`` (read once
per process) / ``torch.ops.agentattn._cpu_set_options`` (tests and benchmarks). Every path this CPU
supports runs here on the same cases (M = N and M != N): output and all six gradients, both layouts
(forward and backward), 1 and 3 threads, against the fp64 reference, with an error bound tied to the plain
fp32 composition's own error (``fp32_bound``), and every poisoned input of test_agent_attention_nan.py. A
path the CPU cannot run is compiled but not run: its tests are SKIPPED with a reason that names the ISA and
the CPU (``pytest -rs`` lists them), never passed silently.

Run: ``OMP_NUM_THREADS=1 python -m pytest -q -rs tests/agentattn/ops/test_agent_attention_cpu_isa.py``.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys

import pytest
import torch
from test_agent_attention_cpu import fp32_bound, poisoned  # noqa: F401 (a fixture)
from test_agent_attention_nan import POISONS, check_poisoned

import agentattn
from agentattn import _ext
from agentattn.ops.agent_attention.naive import agent_attention_ref

pytestmark = pytest.mark.skipif(not _ext.has_ext(), reason=f"agentattn._C not loaded ({_ext._load_error})")

ALL_ISAS = ("generic", "avx2", "avx512")
X86 = platform.machine().lower() in ("x86_64", "amd64")
EPS32 = torch.finfo(torch.float32).eps
NAMES = ("out", "q", "k", "v", "agents", "bias_agent", "bias_query")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _options() -> dict:
    ops = torch.ops.agentattn._cpu_set_options("", "", "")
    return dict(s.split("=", 1) for s in ops)


@pytest.fixture(params=ALL_ISAS)
def isa(request):
    """Switches the CPU kernel to one ISA for the test (restored after); skips, saying so, where the CPU
    cannot run it."""
    name = request.param
    compiled = list(torch.ops.agentattn.cpu_isas(False))
    usable = list(torch.ops.agentattn.cpu_isas(True))
    if X86:
        assert compiled == list(reversed(ALL_ISAS)), f"an x86-64 build must compile every ISA, got {compiled}"
    if name not in compiled:
        pytest.skip(f"{name}: not compiled into this build ({platform.machine()}); not run")
    if name not in usable:
        pytest.skip(f"{name}: compiled, NOT RUN: this CPU ({cpu_model()}) does not support it")
    before = _options()
    torch.ops.agentattn._cpu_set_options(name, "", "")
    try:
        yield name
    finally:
        torch.ops.agentattn._cpu_set_options(before["isa"], before["layout"], before["blas_path"])


@pytest.fixture(params=["token", "agent"])
def layout(request):
    before = _options()
    torch.ops.agentattn._cpu_set_options("", request.param, "")
    try:
        yield request.param
    finally:
        torch.ops.agentattn._cpu_set_options("", before["layout"], "")


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        torch.set_num_threads(old)


# B, H, N, M, n, d, bias_agent shape, bias_query shape (None = no bias); M != N: keys of their own count
CASES = [
    (6, 2, 49, 49, 9, 16, (1, 2, 9, 49), (1, 2, 49, 9)),  # mer's HTNet blocks: 7x7 tokens, d = 16
    (2, 2, 197, 197, 16, 40, (1, 1, 16, 197), (2, 2, 197, 16)),  # d = 40: a half vector at 16 lanes
    (3, 2, 130, 130, 25, 32, (3, 2, 25, 130), None),  # full bias_agent; no tile is full
    (1, 1, 1100, 1100, 49, 32, (1, 1, 49, 1100), (1, 1, 1100, 49)),  # one slice: key chunks on threads, merged
    (2, 1, 77, 77, 3, 24, None, (2, 1, 77, 3)),  # n < 8, d = 24
    (2, 2, 196, 4, 49, 32, (1, 2, 49, 4), (1, 2, 196, 49)),  # PVT at sr_ratio 8: 14x14 queries, 2x2 keys
    (1, 2, 40, 1500, 16, 32, (1, 2, 16, 1500), None),  # more keys than queries, chunked and merged
    (2, 1, 300, 77, 9, 40, None, (2, 1, 300, 9)),  # cross-attention to 77 text tokens
]


def _case_id(c):
    fmt = lambda s: "x".join(map(str, s)) if s else "none"  # noqa: E731
    return f"B{c[0]}-H{c[1]}-N{c[2]}-M{c[3]}-n{c[4]}-d{c[5]}-b1_{fmt(c[6])}-b2_{fmt(c[7])}"


def _inputs(case, seed):
    B, H, N, M, n, d, b1s, b2s = case
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    xs = [mk(B, H, N, d), mk(B, H, M, d), mk(B, H, M, d), mk(B, H, n, d)]
    xs += [None if s is None else 0.7 * mk(*s) for s in (b1s, b2s)]
    return xs, mk(B, H, N, d)


def _grads(fn, xs, go, dtype, **kw):
    leaves = [None if t is None else t.to(dtype).clone().requires_grad_() for t in xs]
    out = fn(*leaves, **kw)
    out.backward(go.to(dtype))
    return [out.detach()] + [None if t is None else t.grad for t in leaves]


@functools.cache
def _references(case):
    """(fp64 reference, plain fp32 composition) outputs and gradients for one case."""
    xs, go = _inputs(case, seed=5)
    scale = 0.6 * case[5] ** -0.5
    return (
        _grads(agent_attention_ref, xs, go, torch.float64, scale=scale),
        _grads(agent_attention_ref, xs, go, torch.float32, scale=scale),
    )


@pytest.mark.usefixtures("poisoned")
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_isa_path_matches_fp64_reference(case, isa, layout, threads):
    assert torch.ops.agentattn.cpu_isa() == isa
    xs, go = _inputs(case, seed=5)
    ref, plain = _references(case)
    got = _grads(agentattn.agent_attention, xs, go, torch.float32, scale=0.6 * case[5] ** -0.5, backend="cpp")
    for name, x, r, p in zip(NAMES, got, ref, plain, strict=True):
        if r is None:
            assert x is None, name
            continue
        assert x.dtype == torch.float32 and x.shape == r.shape, name
        top = r.abs().max().item()
        err = (x.double() - r).abs().max().item() / top
        base = (p.double() - r).abs().max().item() / top
        assert err <= fp32_bound(base), (
            f"{name} ({isa}, {layout}, {threads} threads): error {err / EPS32:.1f} eps, "
            f"plain fp32 {base / EPS32:.1f} eps"
        )


@pytest.mark.parametrize("poison", POISONS)
def test_isa_path_propagates_nan_and_inf(poison, isa, layout):
    """Each input poisoned in turn (test_agent_attention_nan.py) on every ISA and both layouts, self- and
    cross-attention: the reference's NaN/inf pattern in the output and all six gradients."""
    for shape in ((2, 2, 50, 50, 16, 32), (2, 2, 64, 16, 9, 32)):
        check_poisoned(shape, poison, torch.float32)


def test_default_isa_is_the_best_the_cpu_supports():
    usable = list(torch.ops.agentattn.cpu_isas(True))
    assert usable and usable[-1] == "generic"
    if "AGENTATTN_CPU_ISA" not in os.environ:
        assert torch.ops.agentattn.cpu_isa() == usable[0]
    assert agentattn.backends()["cpu_isa"] == torch.ops.agentattn.cpu_isa()
    assert agentattn.backends()["cpu_isas"] == usable
    print(
        f"\nCPU kernel ISAs on {cpu_model()}: in use {torch.ops.agentattn.cpu_isa()}, runnable {usable}, "
        f"compiled {list(torch.ops.agentattn.cpu_isas(False))}"
    )


_ENV_CHECK = """
import os, torch, agentattn
print(torch.ops.agentattn.cpu_isa(), agentattn.backends()["cpu_isa"])
# Read once: values set after the first use change nothing (read again, "bogus" would raise).
for name in ("AGENTATTN_CPU_ISA", "AGENTATTN_CPU_FWD_LAYOUT", "AGENTATTN_CPU_BWD_LAYOUT"):
    os.environ[name] = "bogus"
os.environ["AGENTATTN_CPU_BLAS_PATH"] = "1"
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 1, 20, 8, generator=g, requires_grad=True) for _ in range(3))
a = torch.randn(1, 1, 4, 8, generator=g, requires_grad=True)
out = agentattn.agent_attention(q, k, v, a, None, None, backend="cpp")
out.sum().backward()
ref = agentattn.agent_attention(q, k, v, a, None, None, backend="reference")
assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
print(torch.ops.agentattn.cpu_isa(), *torch.ops.agentattn._cpu_set_options("", "", ""))
"""


@pytest.mark.parametrize("value", ["generic", "bogus"])
def test_env_override_read_once(value):
    """AGENTATTN_CPU_ISA chooses the ISA at first use; the kernel's switches are not read again after it
    (changing them later in the process, even to invalid values, changes nothing)."""
    env = dict(os.environ, AGENTATTN_CPU_ISA=value, OMP_NUM_THREADS="1")
    for name in ("AGENTATTN_CPU_FWD_LAYOUT", "AGENTATTN_CPU_BWD_LAYOUT", "AGENTATTN_CPU_BLAS_PATH"):
        env.pop(name, None)
    res = subprocess.run([sys.executable, "-c", _ENV_CHECK], env=env, capture_output=True, text=True, timeout=300)
    if value == "generic":
        assert res.returncode == 0, res.stdout + res.stderr
        lines = res.stdout.splitlines()
        assert lines[0].split() == ["generic", "generic"], res.stdout
        assert lines[1].split() == ["generic", "isa=generic", "layout=auto,auto", "blas_path=0"], res.stdout
    else:
        assert res.returncode != 0
        assert "AGENTATTN_CPU_ISA must be one of avx512, avx2, generic, auto; got 'bogus'" in res.stderr, res.stderr


def test_unsupported_isa_is_a_clear_error():
    usable = list(torch.ops.agentattn.cpu_isas(True))
    missing = [i for i in ALL_ISAS if i not in usable]
    if not missing:
        pytest.skip(f"this CPU ({cpu_model()}) runs every ISA: no unsupported one to ask for")
    with pytest.raises(RuntimeError, match=f"isa={missing[-1]}: (this CPU does not support it|not compiled)"):
        torch.ops.agentattn._cpu_set_options(missing[-1], "", "")


def test_set_options_rejects_bad_values_and_reports():
    before = _options()
    with pytest.raises(RuntimeError, match="layout must be token, agent or auto"):
        torch.ops.agentattn._cpu_set_options("", "diagonal", "")
    with pytest.raises(RuntimeError, match="isa must be one of avx512, avx2, generic, auto"):
        torch.ops.agentattn._cpu_set_options("sse9", "", "")
    assert _options() == before
