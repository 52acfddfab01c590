"""The flow_patch_embed benchmark's correctness row: the fused op and the conv baseline are each compared
with float64, and a wrong fused op is reported as a MISMATCH (the benchmark then exits 1)."""

from __future__ import annotations

import pytest
from bench_modules import BENCH, load


@pytest.fixture(scope="module")
def suite():
    return load("bench_flow_patch_embed_under_test", BENCH / "suites" / "flow_patch_embed.py")


def _check_row(suite):
    cfg = suite.FlowPatchBenchConfig(shapes=[("tiny", 2, 3, 12, 3, 8)], reps=1, warmup=0, passes=("fwd",))
    rows = suite.run(cfg)
    return next(r for r in rows if r["kind"] == "check")


def test_check_row_compares_both_with_fp64(suite):
    row = _check_row(suite)
    errs = row["rel_err_vs_fp64"]
    assert set(errs) == {"fused", "conv"} and set(errs["fused"]) == {"out", "dweight", "dbias", "dpos"}
    assert row["ok"] and max(errs["fused"].values()) < 1e-5 and max(errs["conv"].values()) < 1e-5
    assert "tiny: out " in suite.to_markdown([row], suite._meta(suite._cfg({}))) and "-> ok" in suite.to_markdown(
        [row], suite._meta(suite._cfg({}))
    )


def test_a_wrong_fused_op_is_a_mismatch(suite, monkeypatch):
    import agentattn

    real = agentattn.flow_patch_embed
    monkeypatch.setattr(agentattn, "flow_patch_embed", lambda *a, **k: real(*a, **k) * (1 + 1e-3))
    row = _check_row(suite)
    assert not row["ok"] and row["rel_err_vs_fp64"]["fused"]["out"] > 5e-4
    assert row["rel_err_vs_fp64"]["conv"]["out"] < 1e-5
