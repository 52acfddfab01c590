"""CPU benchmark of the fused C++ agent-attention kernel against the PyTorch compositions.

Suite plugin: ``NAME`` and ``run(cfg) -> list[dict]`` (one row per shape x implementation x pass, plus the
correctness and matmul-rate rows). Also runnable on its own::

    python benchmarks/suites/agent_attention_cpu.py --isa avx512 \
        --out benchmarks/results/<machine>-<date>-agent_attention_cpu_avx512_run1
    python benchmarks/suites/agent_attention_cpu.py --quick

``--isa`` runs the C++ kernel's tiles of one instruction set (avx512 | avx2 | generic; default: what the
kernel picks for this CPU); the result names the machine (CPU model, family/model) and the ISA.

Shapes (fp32, biases (1, H, n, N) and (1, H, N, n) shared over the batch, learnable in fwd+bwd):
A = DeiT-T-like (B=32, H=3, N=196, n=49, d=64); B = Swin-T-stage-1-like (B=8, H=3, N=3136, d=32) with
n=49 and n=9; C = mer's HTNet-small level 0 at batch 64 (4 blocks of 7x7 tokens per image: B=256, H=2,
N=49, n=9, d=16). Implementations, timed in the same process, interleaved round-robin (so that load from
other processes on a shared machine hits all of them alike):

  fused    agentattn.agent_attention (the C++ CPU kernel)
  eager    naive.agent_attention_ref, the reference composition as the reference module runs it
  sdpa2    naive.agent_attention_sdpa, two F.scaled_dot_product_attention calls with float masks
  softmax  (shape C only) softmax attention over the same q, k, v: F.scaled_dot_product_attention, what
           the softmax twins of mer's agent models run
  mm       torch.mm of a 768 x 768 x 768 fp32 product (0.91 GFLOP, the size of the shape-B n=49 forward),
           timed alongside every shape: the machine's matmul rate in the same run

and, forward only, two reference points for the targets, timed in a round-robin of their own right after
the implementations' (so that their buffers do not change what the implementations find in the cache):

  bmm4     the forward's four products alone (A K^T, P V, Q A^T, P V_A) through torch.bmm into preallocated
           outputs: no scale, bias or softmax; what torch's own GEMMs need for the op's FLOPs at these
           shapes (not a bound: a fused kernel keeps the score tiles in cache and can beat it)
  stream   the op's compulsory memory traffic through torch's streaming kernels: q, k and v read once
           (sum) and the output written once (fill); GB/s in the row. A floor for any implementation

Per row: median wall ms over the repetitions (after warm-up, never on zeros), inter-quartile range,
median CPU ms (process time, all threads), effective GFLOP/s (forward 8·B·H·N·n·d, fwd+bwd 3x that, the
FlopCounterMode convention of the op), % of the matmul rate, and speed-ups against eager and sdpa2
(ratios of medians from the same interleaved run; the forward rows also against bmm4). Before timing,
every shape is checked against the reference in float64 (output and all six gradients); a kernel that
fails is not timed ("refused"). ``check_targets(rows)`` evaluates the kernel's performance targets (``spec`` there).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

NAME = "agent_attention_cpu"
DEVICES = ("cpu",)  # for benchmarks/run.py: a CPU-only suite

SHAPES = [
    # name, B, H, N, n, d
    ("A_deit_t", 32, 3, 196, 49, 64),
    ("B_swin_s1_n49", 8, 3, 3136, 49, 32),
    ("B_swin_s1_n9", 8, 3, 3136, 9, 32),
    ("C_mer_htnet", 256, 2, 49, 9, 16),
]
SOFTMAX_SHAPES = ("C_mer_htnet",)  # where softmax attention over the tokens is timed too
MM_SIZE = 768


@dataclass
class CpuBenchConfig:
    shapes: list = field(default_factory=lambda: list(SHAPES))
    impls: tuple = ("fused", "eager", "sdpa2")
    references: tuple = ("bmm4", "stream")  # forward only (module docstring)
    passes: tuple = ("fwd", "fwd_bwd")
    threads: int = 2
    warmup: int = 3
    reps: dict = field(default_factory=lambda: {"fwd": 31, "fwd_bwd": 15})
    check_tol: float = 1e-4  # max |fused - ref64| / max |ref64|, fp32, per tensor
    quick: bool = False


def _cfg(cfg) -> CpuBenchConfig:
    if isinstance(cfg, CpuBenchConfig):
        return cfg
    cfg = cfg or {}
    get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    c = CpuBenchConfig()
    if get("quick", False) or get("tiny", False):
        c.quick, c.warmup, c.reps = True, 1, {"fwd": 5, "fwd_bwd": 3}
        c.shapes = [
            ("A_deit_t", 4, 3, 196, 49, 64),
            ("B_swin_s1_n49", 1, 3, 3136, 49, 32),
            ("B_swin_s1_n9", 1, 3, 3136, 9, 32),
            ("C_mer_htnet", 32, 2, 49, 9, 16),
        ]
    if get("tiny", False):
        c.reps = {"fwd": 2, "fwd_bwd": 1}
        c.shapes = [
            ("A_deit_t", 1, 3, 196, 49, 64),
            ("B_swin_s1_n9", 1, 1, 784, 9, 32),
            ("C_mer_htnet", 4, 2, 49, 9, 16),
        ]
    return c


def _inputs(B, H, N, n, d, dtype, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v, a = mk(B, H, N, d), mk(B, H, N, d), mk(B, H, N, d), mk(B, H, n, d)
    b1, b2 = 0.02 * mk(1, H, n, N), 0.02 * mk(1, H, N, n)
    return [q, k, v, a, b1, b2], mk(B, H, N, d)


def _impl_fn(impl):
    import agentattn
    from agentattn.ops.agent_attention.naive import agent_attention_ref, agent_attention_sdpa

    if impl == "fused":
        return lambda *t: agentattn.agent_attention(*t, backend="cpp")
    if impl == "eager":
        return agent_attention_ref
    if impl == "sdpa2":
        return agent_attention_sdpa
    if impl == "softmax":
        import torch.nn.functional as F

        return lambda q, k, v, *_: F.scaled_dot_product_attention(q, k, v)
    raise ValueError(f"unknown implementation {impl!r}")


def _reference_fns(ins, B, H, N, n, d) -> dict:
    """The forward's reference points bmm4 and stream (module docstring): {name: (fn, flops, bytes)}."""
    import torch

    q, k, v = (t.reshape(B * H, N, d) for t in ins[:3])
    a = ins[3].reshape(B * H, n, d)
    s1, s2 = torch.empty(B * H, n, N), torch.empty(B * H, N, n)
    va, o = torch.empty(B * H, n, d), torch.empty(B * H, N, d)

    def bmm4():
        torch.bmm(a, k.transpose(1, 2), out=s1)
        torch.bmm(s1, v, out=va)
        torch.bmm(q, a.transpose(1, 2), out=s2)
        torch.bmm(s2, va, out=o)

    def stream():
        q.sum(), k.sum(), v.sum()
        o.fill_(0.5)

    tok = B * H * N * d
    return {"bmm4": (bmm4, 8 * B * H * N * n * d, None), "stream": (stream, None, 4 * 4 * tok)}


