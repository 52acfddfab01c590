"""What NaN propagation costs the CPU kernel on finite inputs (issue 17: <= 3 % at the B shapes).

The C++ kernel keeps a NaN or infinity where the reference composition does: its vector exp takes its
clamps in the operand order that keeps a NaN, and its vector log blends a NaN input back in (one compare
and one blend per vector of row statistics). Nothing is checked in Python. The cost can only be seen
against a build without it, so this compares two checkouts, each with its extension built in place:

    python benchmarks/agent_attention_nan_cost.py --against DIR [--threads 2] [--rounds 4] [--reps 21]

DIR is a checkout from before the change (e.g. ``git worktree add /tmp/base 5c61cd4`` then
``bash scripts/dev_build.sh`` there; that build dropped some NaN scores, and its op ran a NaN check in
Python and the reference composition where the kernel would hide one). Each build runs in its own
process, alternately, ``--rounds`` times; each process times, interleaved round-robin:

  raw  torch.ops.agentattn.agent_attention_fwd on prepared inputs (the kernel, with autograd for fwd+bwd)
  op   agentattn.agent_attention(backend="cpp") (this build: the kernel alone; the base: kernel + check)

and the table gives the median over rounds of each process's median, and this / base - 1 for raw (the
kernel's own NaN handling) and for op (what a user sees), forward and forward+backward, at the CPU
suite's shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHAPES = [("A_deit_t", 32, 3, 196, 49, 64), ("B_swin_s1_n49", 8, 3, 3136, 49, 32), ("B_swin_s1_n9", 8, 3, 3136, 9, 32)]
ROOT = Path(__file__).resolve().parents[1]


def _time(fns: dict, warmup: int, reps: int) -> dict:
    names = list(fns)
    for _ in range(warmup):
        for nm in names:
            fns[nm]()
    res = {nm: [] for nm in names}
    for r in range(reps):
        for i in range(len(names)):
            nm = names[(r + i) % len(names)]
            t0 = time.perf_counter()
            fns[nm]()
            res[nm].append((time.perf_counter() - t0) * 1e3)
    return {nm: statistics.median(v) for nm, v in res.items()}


def child(threads: int, reps: int, shapes: list[str]) -> dict:
    """Median ms of raw and op, fwd and fwd_bwd, per shape, in the checkout this process imports."""
    import torch

    import agentattn

    torch.set_num_threads(threads)
    out = {"isa": agentattn.backends()["cpu_isa"], "file": agentattn.__file__}
    for name, B, H, N, n, d in SHAPES:
        if name not in shapes:
            continue
        g = torch.Generator().manual_seed(0)
        mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        ins = [mk(B, H, N, d), mk(B, H, N, d), mk(B, H, N, d), mk(B, H, n, d), 0.02 * mk(1, H, n, N)]
        ins.append(0.02 * mk(1, H, N, n))
        go = mk(B, H, N, d)
        s = d**-0.5
        ts = [t.clone().requires_grad_() for t in ins]

        def raw_fwd():
            with torch.no_grad():
                torch.ops.agentattn.agent_attention_fwd(*ins, s)

        def op_fwd():
            with torch.no_grad():
                agentattn.agent_attention(*ins, scale=s, backend="cpp")

        def raw_fwd_bwd():
            torch.ops.agentattn.agent_attention_fwd(*ts, s)[0].backward(go)
            for t in ts:
                t.grad = None

        def op_fwd_bwd():
            agentattn.agent_attention(*ts, scale=s, backend="cpp").backward(go)
            for t in ts:
                t.grad = None

        out[name] = _time(
            {"raw_fwd": raw_fwd, "op_fwd": op_fwd, "raw_fwd_bwd": raw_fwd_bwd, "op_fwd_bwd": op_fwd_bwd}, 3, reps
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", type=Path, help="a checkout from before the change, extension built in place")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4, help="processes per build, alternating (default 4)")
    ap.add_argument("--reps", type=int, default=21, help="timed calls per variant in each process (default 21)")
    ap.add_argument("--shapes", default=",".join(nm for nm, *_ in SHAPES), help="comma-separated subset of the shapes")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.threads, args.reps, args.shapes.split(","))))
        return 0
    if args.against is None or not (args.against / "agentattn" / "__init__.py").exists():
        ap.error("--against DIR must be a checkout holding agentattn/ with its extension built in place")
    builds = {"this": ROOT, "base": args.against.resolve()}
    runs = {k: [] for k in builds}
    for r in range(args.rounds):
        for k in builds if r % 2 == 0 else reversed(list(builds)):
            env = dict(os.environ, PYTHONPATH=str(builds[k]), OMP_NUM_THREADS=str(args.threads))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--threads", str(args.threads)]
            cmd += ["--shapes", args.shapes]
            res = subprocess.run(cmd + ["--reps", str(args.reps)], env=env, capture_output=True, text=True, cwd="/")
            if res.returncode != 0:
                raise SystemExit(f"{k} build ({builds[k]}) failed:\n{res.stderr[-2000:]}")
            runs[k].append(json.loads(res.stdout.splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {k}: {runs[k][-1]['file']} ({runs[k][-1]['isa']})", flush=True)
    print(f"\nthreads {args.threads}, {args.rounds} rounds x {args.reps} reps (median of per-process medians, ms)")
    print(
        "| shape | pass | raw this | raw base | raw this/base - 1 | op this | op base | op this/base - 1 "
        "| raw this/base per round |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        for pss in ("fwd", "fwd_bwd"):
            med = {
                (k, v): statistics.median(run[name][f"{v}_{pss}"] for run in runs[k])
                for k in builds
                for v in ("raw", "op")
            }
            cells = []
            for v in ("raw", "op"):
                t, b = med[("this", v)], med[("base", v)]
                cells += [f"{t:.2f}", f"{b:.2f}", f"{100 * (t / b - 1):+.1f} %"]
            per = [
                a[name][f"raw_{pss}"] / b[name][f"raw_{pss}"] for a, b in zip(runs["this"], runs["base"], strict=True)
            ]
            cells.append(" ".join(f"{x:.2f}" for x in per))
            print(f"| {name} | {pss} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
