"""What the CPU op's non-finite detour costs on finite inputs (issue 17: <= 3 % at the B shapes).

``agentattn.agent_attention(backend="cpp")`` checks float32 results for NaN/inf (``op._cpu_cpp``: one sum
over the agents, both biases and the two log-sum-exp outputs, one host sync) and runs the reference
composition where the kernel would hide a NaN. This times, interleaved round-robin in one process:

  raw      torch.ops.agentattn.agent_attention_fwd on prepared inputs (the kernel and its autograd alone)
  op       agentattn.agent_attention(backend="cpp"): bias preparation, the kernel, the check
  check    the check alone (op._all_finite(agents, bias_agent, bias_query, lse_agent, lse_query))
  nocheck  the op with the check switched off (op._all_finite patched to return True): the op as it
           was before the check, timed in the same round-robin, so op / nocheck is the check's cost
  k_pass   what checking k as well would add (op._all_finite(k): a full pass over k), not done by the op

and prints median ms and check / raw, op / nocheck - 1, k_pass / raw in %, forward and forward+backward,
at the CPU suite's shapes::

    flock /tmp/cpu-heavy.lock python benchmarks/agent_attention_nan_cost.py [--threads 2] [--reps 41]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = [("A_deit_t", 32, 3, 196, 49, 64), ("B_swin_s1_n49", 8, 3, 3136, 49, 32), ("B_swin_s1_n9", 8, 3, 3136, 9, 32)]


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


def main(argv=None) -> int:
    import agentattn
    from agentattn.ops.agent_attention import op

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=41)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, torch {torch.__version__}, reps {args.reps} (medians, ms)")
    print(
        "| shape | pass | raw ms | op ms | nocheck ms | op / nocheck - 1 | check ms | check / raw | k_pass ms "
        "| k_pass / raw |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, B, H, N, n, d in SHAPES:
        g = torch.Generator().manual_seed(0)
        mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        ins = [
            mk(B, H, N, d),
            mk(B, H, N, d),
            mk(B, H, N, d),
            mk(B, H, n, d),
            0.02 * mk(1, H, n, N),
            0.02 * mk(1, H, N, n),
        ]
        go = mk(B, H, N, d)
        s = d**-0.5
        _, _, lse_a, lse_q = torch.ops.agentattn.agent_attention_fwd(*ins, s)

        def check():
            op._all_finite(ins[3], ins[4], ins[5], lse_a, lse_q)

        def k_pass():
            op._all_finite(ins[1])

        for pss in ("fwd", "fwd_bwd"):
            if pss == "fwd":

                def raw():
                    with torch.no_grad():
                        torch.ops.agentattn.agent_attention_fwd(*ins, s)

                def full():
                    with torch.no_grad():
                        agentattn.agent_attention(*ins, s, backend="cpp")
            else:
                ts = [t.clone().requires_grad_() for t in ins]

                def raw(ts=ts):
                    torch.ops.agentattn.agent_attention_fwd(*ts, s)[0].backward(go)
                    for t in ts:
                        t.grad = None

                def full(ts=ts):
                    agentattn.agent_attention(*ts, s, backend="cpp").backward(go)
                    for t in ts:
                        t.grad = None

            def nocheck(full=full):
                real = op._all_finite
                op._all_finite = lambda *t: True
                try:
                    full()
                finally:
                    op._all_finite = real

            res = _time({"raw": raw, "op": full, "nocheck": nocheck, "check": check, "k_pass": k_pass}, 3, args.reps)
            print(
                f"| {name} | {pss} | {res['raw']:.3f} | {res['op']:.3f} | {res['nocheck']:.3f} | "
                f"{100 * (res['op'] / res['nocheck'] - 1):+.1f} % | {res['check']:.3f} | "
                f"{100 * res['check'] / res['raw']:.1f} % | {res['k_pass']:.3f} | "
                f"{100 * res['k_pass'] / res['raw']:.1f} % |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