def check_correct(B, H, N, n, d, tol) -> dict:
    """Fused fp32 output and gradients against the reference in float64 at one shape."""
    import torch

    from agentattn.ops.agent_attention.naive import agent_attention_ref

    ins, go = _inputs(B, H, N, n, d, torch.float64, seed=1)

    def grads(fn, dtype):
        xs = [t.detach().to(dtype).clone().requires_grad_() for t in ins]
        out = fn(*xs)
        out.backward(go.to(dtype))
        return [out.detach()] + [x.grad for x in xs]

    ref = grads(agent_attention_ref, torch.float64)
    got = grads(_impl_fn("fused"), torch.float32)
    errs = {}
    for name, r, x in zip(("out", "dq", "dk", "dv", "dagents", "dbias_agent", "dbias_query"), ref, got, strict=True):
        x = x.double()
        errs[name] = (
            float("inf") if not torch.isfinite(x).all() else float((x - r).abs().max() / r.abs().max().clamp_min(1e-30))
        )
    worst = max(errs.values())
    return dict(max_rel_err=worst, errors={k: float(f"{v:.3g}") for k, v in errs.items()}, ok=worst <= tol)


def _time_interleaved(fns: dict, warmup: int, reps: int) -> dict:
    """Round-robin timing: each repetition runs every function once, starting at a rotating position."""
    names = list(fns)
    for _ in range(warmup):
        for nm in names:
            fns[nm]()
    wall = {nm: [] for nm in names}
    cpu = {nm: [] for nm in names}
    for r in range(reps):
        for i in range(len(names)):
            nm = names[(r + i) % len(names)]
            c0, t0 = time.process_time(), time.perf_counter()
            fns[nm]()
            t1, c1 = time.perf_counter(), time.process_time()
            wall[nm].append((t1 - t0) * 1e3)
            cpu[nm].append((c1 - c0) * 1e3)
    out = {}
    for nm in names:
        w = sorted(wall[nm])
        q = statistics.quantiles(w, n=4) if len(w) >= 2 else [w[0]] * 3
        out[nm] = dict(
            ms=statistics.median(w), iqr_ms=q[2] - q[0], min_ms=w[0], cpu_ms=statistics.median(cpu[nm]), reps=len(w)
        )
    return out


