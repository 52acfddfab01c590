"""Agent attention against softmax attention over a sweep of sequence length N, agents n and head dim d.

Suite plugin (``NAME``, ``run(cfg) -> list[dict]``, ``summarize(rows) -> dict``); also runs on its own::

    python benchmarks/suites/attention_sweep.py --quick            # prints a Markdown table
    python benchmarks/run.py --only attention_sweep                # the same inside the full harness

Implementations, side by side in one process (random inputs, never zeros); all rows of one (pass, N, d) are
timed round-robin, one call of each in turn, so that load from other processes falls on all alike:

  agent_fused     agentattn.agent_attention with the best available backend (cpp on CPU; cuda/triton on GPU)
  agent_eager     naive.agent_attention_ref: the reference composition (what the original module runs)
  agent_sdpa2     naive.agent_attention_sdpa: two F.scaled_dot_product_attention calls with float masks
  softmax_sdpa    F.scaled_dot_product_attention(q, k, v) over the N tokens (no bias)
  softmax_eager   softmax(s q kᵀ) v written out

Agent attention gets learnable position biases (1, H, n, N) and (1, H, N, n) as in the module; softmax
attention none (its fastest case). Passes: ``fwd`` (no grad) and ``fwd_bwd`` (forward + backward of all
inputs). Per row: median / min / interquartile range of the wall time, effective FLOP/s (agent forward
8·B·H·N·n·d, softmax forward 4·B·H·N²·d, fwd+bwd 3x forward), on GPU the achieved bandwidth of the minimum
traffic (Q, K, V, O once; fwd+bwd adds dO, dQ, dK, dV) as % of the card's peak, peak memory (see
``common.peak_memory_bytes``) and, for fwd_bwd, the bytes autograd saves for backward plus the output.

Correctness first: each implementation other than the eager ones is compared, outputs and every gradient,
with a float64 evaluation of the reference on the same inputs; one that fails is reported as
``failed check`` and not timed. On CPU a row whose predicted single-call time (from the previous N of the
same implementation: linear in N for agent, quadratic for softmax) exceeds ``cap_s`` is ``skipped``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

NAME = "attention_sweep"
AGENT_IMPLS = ("agent_fused", "agent_eager", "agent_sdpa2")
SOFTMAX_IMPLS = ("softmax_sdpa", "softmax_eager")
COLUMNS = [
    "impl",
    "pass",
    "N",
    "n",
    "d",
    "status",
    "median_ms",
    "iqr_ms",
    "min_ms",
    "gflops_s",
    "pct_peak_bw",
    "peak_mem_mb",
    "saved_mb",
    "check_rel_err",
    "note",
]


@dataclass
class SweepConfig:
    """Sizes and repetition budget. ``main`` pairs (n, d) run over every N in ``Ns``; ``grid`` crosses
    ``grid_ns`` x ``grid_ds`` at ``grid_Ns``."""

    device: str = "cpu"
    dtype: str = "float32"
    B: int = 1
    H: int = 4
    Ns: tuple = (49, 98, 196, 392, 784, 1568, 3136, 6272, 16384)
    main: tuple = ((49, 64), (9, 32))
    grid_Ns: tuple = (196, 3136)
    grid_ns: tuple = (9, 16, 49, 64)
    grid_ds: tuple = (32, 64)
    impls: tuple = AGENT_IMPLS + SOFTMAX_IMPLS
    passes: tuple = ("fwd", "fwd_bwd")
    warmup: int = 2
    min_reps: int = 3
    max_reps: int = 30
    budget_s: float = 0.4  # timed seconds per row (after warm-up), at least min_reps calls
    cap_s: float = 3.0  # CPU: skip a row whose predicted single call exceeds this
    max_scores_bytes: int = 2**30  # skip softmax_eager when one (B, H, N, N) fp32 score matrix exceeds this
    check_softmax_max_N: int = 2048  # the fp64 softmax reference costs N^2; above this SDPA is not checked
    memory: bool = True
    seed: int = 0
    notes: list = field(default_factory=list)


def make_config(cfg: dict | None) -> SweepConfig:
    """From the harness dict: ``device``, ``quick``, ``tiny``, optionally ``dtype``."""
    cfg = cfg or {}
    device = cfg.get("device", "cpu")
    c = SweepConfig(device=device, dtype=cfg.get("dtype") or ("float16" if device == "cuda" else "float32"))
    if device == "cuda":
        c.B, c.H, c.cap_s, c.max_scores_bytes, c.check_softmax_max_N = 4, 8, 30.0, 8 * 2**30, 4096
    if cfg.get("quick"):
        c.Ns, c.grid_Ns, c.grid_ns, c.grid_ds = (49, 196, 784), (196,), (9, 64), (32,)
        c.warmup, c.min_reps, c.budget_s = 1, 3, 0.1
    if cfg.get("tiny"):
        c.Ns, c.main, c.grid_Ns = (49, 196), ((9, 16),), ()
        c.warmup, c.min_reps, c.budget_s, c.memory = 1, 2, 0.01, True
    return c


# ------------------------------------------------------------------------------------------ helpers
def _flops(family: str, B, H, N, n, d, pss: str) -> int:
    f = 8 * B * H * N * n * d if family == "agent" else 4 * B * H * N * N * d
    return f * (3 if pss == "fwd_bwd" else 1)


def _inputs(c: SweepConfig, N: int, n: int, d: int, dtype, requires_grad: bool):
    import torch

    g = torch.Generator(device="cpu").manual_seed(c.seed + 7919 * N + 31 * n + d)
    mk = lambda *sh: torch.randn(*sh, generator=g, dtype=torch.float32)  # noqa: E731
    B, H = c.B, c.H
    t = dict(
        q=mk(B, H, N, d),
        k=mk(B, H, N, d),
        v=mk(B, H, N, d),
        a=mk(B, H, n, d),
        b1=0.5 * mk(1, H, n, N),
        b2=0.5 * mk(1, H, N, n),
        go=mk(B, H, N, d),
    )
    return {k: x.to(device=c.device, dtype=dtype).requires_grad_(requires_grad and k != "go") for k, x in t.items()}


def _call(impl: str, t: dict, scale: float, backend: str):
    """The forward of ``impl`` on the tensors ``t`` (a closure, so timing measures only the op)."""
    import torch.nn.functional as F

    import agentattn
    from agentattn.ops.agent_attention.naive import agent_attention_ref, agent_attention_sdpa

    q, k, v, a, b1, b2 = (t[x] for x in ("q", "k", "v", "a", "b1", "b2"))
    if impl == "agent_fused":
        return lambda: agentattn.agent_attention(q, k, v, a, b1, b2, scale, backend=backend)
    if impl == "agent_eager":
        return lambda: agent_attention_ref(q, k, v, a, b1, b2, scale)
    if impl == "agent_sdpa2":
        return lambda: agent_attention_sdpa(q, k, v, a, b1, b2, scale)
    if impl == "softmax_sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, scale=scale)
    if impl == "softmax_eager":
        return lambda: ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    raise ValueError(f"unknown implementation {impl!r}; known: {AGENT_IMPLS + SOFTMAX_IMPLS}")


def _grad_names(family: str) -> tuple:
    return ("q", "k", "v", "a", "b1", "b2") if family == "agent" else ("q", "k", "v")


def _fwd_bwd(fwd, t: dict, family: str):
    names = _grad_names(family)

    def step():
        fwd().backward(t["go"])
        for x in names:
            t[x].grad = None

    return step


def check(impl: str, c: SweepConfig, N: int, n: int, d: int, backend: str) -> tuple[bool, float, str]:
    """Compare ``impl`` (output and all gradients) with the float64 reference on the same inputs.
    Returns (ok, max relative error, note); relative = max |diff| / max |reference| per tensor."""
    import torch

    family = "agent" if impl.startswith("agent") else "softmax"
    dtype = getattr(torch, c.dtype)
    t = _inputs(c, N, n, d, dtype, requires_grad=True)
    t64 = {k: x.detach().double().requires_grad_(k != "go") for k, x in t.items()}
    scale = d**-0.5
    ref = "agent_eager" if family == "agent" else "softmax_eager"
    out = _call(impl, t, scale, backend)()
    out.backward(t["go"])
    out64 = _call(ref, t64, scale, backend)()
    out64.backward(t64["go"])
    pairs = [("out", out, out64)] + [(f"d{x}", t[x].grad, t64[x].grad) for x in _grad_names(family)]
    tol = 2e-4 if c.dtype in ("float32", "float64") else 2e-2
    worst, where = 0.0, ""
    for name, got, want in pairs:
        if got is None:
            return False, math.inf, f"no gradient for {name}"
        den = want.abs().max().item() or 1.0
        err = (got.double() - want).abs().max().item() / den
        if not math.isfinite(err):
            err = math.inf
        if err > worst:
            worst, where = err, name
    ok = worst <= tol
    return ok, worst, ("" if ok else f"{where} rel err {worst:.2e} > {tol:g}")


def _tasks(c: SweepConfig) -> list[tuple]:
    """(impl, pass, N, n, d) in an order where each (impl, pass, n, d) line runs with N ascending."""
    agent_shapes = {(N, n, d) for (n, d) in c.main for N in c.Ns}
    agent_shapes |= {(N, n, d) for N in c.grid_Ns for n in c.grid_ns for d in c.grid_ds}
    agent_shapes = {s for s in agent_shapes if s[1] <= s[0]}  # agents are pooled from the N tokens
    softmax_shapes = {(N, d) for (N, _n, d) in agent_shapes}
    tasks = []
    for impl in c.impls:
        for pss in c.passes:
            if impl in AGENT_IMPLS:
                tasks += [(impl, pss, N, n, d) for (N, n, d) in agent_shapes]
            else:
                tasks += [(impl, pss, N, None, d) for (N, d) in softmax_shapes]
    return sorted(tasks, key=lambda x: (x[0], x[1], x[3] or 0, x[4], x[2]))


# ---------------------------------------------------------------------------------------------- run
def run(cfg: dict | None = None) -> list[dict]:
    """One row per (implementation, pass, N, n, d); see the module docstring."""
    import torch

    import agentattn

    c = cfg if isinstance(cfg, SweepConfig) else make_config(cfg)
    if c.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for but torch.cuda.is_available() is False")
    dtype = getattr(torch, c.dtype)
    backend = agentattn.backends()["cuda" if c.device == "cuda" else "cpu"][0]
    peak_bw = common.peak_bandwidth(torch.cuda.get_device_name(0)) if c.device == "cuda" else None
    elt = torch.finfo(dtype).bits // 8
    checks: dict[tuple, tuple] = {}
    last: dict[tuple, tuple] = {}  # (impl, pass, n, d) -> (N, min ms) of the previous N, for the cap
    rows = []
    groups: dict[tuple, list] = {}  # (pass, d, N) -> [(impl, n)]: timed together, round-robin
    for impl, pss, N, n, d in _tasks(c):
        groups.setdefault((pss, d, N), []).append((impl, n))
    for (pss, d, N), members in common.progress(sorted(groups.items()), NAME, total=len(groups)):
        live = {}
        for impl, n in members:
            row = _new_row(c, impl, pss, N, n, d, backend, elt)
            rows.append(row)
            if _skip_or_check(row, c, last, checks, backend):
                continue
            try:
                t = _inputs(c, N, n or 1, d, dtype, requires_grad=pss == "fwd_bwd")
                fwd = _call(impl, t, d**-0.5, backend)
                if pss == "fwd":

                    def fn(fwd=fwd):
                        with torch.no_grad():
                            return fwd()
                else:
                    fn = _fwd_bwd(fwd, t, row["family"])
                live[(impl, n)] = (row, t, fwd, fn)
            except Exception as e:
                row.update(status="error", note=_err(e))
        stats = common.time_round_robin(
            {k: v[3] for k, v in live.items()},
            c.device,
            warmup=c.warmup,
            min_reps=c.min_reps,
            max_reps=c.max_reps,
            budget_s=c.budget_s,
        )
        for key, (row, t, fwd, fn) in live.items():
            tm = stats[key]
            if isinstance(tm, Exception):
                row.update(status="error", note=_err(tm))
                continue
            row.update(tm)
            last[(row["impl"], pss, row["n"], d)] = (N, tm["min_ms"])  # the minimum: load inflates medians
            row["gflops_s"] = round(row["flops"] / (tm["median_ms"] * 1e-3) / 1e9, 2)
            if c.device == "cuda":
                gbs = row["bytes_min"] / (tm["median_ms"] * 1e-3)
                row["gb_s"] = round(gbs / 1e9, 1)
                row["pct_peak_bw"] = round(100 * gbs / peak_bw, 1) if peak_bw else None
            if c.memory:
                try:
                    peak, method = common.peak_memory_bytes(fn, c.device)
                    row.update(peak_mem_mb=round(peak / 2**20, 3), mem_method=method)
                    if pss == "fwd_bwd":
                        inputs = [t[x] for x in ("q", "k", "v", "a", "b1", "b2", "go")]
                        row["saved_mb"] = round(common.saved_tensor_bytes(fwd, inputs) / 2**20, 3)
                except Exception as e:
                    row["note"] = (row["note"] + "; " if row["note"] else "") + f"memory: {_err(e)}"
        del live
    order = {impl: i for i, impl in enumerate(AGENT_IMPLS + SOFTMAX_IMPLS)}
    return sorted(rows, key=lambda r: (order[r["impl"]], r["pass"], r["n"] or 0, r["d"], r["N"]))


def _err(e: Exception) -> str:
    msg = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {msg}"


def _new_row(c: SweepConfig, impl, pss, N, n, d, backend, elt) -> dict:
    family = "agent" if impl in AGENT_IMPLS else "softmax"
    row = {"suite": NAME, "impl": impl, "family": family, "pass": pss}
    row.update(
        backend=backend if impl == "agent_fused" else None,
        device=c.device,
        dtype=c.dtype,
        B=c.B,
        H=c.H,
        N=N,
        n=n,
        d=d,
        bias=family == "agent",
        status="ok",
        note="",
        flops=_flops(family, c.B, c.H, N, n, d, pss),
        bytes_min=(4 if pss == "fwd" else 9) * c.B * c.H * N * d * elt,
    )
    return row


def _skip_or_check(row: dict, c: SweepConfig, last: dict, checks: dict, backend: str) -> bool:
    """Apply the time cap, the score-size cap and the correctness check (once per implementation and
    shape, before any timing) to ``row``; True when it must not be timed (status and note set)."""
    impl, pss, N, n, d, family = (row[k] for k in ("impl", "pass", "N", "n", "d", "family"))
    key = (impl, pss, n, d)
    if c.device == "cpu" and key in last:
        N0, ms0 = last[key]
        pred = ms0 / 1e3 * (N / N0) ** (1 if family == "agent" else 2)
        if pred > c.cap_s:
            row.update(status="skipped", note=f"predicted {pred:.1f} s per call > cap {c.cap_s:g} s")
            return True
    if impl == "softmax_eager" and c.B * c.H * N * N * 4 > c.max_scores_bytes:
        row.update(status="skipped", note=f"(B,H,N,N) scores {c.B * c.H * N * N * 4 / 2**30:.1f} GiB > cap")
        return True
    if impl in ("agent_eager", "softmax_eager"):
        return False  # the references themselves
    ck = (impl, N, n, d)
    if ck not in checks:
        if family == "softmax" and N > c.check_softmax_max_N:
            checks[ck] = (True, None, f"not checked (fp64 reference too large above N={c.check_softmax_max_N})")
        else:
            try:
                checks[ck] = check(impl, c, N, n or 0, d, backend)
            except Exception as e:  # an implementation that cannot run this shape
                checks[ck] = (False, None, f"check raised {_err(e)}")
    ok, err, note = checks[ck]
    row.update(check_rel_err=None if err is None else float(f"{err:.3g}"), note=note)
    if not ok:
        row.update(status="failed check")
    return not ok


# ------------------------------------------------------------------------------------------ summary
def crossovers(
    rows: list[dict],
    agent: str = "agent_fused",
    softmax: str = "softmax_sdpa",
    stat: str = "median_ms",
    min_points: int = 3,
) -> list[dict]:
    """Per (pass, n, d) with at least ``min_points`` N measured for both: the N above which ``agent`` is
    faster than ``softmax`` by ``stat`` (``median_ms`` or ``min_ms``).

    ``crossover_N`` is interpolated on log N / log time between the last measured N where softmax was
    faster (or not slower) and the first N from which agent stays faster at every larger measured N;
    ``first_faster_N`` is that measured N. None when agent never stays faster in the measured range;
    ``N_min`` when it is faster everywhere.
    """
    ok = [r for r in rows if r.get("status") == "ok" and r.get(stat)]
    out = []
    lines = sorted({(r["pass"], r["n"], r["d"]) for r in ok if r["impl"] == agent})
    for pss, n, d in lines:
        a = {r["N"]: r[stat] for r in ok if r["impl"] == agent and (r["pass"], r["n"], r["d"]) == (pss, n, d)}
        s = {r["N"]: r[stat] for r in ok if r["impl"] == softmax and (r["pass"], r["d"]) == (pss, d)}
        Ns = sorted(set(a) & set(s))
        if len(Ns) < max(2, min_points):
            continue
        faster = [a[N] < s[N] for N in Ns]
        first = None
        for i in range(len(Ns)):
            if all(faster[i:]):
                first = i
                break
        rec = dict(
            pass_=pss,
            n=n,
            d=d,
            agent=agent,
            softmax=softmax,
            stat=stat.replace("_ms", ""),
            Ns=Ns,
            first_faster_N=None,
            crossover_N=None,
            ratio_at_max_N=round(s[Ns[-1]] / a[Ns[-1]], 3),
        )
        if first is not None:
            rec["first_faster_N"] = Ns[first]
            if first == 0:
                rec["crossover_N"] = None
                rec["note"] = f"agent faster at every measured N (from {Ns[0]})"
            else:
                N0, N1 = Ns[first - 1], Ns[first]
                # log-ratio r(N) = log(s/a) goes from <= 0 at N0 to > 0 at N1; interpolate its zero in log N
                r0, r1 = math.log(s[N0] / a[N0]), math.log(s[N1] / a[N1])
                f = 0.0 if r1 == r0 else -r0 / (r1 - r0)
                rec["crossover_N"] = int(round(math.exp(math.log(N0) + f * (math.log(N1) - math.log(N0)))))
        else:
            rec["note"] = "agent not faster at the largest measured N"
        rec["pass"] = rec.pop("pass_")
        out.append(rec)
    return out


def summarize(rows: list[dict]) -> dict:
    """What ``run.py`` stores next to the rows: crossovers (fused vs SDPA and vs eager softmax) and counts."""
    status = {}
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    xs = [
        x
        for soft in SOFTMAX_IMPLS
        for stat in ("median_ms", "min_ms")
        for x in crossovers(rows, softmax=soft, stat=stat)
    ]
    return {"crossovers": xs, "status_counts": status}


def to_markdown(rows: list[dict]) -> str:
    return common.markdown_table(rows, COLUMNS)


def summary_markdown(summary: dict) -> str:
    """The crossover table (what the README quotes)."""
    rows = [dict(x, measured_N=" ".join(str(N) for N in x["Ns"])) for x in summary.get("crossovers", [])]
    return (
        "### Crossover: the N above which fused agent attention beats softmax attention\n\n"
        + common.markdown_table(
            rows,
            [
                "pass",
                "n",
                "d",
                "agent",
                "softmax",
                "stat",
                "crossover_N",
                "first_faster_N",
                "ratio_at_max_N",
                "measured_N",
                "note",
            ],
            {"ratio_at_max_N": "softmax/agent time at largest N"},
        )
        + f"\nRow status counts: {summary.get('status_counts')}\n"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Agent vs softmax attention sweep (one suite of benchmarks/run.py).",
        epilog="example: python benchmarks/suites/attention_sweep.py --quick",
    )
    ap.add_argument("--quick", action="store_true", help="a few small N, short timing budget")
    ap.add_argument("--tiny", action="store_true", help="test size (seconds)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args(argv)
    cfg = make_config(vars(args))
    print(f"# {NAME}: {asdict(cfg)}")
    rows = run(cfg)
    print(to_markdown(rows))
    for x in summarize(rows)["crossovers"]:
        print(x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
