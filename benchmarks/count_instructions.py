"""Instructions per head executed by the fused CPU forward, counted by valgrind's callgrind.

Timings on a shared 2-core host move by 15-30 % between minutes; instruction counts do not. Use this to
judge a compute change to csrc/cpu (a change that removes instructions without adding memory stalls
is faster), and timings (benchmarks/suites/agent_attention_cpu.py) for the rest::

    python benchmarks/count_instructions.py                 # B n=49 and n=9 (B 4, H 1, N 3136, d 32)
    python benchmarks/count_instructions.py --n 9 --B 4 --H 1 --N 3136 --d 32 --calls 2 --isa avx2
    python benchmarks/count_instructions.py --pass fwd_bwd --n 9 --B 256 --H 2 --N 49 --d 16  # mer's shape

Runs the forward `--calls` times on one thread under ``valgrind --tool=callgrind`` (about 2-3 minutes
each: the Python start-up runs under valgrind too), sums the instructions of every function of
agentattn's kernels (``agentattn::``) and prints them per head and call, with the largest functions.
Needs valgrind and the built extension. ``--isa`` picks the kernel's tiles (avx2 | generic; default avx2):
valgrind up to 3.22 does not emulate AVX-512, so under valgrind the CPU reports no AVX-512 and that path
cannot be counted (judge it by timings). ``--pass fwd_bwd`` counts a forward and a backward per call.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)")


def _child(a) -> None:
    if not os.environ.get("PYTHONPATH"):  # else the agentattn on PYTHONPATH (e.g. a saved build) is counted
        sys.path.insert(0, str(REPO))
    import torch

    import agentattn

    torch.set_num_threads(1)
    torch.ops.agentattn._cpu_set_options(a.isa, "", "")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(a.B, a.H, a.N, a.d, generator=g) for _ in range(3))
    ag = torch.randn(a.B, a.H, a.n, a.d, generator=g)
    b1, b2 = 0.02 * torch.randn(1, a.H, a.n, a.N, generator=g), 0.02 * torch.randn(1, a.H, a.N, a.n, generator=g)
    if a.pass_ == "fwd":
        with torch.no_grad():
            for _ in range(a.calls):
                agentattn.agent_attention(q, k, v, ag, b1, b2, backend="cpp")
        return
    xs = [t.requires_grad_() for t in (q, k, v, ag, b1, b2)]
    go = torch.randn_like(q)
    for _ in range(a.calls):
        agentattn.agent_attention(*xs, backend="cpp").backward(go)


def count(a) -> dict:
    """{'total': instructions per head and call, 'functions': [(name, per head), ...]}."""
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        raise SystemExit("valgrind (with callgrind_annotate) is not installed: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            "--n",
            str(a.n),
            "--B",
            str(a.B),
            "--H",
            str(a.H),
            "--N",
            str(a.N),
            "--d",
            str(a.d),
            "--calls",
            str(a.calls),
            "--isa",
            a.isa,
            "--pass",
            a.pass_,
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0 or not os.path.getsize(out):
            raise SystemExit(f"valgrind run failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        ann = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--threshold=100", out], capture_output=True, text=True, check=True
        ).stdout
    return summarize(ann, a.B * a.H * a.calls)


def summarize(ann: str, heads: int) -> dict:
    """Sum callgrind_annotate's exclusive per-function lines of agentattn's kernels, per head and call."""
    per = collections.Counter()
    for line in ann.splitlines():
        m = LINE.match(line)
        if not m or "=>" in line or "agentattn::" not in line:
            continue
        name = m.group(2)
        name = name.split(":", 1)[1] if ":" in name.split("(")[0] else name  # drop the source file
        name = re.sub(r"\(.*", "", name.replace("(anonymous namespace)", "anon"))
        per[name] += int(m.group(1).replace(",", ""))
    return dict(total=sum(per.values()) / heads, functions=[(k, v / heads) for k, v in per.most_common(8)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, action="append", help="agents (repeatable; default 49 and 9)")
    ap.add_argument("--B", type=int, default=4)
    ap.add_argument("--H", type=int, default=1)
    ap.add_argument("--N", type=int, default=3136)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--isa", default="avx2", choices=("avx2", "generic"), help="kernel ISA (AVX-512: see above)")
    ap.add_argument("--pass", dest="pass_", default="fwd", choices=("fwd", "fwd_bwd"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        a.n = a.n[0]
        _child(a)
        return 0
    for n in a.n or [49, 9]:
        a1 = argparse.Namespace(**{**vars(a), "n": n})
        res = count(a1)
        print(
            f"B {a.B} H {a.H} N {a.N} n {n} d {a.d} ({a.isa}, {a.pass_}): {res['total'] / 1e6:.3f} M instructions "
            "per head and call"
        )
        for name, v in res["functions"]:
            print(f"  {v / 1e6:8.3f} M  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