def _bench_shape(name, B, H, N, n, d, c: CpuBenchConfig, refused: bool) -> list[dict]:
    import torch

    rows = []
    mm_flops = 2 * MM_SIZE**3
    gx = torch.Generator().manual_seed(2)
    x, y = torch.randn(MM_SIZE, MM_SIZE, generator=gx), torch.randn(MM_SIZE, MM_SIZE, generator=gx)
    impls = [i for i in c.impls if not (i == "fused" and refused)]
    if name in SOFTMAX_SHAPES:
        impls.append("softmax")
    for pss in c.passes:
        ins, go = _inputs(B, H, N, n, d, torch.float32)
        train = pss == "fwd_bwd"
        fns = {}
        for impl in impls:
            fn = _impl_fn(impl)
            if train:
                ts = [t.clone().requires_grad_() for t in ins]

                def f(fn=fn, ts=ts):
                    fn(*ts).backward(go)
                    for t in ts:
                        t.grad = None
            else:

                def f(fn=fn):
                    with torch.no_grad():
                        fn(*ins)

            fns[impl] = f
        fns["mm"] = lambda: torch.mm(x, y)
        res = _time_interleaved(fns, c.warmup, c.reps[pss])
        # the reference points in a round-robin of their own, right after: their buffers (the four products' outputs)
        # would otherwise change what the implementations find in the cache
        refs = _reference_fns(ins, B, H, N, n, d) if not train else {}
        refs = {k: refs[k] for k in c.references if k in refs}
        if refs:
            res.update(_time_interleaved({nm: fn for nm, (fn, _, _) in refs.items()}, c.warmup, c.reps[pss]))
        mm_rate = mm_flops / (res["mm"]["ms"] * 1e-3) / 1e9
        flops = 8 * B * H * N * n * d * (3 if train else 1)
        base = dict(
            suite=NAME, shape=name, B=B, H=H, N=N, n=n, d=d, dtype="float32", pass_=pss, threads=torch.get_num_threads()
        )

        def row_of(nm, fl=None, nbytes=None, speedups=True, **extra):
            r = res[nm]
            row = dict(
                base,
                impl=nm,
                **extra,
                ms=round(r["ms"], 3),
                iqr_ms=round(r["iqr_ms"], 3),
                min_ms=round(r["min_ms"], 3),
                cpu_ms=round(r["cpu_ms"], 3),
                reps=r["reps"],
            )
            if fl:
                gfs = fl / (r["ms"] * 1e-3) / 1e9
                row.update(flops=fl, gflops=round(gfs, 1), pct_mm_rate=round(100 * gfs / mm_rate, 1))
            if nbytes:
                row.update(bytes=nbytes, gbytes_s=round(nbytes / (r["ms"] * 1e-3) / 1e9, 1))
            for other in ("eager", "sdpa2", "softmax", "bmm4") if speedups else ():
                if other in res and nm != other:
                    row[f"speedup_vs_{other}"] = round(res[other]["ms"] / r["ms"], 2)
            return row

        rows += [
            row_of(impl, flops if impl != "softmax" else 4 * B * H * N * N * d * (3 if train else 1)) for impl in impls
        ]
        rows += [row_of(nm, fl, nbytes, speedups=False, reference=True) for nm, (_, fl, nbytes) in refs.items()]
        rows.append(row_of("mm", mm_flops, speedups=False, mm_shape=f"{MM_SIZE}x{MM_SIZE}x{MM_SIZE}"))
        if refused:
            rows.append(dict(base, impl="fused", error="refused: failed the float64 correctness check"))
    return rows


