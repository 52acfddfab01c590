"""Benchmark of the fused flow-patch embedding (patch projection + bias + LAPE in one op) against the
two PyTorch formulations a model would otherwise use, forward and forward+backward.

Suite plugin: ``NAME`` and ``run(cfg) -> list[dict]``. Also runnable on its own::

    OMP_NUM_THREADS=1 python benchmarks/suites/flow_patch_embed.py --out benchmarks/results/cpu-<date>-flow_patch_embed
    python benchmarks/suites/flow_patch_embed.py --quick
    python benchmarks/suites/flow_patch_embed.py --device cuda          # on a GPU machine

Implementations, all in the same process run on the same tensors (never zeros):

  fused    agentattn.flow_patch_embed(x, weight, bias, pos, p) (C++ on CPU; CUDA/Triton on GPU)
  conv     F.conv2d(x, weight, bias, stride=p) + pos          (nn.Conv2d(stride=p) + LAPE add)
  unfold   weight.view(D, K) @ F.unfold(x, p, stride=p) + bias, reshape, + pos

Passes: ``fwd`` under ``torch.no_grad()`` (inference) and ``fwd_bwd`` = forward + gradients of weight,
bias and pos (x is the input image: no gradient, as in a first layer). Shapes: HTNet as released (B=64,
C=3, 28x28, p=7, D=256), 56x56 with p=4 (D=256), the mer working variant (28x28, p=2, D=32)
and a ViT-Ti patch embedding (224x224, p=16, D=192). The implementations are timed round-robin (one
call of each in turn) so that load from other processes hits all of them alike; per row the median,
the 10th/90th percentiles and the minimum wall time in ms, and on CPU the same for the process CPU time
(``time.process_time``: on a shared machine it excludes the time the process waits for a core).
``ratio_vs_best`` = best baseline median / fused median (> 1: the fused op is faster; ``cpu_ratio_vs_best``
the same on CPU time). A correctness row per shape compares the fused output and
gradients, and the conv baseline's, with the same computation in float64, in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import common  # noqa: E402

NAME = "flow_patch_embed"


@dataclass
class FlowPatchBenchConfig:
    shapes: list = field(
        default_factory=lambda: [
            # name, B, C, S (H = W), p, D
            ("htnet_28_p7_D256", 64, 3, 28, 7, 256),
            ("htnet_56_p4_D256", 64, 3, 56, 4, 256),
            ("mer_small_28_p2_D32", 64, 3, 28, 2, 32),
            ("vit_224_p16_D192", 16, 3, 224, 16, 192),
        ]
    )
    impls: tuple = ("fused", "conv", "unfold")
    passes: tuple = ("fwd", "fwd_bwd")
    reps: int = 25  # timed calls per implementation and pass
    warmup: int = 3
    device: str = "cpu"
    threads: int | None = None  # torch.set_num_threads; None keeps the current setting
    seed: int = 0


def _cfg(cfg) -> FlowPatchBenchConfig:
    if isinstance(cfg, FlowPatchBenchConfig):
        return cfg
    cfg = dict(cfg or {})
    c = FlowPatchBenchConfig(device=cfg.get("device", "cpu") or "cpu")
    if cfg.get("quick"):
        c.shapes = [("htnet_28_p7_D256", 16, 3, 28, 7, 256), ("vit_224_p16_D192", 4, 3, 224, 16, 192)]
        c.reps, c.warmup = 7, 2
    for k in ("reps", "warmup", "threads", "seed"):
        if cfg.get(k) is not None:
            setattr(c, k, cfg[k])
    return c


def _impls(x, w, b, q, p):
    import torch.nn.functional as F

    import agentattn

    B, C, H, W = x.shape
    D = w.shape[0]

    def fused():
        return agentattn.flow_patch_embed(x, w, b, q, p)

    def conv():
        return F.conv2d(x, w, b, stride=p) + q

    def unfold():
        out = w.reshape(D, -1) @ F.unfold(x, kernel_size=p, stride=p) + b[:, None]
        return out.reshape(B, D, H // p, W // p) + q

    return {"fused": fused, "conv": conv, "unfold": unfold}


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bench_shape(name, B, C, S, p, D, c: FlowPatchBenchConfig) -> list[dict]:
    import torch

    dev = torch.device(c.device)
    g = torch.Generator().manual_seed(c.seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dev)  # noqa: E731
    x = mk(B, C, S, S)
    w, b, q = mk(D, C, p, p) * (C * p * p) ** -0.5, mk(D), mk(D, S // p, S // p) * 0.02
    params = [t.requires_grad_() for t in (w, b, q)]
    fns = {k: v for k, v in _impls(x, w, b, q, p).items() if k in c.impls}
    grad = mk(B, D, S // p, S // p)

    def step(fn, pss):
        if pss == "fwd":
            with torch.no_grad():
                fn()
        else:
            torch.autograd.grad(fn(), params, grad)

    rows = []
    # correctness in the same run: the fused op and the conv baseline, each against the same computation in
    # float64. On CUDA the conv baseline runs cuDNN with TF32 allowed (PyTorch's default for convolutions:
    # ~1e-4 relative error of its own), so the fused op passes at fp32 accuracy (1e-4) or, when the
    # baseline is looser, within 2x the baseline's own error (a fused-vs-conv difference would blame either).
    if "fused" in fns and "conv" in fns:
        p64 = [t.detach().double().requires_grad_() for t in (w, b, q)]
        ref_out = _impls(x.double(), *p64, p)["conv"]()
        ref = [ref_out, *torch.autograd.grad(ref_out, p64, grad.double())]
        names = ("out", "dweight", "dbias", "dpos")

        def rel_errs(fn):
            out = fn()
            got = [out, *torch.autograd.grad(out, params, grad)]
            return {
                n: ((a.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
                for n, a, r in zip(names, got, ref, strict=True)
            }

        errs = {"fused": rel_errs(fns["fused"]), "conv": rel_errs(fns["conv"])}
        rows.append(
            dict(
                suite=NAME,
                kind="check",
                shape=name,
                B=B,
                C=C,
                H=S,
                W=S,
                p=p,
                D=D,
                device=c.device,
                rel_err_vs_fp64=errs,
                conv_tf32=bool(dev.type == "cuda" and torch.backends.cudnn.allow_tf32),
                ok=all(errs["fused"][n] <= max(1e-4, 2 * errs["conv"][n]) for n in names),
            )
        )
    flops_fwd = 2 * B * (S // p) ** 2 * D * C * p * p
    for pss in c.passes:
        times = {k: [] for k in fns}
        cpu = {k: [] for k in fns}  # process CPU time: robust to other processes taking the cores
        for _ in range(c.warmup):
            for fn in fns.values():
                step(fn, pss)
        for _ in range(c.reps):
            for k, fn in fns.items():  # round-robin: background load hits every implementation alike
                _sync(dev)
                t0, c0 = time.perf_counter(), time.process_time()
                step(fn, pss)
                _sync(dev)
                times[k].append((time.perf_counter() - t0) * 1e3)
                cpu[k].append((time.process_time() - c0) * 1e3)
        flops = flops_fwd * (1 if pss == "fwd" else 2)  # backward: dweight only (x needs no grad)
        med = {k: statistics.median(v) for k, v in times.items()}
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        for k, v in times.items():
            qs = statistics.quantiles(v, n=10) if len(v) >= 2 else [v[0]] * 9
            row = dict(
                suite=NAME,
                kind="time",
                shape=name,
                B=B,
                C=C,
                H=S,
                W=S,
                p=p,
                D=D,
                device=c.device,
                threads=torch.get_num_threads(),
                impl=k,
                pass_=pss,
                median_ms=med[k],
                p10_ms=qs[0],
                p90_ms=qs[-1],
                min_ms=min(v),
                reps=len(v),
                gflops=flops / med[k] / 1e6,
            )
            if dev.type == "cpu":
                cq = statistics.quantiles(cpu[k], n=10) if len(v) >= 2 else [cpu[k][0]] * 9
                row.update(cpu_median_ms=cmed[k], cpu_p10_ms=cq[0], cpu_p90_ms=cq[-1], cpu_min_ms=min(cpu[k]))
            if k == "fused" and len(med) > 1:
                best = min((m, kk) for kk, m in med.items() if kk != "fused")
                row.update(ratio_vs_best=best[0] / med[k], best_baseline=best[1])
                if dev.type == "cpu":
                    cbest = min((m, kk) for kk, m in cmed.items() if kk != "fused")
                    row.update(cpu_ratio_vs_best=cbest[0] / cmed[k], cpu_best_baseline=cbest[1])
            rows.append(row)
    return rows


def run(cfg=None) -> list[dict]:
    """One row per shape x implementation x pass (kind='time') plus one correctness row per shape."""
    import torch

    c = _cfg(cfg)
    if c.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"[{NAME}] device {c.device} requested but CUDA is not available: skipped", file=sys.stderr)
        return []
    if c.threads:
        torch.set_num_threads(int(c.threads))
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **k: it  # noqa: E731
    for shape in tqdm(c.shapes, desc=NAME, unit="shape"):
        rows += _bench_shape(*shape, c)
    return rows


def to_markdown(rows: list[dict], meta: dict) -> str:
    t = [r for r in rows if r["kind"] == "time"]
    has_cpu = any("cpu_median_ms" in r for r in t)
    lines = [
        f"# flow_patch_embed benchmark ({meta.get('device_name')}, {meta.get('threads')} thread(s))",
        "",
        f"torch {meta.get('torch')}, commit {str(meta.get('commit'))[:10]}, {meta.get('date')}, "
        f"1-min load average {meta.get('loadavg_1min')}. Command: `{meta.get('command')}`.",
        "",
        "Wall time in ms: median [p10, p90] over round-robin repetitions"
        + ("; CPU = median process CPU time (ms), less sensitive to other processes on the machine" if has_cpu else "")
        + ". ratio = best baseline median / fused median (> 1: fused faster).",
        "",
        "| shape | pass | fused | conv | unfold | GFLOP/s fused | ratio (wall) |"
        + (" CPU fused / conv / unfold | ratio (CPU) |" if has_cpu else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if has_cpu else ""),
    ]
    for shape in dict.fromkeys(r["shape"] for r in t):
        for pss in dict.fromkeys(r["pass_"] for r in t if r["shape"] == shape):
            sel = {r["impl"]: r for r in t if r["shape"] == shape and r["pass_"] == pss}

            def cell(k, sel=sel):
                if k not in sel:
                    return "-"
                return f"{sel[k]['median_ms']:.3f} [{sel[k]['p10_ms']:.3f}, {sel[k]['p90_ms']:.3f}]"

            f = sel.get("fused", {})
            ratio = f"{f['ratio_vs_best']:.2f}x (vs {f['best_baseline']})" if "ratio_vs_best" in f else "-"
            gf = f"{f['gflops']:.1f}" if f else "-"
            line = f"| {shape} | {pss} | {cell('fused')} | {cell('conv')} | {cell('unfold')} | {gf} | {ratio} |"
            if has_cpu:
                cp = " / ".join(
                    f"{sel[k]['cpu_median_ms']:.3f}" if k in sel else "-" for k in ("fused", "conv", "unfold")
                )
                cr = f"{f['cpu_ratio_vs_best']:.2f}x (vs {f['cpu_best_baseline']})" if "cpu_ratio_vs_best" in f else "-"
                line += f" {cp} | {cr} |"
            lines.append(line)
    checks = [r for r in rows if r["kind"] == "check"]
    if checks:
        lines += [
            "",
            "Correctness in the same run: max abs error / max abs value against the same computation in float64,",
            "fused / conv (ok: fused <= max(1e-4, 2 x conv); the conv baseline uses TF32 where marked):",
            "",
        ]
        for r in checks:
            e = ", ".join(
                f"{k} {v:.1e} / {r['rel_err_vs_fp64']['conv'][k]:.1e}" for k, v in r["rel_err_vs_fp64"]["fused"].items()
            )
            tf32 = " (conv in TF32)" if r.get("conv_tf32") else ""
            lines.append(f"- {r['shape']}: {e}{tf32} -> {'ok' if r['ok'] else 'MISMATCH'}")
    return "\n".join(lines) + "\n"


def _meta(c: FlowPatchBenchConfig) -> dict:
    import torch

    import agentattn

    commit = common.git_commit()
    dev = (
        torch.cuda.get_device_name()
        if c.device.startswith("cuda")
        else f"{common.cpu_model()} CPU, {os.cpu_count()} logical cores"
    )
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return dict(
        device=c.device,
        device_name=dev,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        commit=commit,
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        loadavg_1min=load,
        backends=agentattn.backends(),
        command=" ".join(sys.argv),
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example: OMP_NUM_THREADS=1 python benchmarks/suites/flow_patch_embed.py --quick",
    )
    ap.add_argument("--out", help="output path prefix: writes <out>.json and <out>.md")
    ap.add_argument("--quick", action="store_true", help="two small shapes, fewer repetitions")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--reps", type=int, help="timed repetitions per implementation and pass")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: as configured)")
    args = ap.parse_args(argv)
    c = _cfg({"quick": args.quick, "device": args.device, "reps": args.reps, "threads": args.threads})
    rows = run(c)
    if not rows:
        return 1
    meta = _meta(c)
    md = to_markdown(rows, meta)
    print(md)
    if args.out:
        common.write_result(args.out, dict(meta=meta, config=asdict(c), rows=rows), md)
    return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
