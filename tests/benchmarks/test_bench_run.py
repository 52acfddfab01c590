"""benchmarks/run.py end to end at test size, the result schema, and the crossover arithmetic.

One subprocess runs ``--tiny`` (the ``--quick`` layout at test sizes) with the real attention_sweep and
models suites plus two extra suites from a temporary directory: one that raises (must be reported as
failed, the run must go on) and one CUDA-only suite (must be skipped on CPU with a note).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
from bench_modules import BENCH, REPO
from bench_modules import load as _load

schema = _load("bench_schema_under_test", BENCH / "schema.py")
sweep = _load("bench_attention_sweep_under_test", BENCH / "suites" / "attention_sweep.py")

BOOM = 'NAME = "boom"\n\ndef run(cfg):\n    raise RuntimeError("boom: deliberate failure")\n'
GPU_ONLY = 'NAME = "fake_gpu"\nDEVICES = ("cuda",)\n\ndef run(cfg):\n    raise AssertionError("must not run on CPU")\n'


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    extra = tmp / "suites"
    extra.mkdir()
    (extra / "boom.py").write_text(BOOM)
    (extra / "fake_gpu.py").write_text(GPU_ONLY)
    out = tmp / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        str(BENCH / "run.py"),
        "--tiny",
        "--only",
        "attention_sweep,models,boom,fake_gpu",
        "--suite-path",
        str(extra),
        "--out",
        str(out),
    ]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    files = sorted(out.glob("*"))
    js = [f for f in files if f.suffix == ".json"]
    assert len(js) == 1, f"expected one JSON in {out}, got {files}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr[-3000:]}"
    return p, json.loads(js[0].read_text()), files


def test_run_writes_valid_json_md_and_plots(tiny_run):
    p, doc, files = tiny_run
    assert schema.validate(doc) == []
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:  # the standard validator agrees with ours
        jsonschema.validate(doc, schema.load_schema())
    names = {f.name for f in files}
    stem = next(f.stem for f in files if f.suffix == ".json")
    assert stem.endswith("-tiny") and doc["header"]["machine"] in stem
    assert {f"{stem}.md", f"{stem}-latency.png", f"{stem}-memory.png"} <= names
    assert doc["plots"] == [f"{stem}-latency.png", f"{stem}-memory.png"]
    h = doc["header"]
    assert h["cpu"] and h["torch"] and h["date_utc"] and h["device"] == "cpu"
    md = (files[0].parent / f"{stem}.md").read_text()
    assert "## attention_sweep: ok" in md and "## models: ok" in md and "Crossover" in md


def test_failing_suite_is_reported_not_fatal(tiny_run):
    p, doc, _ = tiny_run
    by = {s["name"]: s for s in doc["suites"]}
    assert by["boom"]["status"] == "failed" and "RuntimeError: boom: deliberate failure" in by["boom"]["error"]
    assert by["fake_gpu"]["status"] == "skipped" and "cuda" in by["fake_gpu"]["note"]
    assert by["attention_sweep"]["status"] == "ok" and by["models"]["status"] == "ok"
    assert p.returncode == 1, "a failed suite must make the exit status 1"
    assert "FAILED suites: ['boom']" in p.stderr


def test_sweep_rows_are_checked_and_timed(tiny_run):
    _, doc, _ = tiny_run
    rows = next(s for s in doc["suites"] if s["name"] == "attention_sweep")["rows"]
    impls = {r["impl"] for r in rows}
    assert impls == set(sweep.AGENT_IMPLS + sweep.SOFTMAX_IMPLS)
    for r in rows:
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["gflops_s"] > 0 and r["peak_mem_mb"] >= 0
        if r["impl"] in ("agent_fused", "agent_sdpa2", "softmax_sdpa"):
            assert r["check_rel_err"] is not None and r["check_rel_err"] < 2e-4
        want = (
            8 * r["B"] * r["H"] * r["N"] * r["n"] * r["d"]
            if r["family"] == "agent"
            else 4 * r["B"] * r["H"] * r["N"] ** 2 * r["d"]
        ) * (3 if r["pass"] == "fwd_bwd" else 1)
        assert r["flops"] == want
    # the fused op keeps no (N x n) tensor for backward: it saves less than the eager composition
    saved = {(r["impl"], r["N"]): r["saved_mb"] for r in rows if r["pass"] == "fwd_bwd" and r["family"] == "agent"}
    for N in {N for _, N in saved}:
        assert saved[("agent_fused", N)] < saved[("agent_eager", N)]


def test_models_rows(tiny_run):
    _, doc, _ = tiny_run
    rows = next(s for s in doc["suites"] if s["name"] == "models")["rows"]
    kinds = {(r["kind"], r["attn"]) for r in rows if r["status"] == "ok"}
    assert {("vit", "agent"), ("vit", "softmax"), ("htnet", "agent"), ("htnet", "softmax")} <= kinds
    for r in rows:
        if r["status"] == "ok":
            assert r["params"] > 0 and r["flops"] > 0 and r["macs"] * 2 == r["flops"]
            assert r["ms_b_small"] > 0 and r["ms_b_large"] > 0 and r["img_s"] > 0
    vit = {r["attn"]: r for r in rows if r["kind"] == "vit"}
    # agent attention adds the depthwise conv and position biases, and replaces N^2 by N*n products
    assert vit["agent"]["params"] > vit["softmax"]["params"]


def test_validator_rejects_bad_documents(tiny_run):
    _, doc, _ = tiny_run
    bad = []
    d = copy.deepcopy(doc)
    del d["header"]["torch"]
    bad.append((d, "missing required key 'torch'"))
    d = copy.deepcopy(doc)
    sw = next(s for s in d["suites"] if s["name"] == "attention_sweep")
    sw["rows"][0]["status"] = "failed check"  # a failed check must carry no timing
    bad.append((d, "must not match"))
    d = copy.deepcopy(doc)
    d["suites"][0]["status"] = "crashed"
    bad.append((d, "is not one of"))
    d = copy.deepcopy(doc)
    next(s for s in d["suites"] if s["name"] == "boom")["error"] = None
    bad.append((d, "expected string"))
    for d, msg in bad:
        errs = schema.validate(d)
        assert errs and any(msg in e for e in errs), errs


def test_crossover_interpolation():
    def row(impl, N, ms):
        fam = "agent" if impl.startswith("agent") else "softmax"
        return {
            "impl": impl,
            "family": fam,
            "pass": "fwd",
            "N": N,
            "n": 49 if fam == "agent" else None,
            "d": 64,
            "status": "ok",
            "median_ms": ms,
        }

    # agent 1 ms flat; softmax 0.25, 0.5, 2, 8 ms at N = 100, 200, 400, 800: log-ratio -0.69 at 200, +0.69 at 400
    rows = [row("agent_fused", N, 1.0) for N in (100, 200, 400, 800)]
    rows += [row("softmax_sdpa", N, ms) for N, ms in ((100, 0.25), (200, 0.5), (400, 2.0), (800, 8.0))]
    (x,) = sweep.crossovers(rows)
    assert x["stat"] == "median"
    assert x["first_faster_N"] == 400 and x["crossover_N"] == round(2**0.5 * 200) and x["ratio_at_max_N"] == 8.0
    # a later loss moves the crossover past it; never faster -> None
    rows2 = [r if not (r["impl"] == "softmax_sdpa" and r["N"] == 800) else dict(r, median_ms=0.9) for r in rows]
    (y,) = sweep.crossovers(rows2)
    assert y["crossover_N"] is None and y["first_faster_N"] is None


def test_agent_attention_cpu_reference_points_and_target_context():
    """The CPU suite's forward reference points (bmm4, stream) are timed and feed the targets table."""
    cpu = _load("bench_agent_attention_cpu_under_test", BENCH / "suites" / "agent_attention_cpu.py")
    import agentattn

    if "cpp" not in agentattn.backends()["cpu"]:
        pytest.skip("agentattn._C is not built")
    cfg = cpu._cfg({"tiny": True})
    cfg.threads = 1
    cfg.shapes = [("B_swin_s1_n9", 1, 2, 392, 9, 32)]
    rows = cpu.run(cfg)
    fwd = {r["impl"]: r for r in rows if r["pass_"] == "fwd"}
    assert {"fused", "eager", "sdpa2", "bmm4", "stream", "mm"} <= set(fwd)
    assert not any(r.get("reference") for r in rows if r["pass_"] == "fwd_bwd"), "reference points are forward-only"
    B, H, N, n, d = 1, 2, 392, 9, 32
    assert fwd["bmm4"]["flops"] == 8 * B * H * N * n * d and fwd["bmm4"]["ms"] > 0
    assert fwd["stream"]["bytes"] == 16 * B * H * N * d and fwd["stream"]["gbytes_s"] > 0
    t = cpu.check_targets(rows)
    n9 = next(x for x in t if x["target"].startswith("forward B n=9"))
    assert n9["needs_ms"] == pytest.approx(fwd["sdpa2"]["ms"] / 2.5, rel=0.02)
    assert n9["bmm4_ms"] == fwd["bmm4"]["ms"] and n9["stream_ms"] == fwd["stream"]["ms"]
    md = cpu.to_markdown(rows, t)
    assert "| B_swin_s1_n9 | fwd | bmm4 |" in md and "| B_swin_s1_n9 | fwd | stream |" in md
    assert "target needs ms" in md and "GB/s" in md