def run(cfg=None) -> list[dict]:
    """Benchmark rows (see the module docstring). Needs the compiled extension; returns [] without it."""
    import torch

    import agentattn

    c = _cfg(cfg)
    if "cpp" not in agentattn.backends()["cpu"]:
        print(f"[{NAME}] agentattn._C is not built: skipped", file=sys.stderr)
        return []
    prev = torch.get_num_threads()
    torch.set_num_threads(c.threads)
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **k: x  # noqa: E731
    rows = []
    try:
        for name, B, H, N, n, d in tqdm(c.shapes, desc=NAME):
            chk = check_correct(B, H, N, n, d, c.check_tol)
            rows.append(dict(suite=NAME, shape=name, B=B, H=H, N=N, n=n, d=d, impl="fused", pass_="check", **chk))
            rows += _bench_shape(name, B, H, N, n, d, c, refused=not chk["ok"])
    finally:
        torch.set_num_threads(prev)
    return rows


def check_targets(rows: list[dict]) -> list[dict]:
    """The kernel's performance targets (``spec`` below) on the fused rows (ratios of medians from the same
    interleaved run)."""

    def find(shape, pss, impl="fused"):
        return next(
            (r for r in rows if r["shape"] == shape and r["pass_"] == pss and r["impl"] == impl and "ms" in r), None
        )

    spec = [
        ("B_swin_s1_n49", "fwd", "pct_mm_rate", 60.0, "forward B n=49 FLOP rate >= 60% of fp32 matmul rate"),
        ("B_swin_s1_n49", "fwd", "speedup_vs_bmm4", 1.0, "forward B n=49 faster than bmm4"),
        ("A_deit_t", "fwd", "speedup_vs_eager", 1.5, "forward A >= 1.5x eager"),
        ("A_deit_t", "fwd", "speedup_vs_sdpa2", 1.1, "forward A >= 1.1x two-SDPA"),
        ("B_swin_s1_n9", "fwd", "speedup_vs_sdpa2", 2.5, "forward B n=9 >= 2.5x two-SDPA"),
        ("A_deit_t", "fwd_bwd", "speedup_vs_eager", 1.5, "fwd+bwd A >= 1.5x eager autograd"),
        ("B_swin_s1_n49", "fwd_bwd", "speedup_vs_eager", 1.5, "fwd+bwd B n=49 >= 1.5x eager autograd"),
        ("B_swin_s1_n9", "fwd_bwd", "speedup_vs_eager", 1.5, "fwd+bwd B n=9 >= 1.5x eager autograd"),
        ("C_mer_htnet", "fwd", "speedup_vs_softmax", 1.0, "forward C (mer) at least as fast as softmax SDPA"),
        ("C_mer_htnet", "fwd_bwd", "speedup_vs_softmax", 1.0, "fwd+bwd C (mer) at least as fast as softmax SDPA"),
    ]
    out = []
    for shape, pss, key, want, text in spec:
        r = find(shape, pss)
        val = r.get(key) if r else None
        t = dict(target=text, value=val, want=want, ok=val is not None and val >= want)
        if r and val:
            # context: the fused time, the time the target asks for, and the forward's reference points
            t["fused_ms"] = r["ms"]
            t["needs_ms"] = round(r["ms"] * val / want, 3)
            for fl in ("bmm4", "stream"):
                f = find(shape, pss, fl)
                if f:
                    t[f"{fl}_ms"] = f["ms"]
        out.append(t)
    return out


def _targets_markdown(targets: list[dict]) -> list[str]:
    lines = [
        "| target | value | met | fused ms | target needs ms | bmm4 ms | stream ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        cells = [t["target"], t["value"], "yes" if t["ok"] else "NO"] + [
            t.get(k, "") for k in ("fused_ms", "needs_ms", "bmm4_ms", "stream_ms")
        ]
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    return lines


def summarize(rows: list[dict]) -> dict:
    """For benchmarks/run.py: the targets (meaningful only at the full sizes, not with quick/tiny)."""
    full = {(r["shape"], r["B"]) for r in rows} >= {(s[0], s[1]) for s in SHAPES}
    return {"targets": check_targets(rows), "full_sizes": full}


def summary_markdown(summary: dict) -> str:
    head = "" if summary.get("full_sizes") else "(reduced sizes: targets not meaningful)\n\n"
    return head + "\n".join(_targets_markdown(summary["targets"])) + "\n"


