"""benchmarks/count_instructions.py: the callgrind_annotate summary it reports (the valgrind run itself takes
minutes and is a development tool, not run here)."""

from __future__ import annotations

import pytest
from bench_modules import BENCH, load

ci = load("count_instructions_under_test", BENCH / "count_instructions.py")

ANN = """\
--------------------------------------------------------------------------------
Ir                       file:function
--------------------------------------------------------------------------------
5,938,087,153 (100.0%)  PROGRAM TOTALS
  9,600,000 ( 0.16%)  /usr/lib/gcc/x86_64-linux-gnu/12/include/fmaintrin.h:void agentattn::ukernel::tile<3, 4>(long, float const*, long) [/x/_C.so]
  4,000,000 ( 0.07%)  /work/main/csrc/cpu/ukernel.h:void agentattn::ukernel::tile<3, 4>(long, float const*, long) [/x/_C.so]
  1,600,000 ( 0.03%)  /work/main/csrc/cpu/agent_attention.cpp:agentattn::(anonymous namespace)::fast::stage1_am(agentattn::(anonymous namespace)::fast::AmGroup const&) [/x/_C.so]
    800,000 ( 0.01%)  => /work/main/csrc/cpu/ukernel.h:void agentattn::ukernel::tile<3, 4>(long) (3x)
 60,000,000 ( 1.01%)  /tmp/Python-3.11.7/Python/ceval.c:_PyEval_EvalFrameDefault [/lib/libpython3.11.so]
"""  # noqa: E501 (verbatim callgrind_annotate output)


def test_summarize_sums_agentattn_functions_per_head():
    res = ci.summarize(ANN, heads=8)
    # tile's two source-file lines merge; the call line (=>) and Python's own lines are not counted
    assert res["total"] == pytest.approx((9_600_000 + 4_000_000 + 1_600_000) / 8)
    assert res["functions"][0] == ("void agentattn::ukernel::tile<3, 4>", pytest.approx(13_600_000 / 8))
    assert res["functions"][1] == ("agentattn::anon::fast::stage1_am", pytest.approx(200_000))
    assert len(res["functions"]) == 2


def test_summarize_empty_profile_counts_nothing():
    assert ci.summarize("PROGRAM TOTALS\n", heads=1) == {"total": 0.0, "functions": []}