def test_agent_attention_cpu_mer_shape_against_softmax_and_isa_meta():
    """Shape C (mer's HTNet blocks) also times softmax attention, and the fused rows carry the ratio the
    issue-18 target reads; the run's header names the CPU and the kernel's ISA."""
    cpu = _load("bench_agent_attention_cpu_under_test", BENCH / "suites" / "agent_attention_cpu.py")
    import agentattn

    if "cpp" not in agentattn.backends()["cpu"]:
        pytest.skip("agentattn._C is not built")
    cfg = cpu._cfg({"tiny": True})
    cfg.threads = 1
    cfg.shapes = [("C_mer_htnet", 4, 2, 49, 9, 16)]
    rows = cpu.run(cfg)
    for pss in ("fwd", "fwd_bwd"):
        got = {r["impl"]: r for r in rows if r["pass_"] == pss and "ms" in r}
        assert {"fused", "eager", "sdpa2", "softmax", "mm"} <= set(got), pss
        # ms are rounded to 3 decimals: a tiny shape's 0.02 ms carries a 2.5 % rounding error
        assert got["fused"]["speedup_vs_softmax"] == pytest.approx(got["softmax"]["ms"] / got["fused"]["ms"], rel=0.1)
        assert got["softmax"]["flops"] == 4 * 4 * 2 * 49 * 49 * 16 * (3 if pss == "fwd_bwd" else 1)
    t = {x["target"]: x for x in cpu.check_targets(rows)}
    assert t["forward C (mer) at least as fast as softmax SDPA"]["value"] is not None
    meta = cpu._meta(1)
    assert meta["cpu_isa"] == agentattn.backends()["cpu_isa"] and meta["cpu"]
    assert "ISA " + str(meta["cpu_isa"]) in cpu.to_markdown(rows, None, meta)