def to_markdown(rows: list[dict], targets: list[dict] | None = None, meta: dict | None = None) -> str:
    """Rows table, correctness, targets; with meta (standalone runs) a header line about the machine."""
    lines = []
    if meta:
        lines += [
            f"# {NAME} on {meta.get('cpu')} (family {meta.get('cpu_family')} model {meta.get('cpu_model_id')}), "
            f"ISA {meta.get('cpu_isa')}, {meta.get('threads')} threads",
            "",
            f"commit {meta.get('commit')}, torch {meta.get('torch')}, load average before/after "
            f"{meta.get('loadavg_before')} / {meta.get('loadavg_after')}",
            "",
        ]
    lines += [
        "| shape | pass | impl | median ms | IQR ms | CPU ms | GFLOP/s | % mm rate | x eager | x sdpa2 | x softmax |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["pass_"] == "check":
            continue
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['pass_']} | {r['impl']} | {r['error']} | | | | | | | |")
            continue
        cells = [
            r.get(k, "")
            for k in (
                "shape",
                "pass_",
                "impl",
                "ms",
                "iqr_ms",
                "cpu_ms",
                "gflops",
                "pct_mm_rate",
                "speedup_vs_eager",
                "speedup_vs_sdpa2",
                "speedup_vs_softmax",
            )
        ]
        if "gbytes_s" in r:
            cells[6] = f"{r['gbytes_s']} GB/s"
        lines.append("| " + " | ".join(str(x) for x in cells) + " |")
    lines += [
        "",
        "## Correctness (fused fp32 vs reference fp64, max |err| / max |ref| over out and 6 grads)",
        "",
        "| shape | max rel err | ok |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['shape']} | {r['max_rel_err']:.2e} | {'yes' if r['ok'] else 'NO'} |"
        for r in rows
        if r["pass_"] == "check"
    ]
    if targets is not None:  # standalone; benchmarks/run.py shows them through summary_markdown
        lines += [
            "",
            "## Targets",
            "",
            "bmm4, stream: the forward's four products through torch.bmm and its compulsory bytes, measured in "
            "the same run (module docstring).",
            "",
        ]
        lines += _targets_markdown(targets)
    return "\n".join(lines) + "\n"


def _meta(threads: int) -> dict:
    import torch

    import agentattn

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "csrc", "agentattn"], capture_output=True, text=True, cwd=here
        ).stdout.strip()
    except OSError:
        commit, dirty = None, ""
    ids = cpu_ids()
    isa = agentattn.backends().get("cpu_isa") or "avx2 (a build from before the ISA dispatch)"
    return dict(
        machine=platform.node(),
        cpu=common.cpu_model(),
        cpu_family=ids.get("cpu family"),
        cpu_model_id=ids.get("model"),
        cpu_isa=isa,
        agentattn=os.path.dirname(agentattn.__file__),
        cores=os.cpu_count(),
        threads=threads,
        torch=torch.__version__,
        python=platform.python_version(),
        commit=commit,
        kernel_sources_dirty=bool(dirty),
        backends=agentattn.backends(),
        mkl=torch.backends.mkl.is_available(),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def cpu_ids() -> dict:
    """'cpu family' and 'model' of /proc/cpuinfo (e.g. 25 / 17: AMD Zen 4); {} where there is none."""
    out = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model") and key not in out:
                    out[key] = val.strip()
                if not line.strip():
                    break
    except OSError:
        pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], epilog="example: python benchmarks/suites/agent_attention_cpu.py --quick"
    )
    ap.add_argument("--out", help="output path prefix: writes <out>.json and <out>.md")
    ap.add_argument("--quick", action="store_true", help="small batches, few repetitions (targets not meaningful)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2: both cores)")
    ap.add_argument(
        "--isa",
        choices=("avx512", "avx2", "generic"),
        help="the C++ kernel's ISA for this run (default: the best this CPU supports)",
    )
    args = ap.parse_args(argv)
    if args.isa:
        import torch

        import agentattn  # noqa: F401  (loads the extension's ops)

        torch.ops.agentattn._cpu_set_options(args.isa, "", "")
    cfg = _cfg({"quick": args.quick})
    cfg.threads = args.threads
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = run(cfg)
    if not rows:
        return 1
    targets = check_targets(rows)
    meta = _meta(cfg.threads)
    meta["loadavg_before"] = round(load0, 2) if load0 is not None else None
    meta["loadavg_after"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    md = to_markdown(rows, targets, meta)
    print(md)
    if args.out:
        common.write_result(args.out, dict(meta=meta, config=asdict(cfg), rows=rows, targets=targets), md)
    return 0 if all(r.get("ok", True) for r in rows if r["pass_"] == "check") else 2


if __name__ == "__main__":
    sys.exit(main())
